#!/usr/bin/env bash
# Request a Cloud TPU pod slice through a queued resource (the slice is created when capacity is available).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $PROG --name NAME --zone ZONE --type ACCELERATOR_TYPE [options]

Request a TPU VM slice with a queued resource:
  gcloud compute tpus queued-resources create QR_ID --node-id=NAME --zone=ZONE
      --accelerator-type=TYPE --runtime-version=VERSION [--project=P] [--spot | --reserved]

Required:
  --name NAME              TPU node name (lowercase letters, digits, hyphens)
  --zone ZONE              e.g. us-east5-a (v5p), us-west4-a (v5e), us-central2-b (v4)
  --type TYPE              accelerator type: v4-N, v5p-N (N TensorCores = 2 x chips), v5litepod-N (chips), v6e-N
Options:
  --project PROJECT        GCP project (default: gcloud's configured project)
  --runtime-version V      TPU software image (default by type: v5p -> v2-alpha-tpuv5,
                           v5litepod -> v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e, otherwise tpu-ubuntu2204-base)
  --qr-id ID               queued-resource id (default: NAME-qr)
  --spot | --reserved      capacity type (default: on-demand)
  --wait                   poll until the queued resource is ACTIVE (or FAILED / SUSPENDED)
  --dry-run                print the gcloud command lines instead of running them
  -h, --help               this help
USAGE
}

TYPE=""
RUNTIME=""
QR_ID=""
CAPACITY=""
WAIT=0
while [[ $# -gt 0 ]]; do
  parse_common "$@"
  if [[ "$CONSUMED" -gt 0 ]]; then shift "$CONSUMED"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --type|--accelerator-type) need_value "$1" "$#" "${2-}"; TYPE=$2; shift 2 ;;
    --type=*|--accelerator-type=*) TYPE=${1#*=}; shift ;;
    --runtime-version) need_value "$1" "$#" "${2-}"; RUNTIME=$2; shift 2 ;;
    --runtime-version=*) RUNTIME=${1#*=}; shift ;;
    --qr-id) need_value "$1" "$#" "${2-}"; QR_ID=$2; shift 2 ;;
    --qr-id=*) QR_ID=${1#*=}; shift ;;
    --spot) [[ -z "$CAPACITY" || "$CAPACITY" == spot ]] || die "choose one of --spot and --reserved"; CAPACITY=spot; shift ;;
    --reserved) [[ -z "$CAPACITY" || "$CAPACITY" == reserved ]] || die "choose one of --spot and --reserved"; CAPACITY=reserved; shift ;;
    --wait) WAIT=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

validate_common
[[ -n "$TYPE" ]] || die "--type is required (e.g. v5p-64, v5litepod-16, v4-32)"
[[ "$TYPE" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-[0-9]+$ ]] \
  || die "--type '$TYPE' is not an accelerator type (v4-N, v5p-N, v5litepod-N, v6e-N, v2-N, v3-N)"
if [[ -z "$RUNTIME" ]]; then
  case "$TYPE" in
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) RUNTIME=tpu-ubuntu2204-base ;;
  esac
fi
[[ "$RUNTIME" =~ ^[-a-z0-9.]+$ ]] || die "--runtime-version '$RUNTIME' is not a runtime version name"
QR_ID=${QR_ID:-$NAME-qr}
[[ "$QR_ID" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--qr-id '$QR_ID' is not a valid id"
require_gcloud
location_flags

cmd=(gcloud compute tpus queued-resources create "$QR_ID" "--node-id=$NAME" "${LOCATION_FLAGS[@]}"
     "--accelerator-type=$TYPE" "--runtime-version=$RUNTIME")
if [[ -n "$CAPACITY" ]]; then
  cmd+=("--$CAPACITY")
fi
run "${cmd[@]}"

if [[ "$WAIT" == 1 ]]; then
  describe=(gcloud compute tpus queued-resources describe "$QR_ID" "${LOCATION_FLAGS[@]}" "--format=value(state.state)")
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${describe[@]}"
  else
    while true; do
      state=$("${describe[@]}")
      info "queued resource $QR_ID: $state"
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $QR_ID is $state" ;;
      esac
      sleep 30
    done
  fi
fi
