#!/usr/bin/env bash
# Lint and the whole test suite, as CI runs them (.ci/run calls this script).
# The one place that says which extras the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_EXTRAS="dev"
source scripts/setup.sh "$TEST_EXTRAS"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
