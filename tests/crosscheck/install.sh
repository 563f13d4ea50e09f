#!/usr/bin/env bash
# Installs the external load generator the cross-check test compares `oim bench` with:
# inference-perf (kubernetes-sigs, PyPI) into a virtualenv under ~/.cache/oim-crosscheck/, once
# per version; prints the virtualenv's directory. `make test` exports it as OIM_INFERENCE_PERF.
#
# Why inference-perf, and why all of it: guidellm (vLLM's) requires torch, several GB; NVIDIA's
# aiperf is heavier still (pandas, scipy, plotly, kubernetes clients, ...). inference-perf needs no
# torch, but imports its video, dataset and cloud-storage modules at start (av, datasets with
# pyarrow and pandas, boto3, google-cloud-storage), so a trimmed install does not start.
# Measured cold (no pip cache, 2 shared cores): 2 min, 789 MB. A warm run checks one file.
set -euo pipefail
VERSION=0.7.0
CACHE=${OIM_CROSSCHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oim-crosscheck}
VENV=$CACHE/inference-perf-$VERSION

if [[ -x "$VENV/bin/inference-perf" && -f "$VENV/.complete" ]]; then
  echo "$VENV"
  exit 0
fi

python312() {
  for p in python3.13 python3.12 python3 "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "install.sh: inference-perf needs Python >= 3.12 with venv; install python3.12 (or newer) and run again" >&2
  return 1
}

PY=$(python312)
start=$(date +%s)
echo ">> installing inference-perf $VERSION into $VENV (once; about 2 minutes and 800 MB)" >&2
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PY" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "inference-perf==$VERSION" >&2
touch "$VENV/.complete"
echo ">> inference-perf installed in $(( $(date +%s) - start ))s" >&2
echo "$VENV"
