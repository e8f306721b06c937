#!/usr/bin/env bash
# One GPU check, about 5 minutes on one H100, every part under its own timeout:
#   1. nvidia-smi, the Python, JAX, PyTorch, Flax, Optax and Orbax versions, JAX's devices and the
#      JAX/Optax APIs ser_jax relies on;
#   2. training throughput, ser-jax (train.loop=scan, training set on the device) vs PyTorch eager
#      on the same GPU at batch 64, 256 and 1024 (benchmarks/bench_train.py);
#   3. many trials at once: 8 trials vmapped into one program vs one after another
#      (benchmarks/bench_trials.py).
# With $OUT set: everything printed goes to $OUT/device_check.log as it comes (so a timeout still
# leaves the log), part 2's records to $OUT/device_check.json, part 3's to $OUT/trials.json.
#
#   bash benchmarks/device_check.sh                   # on the GPU machine
#   bash benchmarks/device_check.sh --smoke           # the same path, tiny, on this CPU
#   bash benchmarks/device_check.sh --download-wheels # here: the pure dependencies ser_jax needs
#                                                     # and a CUDA image may lack, as Python 3.12
#                                                     # wheels in tmp/device-wheels (carry it)
#
# Python: $PYTHON, else the first of python3, python3.12, python that imports jax and torch: the
# image's own, with JAX on the GPU and CUDA PyTorch; nothing is created or upgraded. Modules
# ser_jax imports that it lacks are installed from tmp/device-wheels (pip --target, or by
# unpacking the wheels where there is no pip) into /tmp/ser-jax-site, put on PYTHONPATH.
# BUDGET_S (default 300) caps the whole run: each part's timeout shrinks to fit what is left.
# FRAMEWORKS, BATCH_SIZES and TRIALS_ARGS override part 2's variants and batch sizes and part
# 3's arguments (defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=tmp/device-wheels
SITE=/tmp/ser-jax-site
# module:distribution. What ser_jax.train imports (through bundle, audio, metrics_log) and their
# own dependencies that a CUDA image with JAX, PyTorch, Flax, Optax and Orbax may lack.
EXTRA_MODULES="ml_collections:ml-collections yaml:PyYAML tensorboardX:tensorboardX \
google.protobuf:protobuf packaging:packaging soundfile:soundfile cffi:cffi _cffi_backend:cffi \
pycparser:pycparser soxr:soxr typing_extensions:typing-extensions"
# What the benchmarks import, checked before any of them runs.
IMPORTS="import ser_jax.train, ser_jax.trials, configs.default, benchmarks.peers.common"
BUDGET_S=${BUDGET_S:-300}
export PYTHONUNBUFFERED=1  # a part killed by its timeout still leaves its lines in the log

download_wheels() {
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  local pair pkg version done_pkgs=" "
  for pair in $EXTRA_MODULES; do
    pkg=${pair##*:}
    [[ $done_pkgs == *" $pkg "* ]] && continue
    done_pkgs+="$pkg "
    # The version tested here (this checkout's .venv) when it has a 3.12 wheel, else the newest.
    version=$(.venv/bin/python -c "from importlib.metadata import version as v; print(v('$pkg'))" \
      2>/dev/null || true)
    for spec in ${version:+"$pkg==$version"} "$pkg"; do
      python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$WHEELS" "$spec" && break
      echo "no wheel for $spec" >&2
    done
  done
  ls -l "$WHEELS"
  du -ch "$WHEELS"/*.whl | tail -1
}

if [[ "${1:-}" == "--download-wheels" ]]; then
  download_wheels
  exit 0
fi

log() { echo "=== [$(date +%T), ${SECONDS}s] $*"; }

# limit WANT RESERVE: WANT seconds, or fewer so that RESERVE seconds of BUDGET_S stay for later.
limit() {
  local t=$((BUDGET_S - SECONDS - $2))
  ((t > $1)) && t=$1
  ((t < 30)) && t=30
  echo "$t"
}

# run_part NAME SECONDS COMMAND...: COMMAND (and its children) under a timeout; never fails.
run_part() {
  local name=$1 seconds=$2 rc=0
  shift 2
  log "$name: up to ${seconds}s"
  timeout -k 10 "$seconds" "$@" || rc=$?
  if ((rc == 124 || rc == 137)); then log "$name: TIMED OUT after ${seconds}s"
  else log "$name: exit $rc"; fi
}

pick_python() {
  local c
  for c in ${PYTHON:-} python3 python3.12 python; do
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import jax, torch' 2>/dev/null; then
      echo "$c"
      return 0
    fi
    echo "$c ($(command -v "$c")) lacks jax or torch" >&2
  done
  return 1
}

# install_missing DIST...: from $WHEELS (no index) into $SITE; pip when there is one, else unzip.
install_missing() {
  mkdir -p "$SITE"
  log "installing $* into $SITE"
  if [[ -d $WHEELS ]] && "$PY" -m pip --version >/dev/null 2>&1 \
      && "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
         --no-deps --no-index --find-links "$WHEELS" --target "$SITE" "$@"; then
    return 0
  fi
  local dist wheel status=0
  for dist in "$@"; do
    wheel=$(find "$WHEELS" -maxdepth 1 -iname "$(tr - _ <<<"$dist")-*.whl" 2>/dev/null | head -1)
    if [[ -n $wheel ]]; then
      "$PY" -m zipfile -e "$wheel" "$SITE" || status=1
    else
      echo "no wheel for $dist in $WHEELS (run --download-wheels here, carry $WHEELS)" >&2
      status=1
    fi
  done
  return $status
}

dist_for() {  # dist_for MODULE: the distribution that provides MODULE (or MODULE's own name)
  local pair mod
  for pair in $EXTRA_MODULES; do
    mod=${pair%%:*}
    if [[ $1 == "$mod" || $1 == "$mod".* || $mod == "$1".* ]]; then
      echo "${pair##*:}"
      return 0
    fi
  done
  echo "$1"
}

# Installs what is missing until $IMPORTS imports (a few rounds: one missing module at a time).
ensure_imports() {
  local missing err mod round
  # shellcheck disable=SC2086  # one module:distribution pair per argument
  missing=$("$PY" -c 'import importlib, sys
for pair in sys.argv[1:]:
    module, dist = pair.split(":")
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or OSError from a missing shared library
        print(dist)' $EXTRA_MODULES | sort -u)
  if [[ -n $missing ]]; then
    # shellcheck disable=SC2086  # one distribution per word
    install_missing $missing || true
  fi
  for round in 1 2 3 4 5; do
    if err=$("$PY" -c "$IMPORTS" 2>&1); then
      log "ser_jax imports with $PY"
      return 0
    fi
    mod=$(sed -n "s/.*No module named '\([^']*\)'.*/\1/p" <<<"$err" | tail -1)
    [[ -n $mod ]] || break
    install_missing "$(dist_for "$mod")" || break
  done
  echo "$err"
  log "ser_jax does not import with $PY (round $round; see above)"
  return 1
}

# environment [gpu]: versions, devices and API probes; with "gpu", exit 3 unless JAX and PyTorch
# both see a GPU.
environment() {
  "$PY" - "${1:-}" <<'EOF'
import importlib.metadata as md
import platform
import sys

print("python", platform.python_version(), sys.executable)
try:
    names = sorted({d.metadata["Name"] for d in md.distributions() if d.metadata["Name"] and any(
        k in d.metadata["Name"].lower() for k in ("jax", "torch", "flax", "optax", "orbax",
                                                  "numpy", "chex", "cudnn", "tensorstore"))})
    print("packages:", ", ".join(f"{n} {md.distribution(n).version}" for n in names))
except Exception as e:  # noqa: BLE001
    print("package listing failed:", repr(e))
import jax
import torch

print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version(), "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import optax

probes = {  # what ser_jax.train and the benchmarks rely on
    "jax.sharding.AxisType.Auto": lambda: jax.sharding.AxisType.Auto,
    "jax.make_mesh(axis_types=Auto)": lambda: jax.make_mesh(
        (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)),
    "jax.make_array_from_callback": lambda: jax.make_array_from_callback,
    "jax.monitoring.register_event_duration_secs_listener":
        lambda: jax.monitoring.register_event_duration_secs_listener,
    "optax.tree.scale": lambda: optax.tree.scale,
    "optax.contrib.reduce_on_plateau": lambda: optax.contrib.reduce_on_plateau,
    "optax.inject_hyperparams": lambda: optax.inject_hyperparams,
}
for name, probe in probes.items():
    try:
        probe()
        print("api ok:", name)
    except Exception as e:  # noqa: BLE001
        print("API MISSING:", name, repr(e))
if sys.argv[1:] == ["gpu"] and (jax.default_backend() != "gpu"
                                or not torch.cuda.is_available()):
    print(f"JAX backend {jax.default_backend()}, torch.cuda.is_available() "
          f"{torch.cuda.is_available()}: not both on the GPU")
    sys.exit(3)
EOF
}

main() {
  log "device_check ${1:-gpu} in $REPO, budget ${BUDGET_S}s"
  local train_args trials_args
  if [[ "${1:-}" == "--smoke" ]]; then
    PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
    export JAX_PLATFORMS=cpu
    # XLA:CPU runs the scanned epoch very slowly (batch 1024 took minutes): tiny sizes only.
    train_args=(--device cpu --rows 64 --epochs 1 --batch-sizes 32)
    trials_args=(--trials 2 --rows 32 --batch-size 16 --epochs 1 --loop scan)
  else
    nvidia-smi || log "nvidia-smi failed"
    PY=$(pick_python) || { log "no python here imports jax and torch; set PYTHON"; return 2; }
    # Throughput: 3 timed epochs of 32768 rows per run; trials: 8 trials x (1 + 3) epochs.
    train_args=(--device cuda --rows 32768 --epochs 3 --batch-sizes "${BATCH_SIZES:-64,256,1024}")
    read -r -a trials_args <<<"${TRIALS_ARGS:---trials 8 --rows 32768 --batch-size 256 --epochs 3}"
  fi
  export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
  log "environment ($PY)"
  local rc=0
  if [[ "${1:-}" == "--smoke" ]]; then environment || rc=$?; else environment gpu || rc=$?; fi
  if ((rc)); then
    log "stopping: environment check exit $rc (3: JAX or PyTorch does not see the GPU)"
    return 3
  fi
  ensure_imports || return 4

  local train_json=() trials_json=()
  if [[ -n "${OUT:-}" ]]; then
    train_json=(--json-out "$OUT/device_check.json")
    trials_json=(--json-out "$OUT/trials.json")
  fi
  # Part 2 leaves at least 110 s of the budget to part 3; each of its 6 runs gets at most 75 s.
  run_part "training throughput (bench_train.py)" "$(limit 180 110)" \
    "$PY" benchmarks/bench_train.py --frameworks "${FRAMEWORKS:-ser-jax/scan,torch/eager}" \
    --reference ser-jax/scan --accuracy-epochs 0 --timeout 75 "${train_args[@]}" \
    "${train_json[@]}"
  run_part "many trials at once (bench_trials.py)" "$(limit 130 5)" \
    "$PY" benchmarks/bench_trials.py "${trials_args[@]}" "${trials_json[@]}"
  log "done"
}

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  main "$@" 2>&1 | tee "$OUT/device_check.log"
else
  main "$@"
fi
