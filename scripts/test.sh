#!/usr/bin/env bash
# Lint and the whole test suite, as CI runs them (.ci/run calls this script).
# The one place that says which extras and system packages the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_EXTRAS="dev,serve,tuning,airflow,cloud"
# The tuning tests start a throwaway PostgreSQL server (initdb, pg_ctl); install it where missing.
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -yq postgresql
  fi
fi
source scripts/setup.sh "$TEST_EXTRAS"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
