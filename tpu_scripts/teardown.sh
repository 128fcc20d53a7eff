#!/usr/bin/env bash
# Delete a TPU slice and its queued resource (stops the billing).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $PROG --name NAME --zone ZONE [options]

  gcloud compute tpus queued-resources delete QR_ID --zone=ZONE [--project=P] --force [--quiet]

--force also deletes the TPU node the queued resource created. Fetch your results first (fetch.sh).

Required:
  --name NAME              TPU node name (the queued resource defaults to NAME-qr, as in create.sh)
  --zone ZONE              its zone
Options:
  --project PROJECT        GCP project (default: gcloud's configured project)
  --qr-id ID               queued-resource id (default: NAME-qr)
  --yes                    do not ask for confirmation (gcloud --quiet)
  --async                  return without waiting for the deletion
  --dry-run                print the gcloud command line instead of running it
  -h, --help               this help
USAGE
}

QR_ID=""
YES=0
ASYNC=0
while [[ $# -gt 0 ]]; do
  parse_common "$@"
  if [[ "$CONSUMED" -gt 0 ]]; then shift "$CONSUMED"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --qr-id) need_value "$1" "$#" "${2-}"; QR_ID=$2; shift 2 ;;
    --qr-id=*) QR_ID=${1#*=}; shift ;;
    --yes|-y) YES=1; shift ;;
    --async) ASYNC=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

validate_common
QR_ID=${QR_ID:-$NAME-qr}
[[ "$QR_ID" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--qr-id '$QR_ID' is not a valid id"
require_gcloud
location_flags

cmd=(gcloud compute tpus queued-resources delete "$QR_ID" "${LOCATION_FLAGS[@]}" --force)
if [[ "$ASYNC" == 1 ]]; then
  cmd+=(--async)
fi
if [[ "$YES" == 1 ]]; then
  cmd+=(--quiet)
fi
run "${cmd[@]}"
