#!/usr/bin/env bash
# Sourced by demo.sh and test.sh with the extras to install ("" or e.g. "dev"): creates .venv
# when missing and installs ser-jax (editable) with them unless pyproject.toml's requirements
# are already met there.
set -euo pipefail
extras="$1"
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python scripts/requirements_met.py "$extras" 2>/dev/null; then
  .venv/bin/pip install -q -e ".${extras:+[$extras]}"
fi
