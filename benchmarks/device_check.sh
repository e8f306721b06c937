#!/usr/bin/env bash
# GPU training throughput: ser-jax (train.loop=scan, whole training set on the device) vs PyTorch
# eager on the same GPU, batch 64, 256 and 1024. One JSON line per measurement on stdout (the
# peers' records, see benchmarks/bench_train.py); all of them in $OUT/device_check.json when
# $OUT is set. About 3-5 minutes on one H100.
#
#   bash benchmarks/device_check.sh                   # on the GPU machine
#   bash benchmarks/device_check.sh --smoke           # the same path, tiny, on this CPU
#   bash benchmarks/device_check.sh --download-wheels # here: wheels for a GPU machine that
#                                                     # reaches no registry (carry tmp/device-wheels)
#
# Python: $PYTHON, else python3 if it already has JAX on a GPU and CUDA PyTorch (then only the
# missing pure dependencies of ser_jax are added, from tmp/device-wheels when present, else with
# pip), else a fresh venv in /tmp with `pip install -e . jax[cuda13] torch==2.13.0`.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=tmp/device-wheels
# Modules ser_jax.train imports (through bundle and audio) that a CUDA image may lack.
EXTRA_MODULES="ml_collections:ml-collections tensorboardX:tensorboardX soundfile:soundfile \
soxr:soxr cffi:cffi pycparser:pycparser"

if [[ "${1:-}" == "--download-wheels" ]]; then
  mkdir -p "$WHEELS"
  for pair in $EXTRA_MODULES; do
    pkg=${pair##*:}
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$WHEELS" "$pkg"
  done
  ls -l "$WHEELS"
  exit 0
fi

if [[ "${1:-}" == "--smoke" ]]; then
  PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
  export JAX_PLATFORMS=cpu
  # XLA:CPU runs the scanned epoch very slowly (batch 1024 took minutes): tiny sizes only.
  ARGS=(--device cpu --rows 128 --epochs 1 --batch-sizes 16,32)
else
  PY=${PYTHON:-python3}
  ARGS=(--device cuda --rows 32768 --epochs 3 --batch-sizes 64,256,1024)
  if ! "$PY" -c 'import jax, torch; assert jax.default_backend() == "gpu"
assert torch.cuda.is_available()' 2>/dev/null; then
    echo "no JAX-on-GPU + CUDA PyTorch in $PY; making /tmp/ser-jax-gpu" >&2
    python3 -m venv /tmp/ser-jax-gpu
    /tmp/ser-jax-gpu/bin/pip install -q -e . "jax[cuda13]" "torch==2.13.0"
    PY=/tmp/ser-jax-gpu/bin/python
  fi
  missing=()
  for pair in $EXTRA_MODULES; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
  done
  if (( ${#missing[@]} )); then
    echo "installing ${missing[*]} into /tmp/ser-jax-site" >&2
    if [[ -d $WHEELS ]]; then src=(--no-index --find-links "$WHEELS"); else src=(--timeout 30); fi
    "$PY" -m pip install -q --no-deps --target /tmp/ser-jax-site "${src[@]}" "${missing[@]}"
    export PYTHONPATH=/tmp/ser-jax-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "import ser_jax.train" \
    || { echo "ser_jax.train does not import with $PY (see above)" >&2; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi

json_out=()
[[ -n "${OUT:-}" ]] && json_out=(--json-out "$OUT/device_check.json")
"$PY" benchmarks/bench_train.py --frameworks "${FRAMEWORKS:-ser-jax/scan,torch/eager}" \
  --reference ser-jax/scan --accuracy-epochs 0 --timeout 240 \
  "${ARGS[@]}" "${json_out[@]}"
