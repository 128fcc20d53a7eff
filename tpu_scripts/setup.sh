#!/usr/bin/env bash
# Copy this repository to every worker of a TPU slice and install it there in a Python 3.12 venv with the TPU extra.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $PROG --name NAME --zone ZONE [options]

On every worker (--worker=all): copy the repository (a tarball of the working tree, without .git, .venv, caches
and runs/), create a Python venv with uv (downloads the interpreter if the image lacks it) and
pip install -e '.[tpu]'. Runs:
  tar -czf TARBALL -C REPO --exclude=... .
  gcloud compute tpus tpu-vm scp TARBALL NAME:mend-jax-src.tgz --worker=all --zone=ZONE [--project=P]
  gcloud compute tpus tpu-vm ssh NAME --worker=all --zone=ZONE [--project=P] --command='...'

Required:
  --name NAME              TPU node name
  --zone ZONE              its zone
Options:
  --project PROJECT        GCP project (default: gcloud's configured project)
  --repo DIR               local repository to copy (default: the parent of tpu_scripts/)
  --remote-dir DIR         install directory on the workers, relative to the home directory (default: mend-jax)
  --python VERSION         Python version of the venv (default: 3.12; the package needs >= 3.12)
  --dry-run                print the command lines instead of running them
  -h, --help               this help
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR=mend-jax
PYVER=3.12
while [[ $# -gt 0 ]]; do
  parse_common "$@"
  if [[ "$CONSUMED" -gt 0 ]]; then shift "$CONSUMED"; continue; fi
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --repo) need_value "$1" "$#" "${2-}"; REPO=$2; shift 2 ;;
    --repo=*) REPO=${1#*=}; shift ;;
    --remote-dir) need_value "$1" "$#" "${2-}"; REMOTE_DIR=$2; shift 2 ;;
    --remote-dir=*) REMOTE_DIR=${1#*=}; shift ;;
    --python) need_value "$1" "$#" "${2-}"; PYVER=$2; shift 2 ;;
    --python=*) PYVER=${1#*=}; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done

validate_common
validate_remote_dir "$REMOTE_DIR"
[[ -f "$REPO/pyproject.toml" ]] || die "--repo '$REPO' is not the mend-jax repository (no pyproject.toml)"
[[ "$PYVER" =~ ^3\.([0-9]+)$ ]] || die "--python '$PYVER' must look like 3.12"
(( BASH_REMATCH[1] >= 12 )) || die "--python $PYVER: mend-jax needs Python >= 3.12 (jax >= 0.12 dropped 3.11)"
require_gcloud
location_flags

TARBALL="${TMPDIR:-/tmp}/mend-jax-src-$NAME.tgz"
run tar -czf "$TARBALL" -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=__pycache__ \
  --exclude=./runs --exclude='*.egg-info' --exclude=.pytest_cache .
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:mend-jax-src.tgz" --worker=all "${LOCATION_FLAGS[@]}"

dir=$(printf '%q' "$REMOTE_DIR")
if [[ "$REMOTE_DIR" != /* ]]; then
  dir="./$dir"  # pip treats "name[extra]" without a slash as a package name, not a path
fi
remote="set -euo pipefail"
remote+=" && mkdir -p $dir && tar -xzf mend-jax-src.tgz -C $dir"
remote+=" && (command -v uv >/dev/null || python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh)"
remote+=" && export PATH=\$HOME/.local/bin:\$PATH"
remote+=" && (test -x $dir/.venv/bin/python || uv venv --seed --python $PYVER $dir/.venv)"
remote+=" && $dir/.venv/bin/python -m pip install --quiet -e \"${dir}[tpu]\""
remote+=" && $dir/.venv/bin/python -c 'import sys, jax, mend_jax; print(sys.version.split()[0], jax.__version__)'"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION_FLAGS[@]}" "--command=$remote"
