#!/usr/bin/env bash
# Copy results (a directory or file of the installed repository) from a TPU worker back to this machine.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $PROG --name NAME --zone ZONE [options]

  gcloud compute tpus tpu-vm scp --recurse NAME:DIR/PATH LOCAL --worker=W --zone=ZONE [--project=P]

Process 0 (worker 0) writes the results and logs of a run (mend_jax.sharding.is_main_process), so that is the
default; fetch per-worker logs with --worker N --path logs.

Required:
  --name NAME              TPU node name
  --zone ZONE              its zone
Options:
  --project PROJECT        GCP project (default: gcloud's configured project)
  --remote-dir DIR         where setup.sh installed the repository (default: mend-jax)
  --path PATH              what to copy, relative to DIR (default: experiments/results); repeatable
  --worker N               worker index to copy from (default: 0)
  --to DIR                 local destination directory (default: fetched/NAME/worker-N)
  --dry-run                print the command lines instead of running them
  -h, --help               this help
USAGE
}

REMOTE_DIR=mend-jax
WORKER=0
DEST=""
PATHS=()
while [[ $# -gt 0 ]]; do
  parse_common "$@"
  if [[ "$CONSUMED" -gt 0 ]]; then shift "$CONSUMED"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --remote-dir) need_value "$1" "$#" "${2-}"; REMOTE_DIR=$2; shift 2 ;;
    --remote-dir=*) REMOTE_DIR=${1#*=}; shift ;;
    --path) need_value "$1" "$#" "${2-}"; PATHS+=("$2"); shift 2 ;;
    --path=*) PATHS+=("${1#*=}"); shift ;;
    --worker) need_value "$1" "$#" "${2-}"; WORKER=$2; shift 2 ;;
    --worker=*) WORKER=${1#*=}; shift ;;
    --to) need_value "$1" "$#" "${2-}"; DEST=$2; shift 2 ;;
    --to=*) DEST=${1#*=}; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

validate_common
validate_remote_dir "$REMOTE_DIR"
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be one worker index (0, 1, ...), not '$WORKER'"
if [[ ${#PATHS[@]} -eq 0 ]]; then
  PATHS=(experiments/results)
fi
for p in "${PATHS[@]}"; do
  [[ "$p" =~ ^[-A-Za-z0-9_.][-A-Za-z0-9_./]*$ && "$p" != *..* ]] \
    || die "--path '$p' must be a relative path inside the repository (letters, digits, - _ . /, no ..)"
done
DEST=${DEST:-fetched/$NAME/worker-$WORKER}
require_gcloud
location_flags

run mkdir -p "$DEST"
for p in "${PATHS[@]}"; do
  run gcloud compute tpus tpu-vm scp --recurse "$NAME:$REMOTE_DIR/$p" "$DEST/" "--worker=$WORKER" "${LOCATION_FLAGS[@]}"
done
