#!/usr/bin/env bash
# Installs NVIDIA's aiconfigurator (PyPI) into a cached venv for `make bench` and prints the path
# of its `aiconfigurator` command; prints nothing (exit 0) when Python or PyPI is unavailable,
# and the bench then shows the published figure instead.
set -uo pipefail
VERSION=0.12.0
DIR=${OIM_AICONFIGURATOR_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/oim-aiconfigurator/$VERSION}
BIN=$DIR/bin/aiconfigurator
if [ ! -x "$BIN" ]; then
  command -v python3 >/dev/null || { echo "aiconfigurator: no python3; skipping" >&2; exit 0; }
  rm -rf "$DIR"
  if ! { python3 -m venv "$DIR" && "$DIR/bin/pip" install --quiet "aiconfigurator==$VERSION"; } >&2; then
    echo "aiconfigurator: installing aiconfigurator==$VERSION from PyPI failed; skipping" >&2
    rm -rf "$DIR"
    exit 0
  fi
fi
echo "$BIN"
