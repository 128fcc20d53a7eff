# shellcheck shell=bash
# Shared helpers for the tpu_scripts/*.sh commands (sourced, not run).
#
# Every script accepts --name, --zone, --project (optional: gcloud's configured project otherwise),
# --dry-run (print the gcloud command lines, one per line, shell-quoted, instead of running them) and --help.
# Options take their value as "--opt value" or "--opt=value".

set -euo pipefail

PROG=$(basename "$0")
DRY_RUN=0
NAME=""
ZONE=""
PROJECT=""

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$PROG" >&2
  exit 2
}

info() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# need_value OPTION "$#" NEXT -> fail when an option is the last argument or is followed by another option
need_value() {
  if [[ "$2" -lt 2 || "${3-}" == --* ]]; then
    die "option $1 needs a value"
  fi
}

# shellcheck disable=SC2034  # CONSUMED is read by the scripts that source this file
# parse_common "$@": handles the shared options; sets CONSUMED to 1 or 2 (how many arguments it used), or 0 when
# the option is not a shared one (the caller handles it).
parse_common() {
  CONSUMED=0
  case "$1" in
    --name) need_value "$1" "$#" "${2-}"; NAME=$2; CONSUMED=2 ;;
    --name=*) NAME=${1#*=}; CONSUMED=1 ;;
    --zone) need_value "$1" "$#" "${2-}"; ZONE=$2; CONSUMED=2 ;;
    --zone=*) ZONE=${1#*=}; CONSUMED=1 ;;
    --project) need_value "$1" "$#" "${2-}"; PROJECT=$2; CONSUMED=2 ;;
    --project=*) PROJECT=${1#*=}; CONSUMED=1 ;;
    --dry-run) DRY_RUN=1; CONSUMED=1 ;;
  esac
}

validate_name() {
  [[ -n "$NAME" ]] || die "--name is required (the TPU VM / node name, e.g. mend-v5p)"
  [[ "$NAME" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] \
    || die "--name '$NAME' is not a valid TPU name (lowercase letters, digits and hyphens, starting with a letter, at most 63 characters)"
}

validate_zone() {
  [[ -n "$ZONE" ]] || die "--zone is required (e.g. us-east5-a for v5p, us-west4-a for v5e)"
  [[ "$ZONE" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$ZONE' does not look like a zone (e.g. us-central2-b)"
}

validate_project() {
  if [[ -n "$PROJECT" ]]; then
    [[ "$PROJECT" =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] \
      || die "--project '$PROJECT' is not a valid project id (6-30 lowercase letters, digits, hyphens)"
  fi
}

validate_common() {
  validate_name
  validate_zone
  validate_project
}

# Flags every gcloud call gets.
location_flags() {
  LOCATION_FLAGS=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION_FLAGS+=("--project=$PROJECT")
  fi
}

# shquote WORD: WORD as the shell would need it typed (bare when safe, otherwise in single quotes).
shquote() {
  local s=$1 q="'"
  if [[ -n "$s" && "$s" =~ ^[-A-Za-z0-9_./:=@,+%]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//$q/$q\\$q$q}"
  fi
}

# run CMD...: run it, or print it (shell-quoted, one line: copy-paste runs it) with --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local out="" word
    for word in "$@"; do
      out+="$(shquote "$word") "
    done
    printf '%s\n' "${out% }"
  else
    "$@"
  fi
}

require_gcloud() {
  if [[ "$DRY_RUN" == 0 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) or use --dry-run"
  fi
}

# A remote directory relative to the home directory (no ~, which would not survive quoting) or absolute.
validate_remote_dir() {
  [[ -n "$1" ]] || die "--remote-dir must not be empty"
  [[ "$1" =~ ^[-A-Za-z0-9_./]+$ ]] || die "--remote-dir '$1' may only use letters, digits, - _ . / (relative to the home directory, or absolute)"
}
