#!/usr/bin/env bash
# The main job (features -> train -> evaluate) on the embedded synthetic demo corpus.
# Extra arguments go to ser_jax.main, e.g. --stage=cv or --config.train.epochs=5.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""
exec .venv/bin/python -m ser_jax.main --config=configs/default.py --workdir=workdir/default "$@"
