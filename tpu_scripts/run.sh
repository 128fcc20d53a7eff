#!/usr/bin/env bash
# Run one command on every worker of a TPU slice, inside the installed repository and its venv.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $PROG --name NAME --zone ZONE [options] -- COMMAND [ARGS...]

Runs COMMAND at the same time on all workers (every host of a multi-host slice must run the same program; JAX's
processes find each other through jax.distributed.initialize(), which mend_jax.sharding.initialize_distributed()
calls when it sees several hosts):
  gcloud compute tpus tpu-vm ssh NAME --worker=all --zone=ZONE [--project=P]
      --command='cd DIR && . .venv/bin/activate && export MEND_JAX_DISTRIBUTED=1 && COMMAND ARGS...'

Required:
  --name NAME              TPU node name
  --zone ZONE              its zone
  -- COMMAND [ARGS...]     what to run (each argument is passed through quoted, as given)
Options:
  --project PROJECT        GCP project (default: gcloud's configured project)
  --remote-dir DIR         where setup.sh installed the repository (default: mend-jax)
  --worker W               all (default) or one worker index (e.g. 0 to inspect a single host)
  --env KEY=VALUE          set an environment variable for COMMAND (repeatable)
  --log FILE               also append the output to DIR/logs/FILE on each worker
  --dry-run                print the gcloud command line instead of running it
  -h, --help               this help
Example:
  $PROG --name mend-v5p --zone us-east5-a -- mend-jax plan --model llama2-70b --mesh 32 --platform tpu-v5p
USAGE
}

REMOTE_DIR=mend-jax
WORKER=all
LOG=""
ENVS=()
CMD=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then
    shift
    CMD=("$@")
    break
  fi
  parse_common "$@"
  if [[ "$CONSUMED" -gt 0 ]]; then shift "$CONSUMED"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --remote-dir) need_value "$1" "$#" "${2-}"; REMOTE_DIR=$2; shift 2 ;;
    --remote-dir=*) REMOTE_DIR=${1#*=}; shift ;;
    --worker) need_value "$1" "$#" "${2-}"; WORKER=$2; shift 2 ;;
    --worker=*) WORKER=${1#*=}; shift ;;
    --env) need_value "$1" "$#" "${2-}"; ENVS+=("$2"); shift 2 ;;
    --env=*) ENVS+=("${1#*=}"); shift ;;
    --log) need_value "$1" "$#" "${2-}"; LOG=$2; shift 2 ;;
    --log=*) LOG=${1#*=}; shift ;;
    *) die "unknown argument '$1' (put the command to run after --)" ;;
  esac
done

validate_common
validate_remote_dir "$REMOTE_DIR"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be 'all' or a worker index, not '$WORKER'"
[[ ${#CMD[@]} -gt 0 ]] || die "no command given: put it after --, e.g. $PROG --name N --zone Z -- python -m pytest"
if [[ -n "$LOG" ]]; then
  [[ "$LOG" =~ ^[-A-Za-z0-9_.]+$ ]] || die "--log '$LOG' must be a plain file name (letters, digits, - _ .)"
fi
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*=.*$ ]] || die "--env '$kv' must look like KEY=VALUE"
done
require_gcloud
location_flags

# MEND_JAX_DISTRIBUTED=1: mend_jax.sharding.initialize_distributed() then calls jax.distributed.initialize(), which
# finds the other workers through the TPU metadata server (also fine on a single-host slice); --env may override it.
remote="cd $(printf '%q' "$REMOTE_DIR") && . .venv/bin/activate && export MEND_JAX_DISTRIBUTED=1 &&"
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  remote+=" export ${kv%%=*}=$(printf '%q' "${kv#*=}") &&"
done
for word in "${CMD[@]}"; do
  remote+=" $(printf '%q' "$word")"
done
if [[ -n "$LOG" ]]; then
  remote="set -o pipefail && mkdir -p $(printf '%q' "$REMOTE_DIR")/logs && { $remote; } 2>&1 | tee -a $(printf '%q' "$REMOTE_DIR")/logs/$LOG"
fi
run gcloud compute tpus tpu-vm ssh "$NAME" "--worker=$WORKER" "${LOCATION_FLAGS[@]}" "--command=$remote"
