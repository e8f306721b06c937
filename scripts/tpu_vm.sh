#!/usr/bin/env bash
# Train ser-jax on a Cloud TPU VM: one host (v5litepod-8) or a multi-host slice (v5litepod-16,
# v4-32, ...), with the corpus and the workdir in a Cloud Storage bucket mounted by gcsfuse on
# every worker. Runs `python -m ser_jax.main --config=configs/tpu.py` on all workers at once
# (JAX joins them into one job from the TPU metadata), fetches the results, deletes the VM.
#
#   scripts/tpu_vm.sh [--dry-run] create|install|train|fetch|delete|all
#
# Settings (environment): PROJECT, ZONE, TPU_NAME, ACCELERATOR (v5litepod-8: one host;
# v5litepod-16 or larger: a slice), RUNTIME (TPU software version), BUCKET (gs://NAME, holding
# ravdess/ and receiving runs/RUN), RUN (run name), REPO_URL (git URL of this project),
# SPOT=1 for Spot VMs. --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

PROJECT=${PROJECT:-my-project}
ZONE=${ZONE:-us-west4-a}
TPU_NAME=${TPU_NAME:-ser-jax}
ACCELERATOR=${ACCELERATOR:-v5litepod-8}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
BUCKET=${BUCKET:-gs://my-ser-jax-bucket}
RUN=${RUN:-tpu-$(date -u +%Y%m%d-%H%M%S)}
REPO_URL=${REPO_URL:-https://github.com/OWNER/ser-jax.git}
MOUNT=/mnt/ser-jax  # the bucket on every worker (gcsfuse)
DRY_RUN=0

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

run() {  # prints the command; runs it unless --dry-run
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ $DRY_RUN == 0 ]]; then
    "$@"
  fi
}

on_all_workers() {  # runs a shell command on every worker of the TPU VM at the same time
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --worker=all --command="$1"
}

create() {
  local spot=()
  if [[ ${SPOT:-0} == 1 ]]; then spot=(--spot); fi
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${spot[@]}"
}

install() {
  on_all_workers "set -e
    sudo apt-get update -q && sudo apt-get install -yq gcsfuse || true
    rm -rf ~/ser-jax && git clone --depth 1 $REPO_URL ~/ser-jax
    python3 -m venv ~/venv && ~/venv/bin/pip install -q -U pip
    cd ~/ser-jax && ~/venv/bin/pip install -q -e '.[tpu]'
    sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
    mountpoint -q $MOUNT || gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT"
}

train() {
  # The same command on every worker; one --workdir for all (process 0 writes logs and the
  # bundle, every process writes its shards of the Orbax checkpoints).
  on_all_workers "cd ~/ser-jax && ~/venv/bin/python -m ser_jax.main --config=configs/tpu.py \
    --workdir=$MOUNT/runs/$RUN --config.data.corpora=ravdess:$MOUNT/ravdess \
    --config.compilation_cache_dir=$MOUNT/xla-cache"
}

fetch() {
  run mkdir -p "runs/$RUN"
  run gcloud storage cp -r "$BUCKET/runs/$RUN/metrics.jsonl" "$BUCKET/runs/$RUN/report" \
    "$BUCKET/runs/$RUN/train_result.json" "$BUCKET/runs/$RUN/bundle" "runs/$RUN/"
}

delete() {
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
}

main() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage 0 ;;
      create|install|train|fetch|delete) "$1"; shift ;;
      all) create; install; train; fetch; delete; shift ;;
      *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
  done
}

if [[ $# -eq 0 ]]; then usage 2; fi
main "$@"
