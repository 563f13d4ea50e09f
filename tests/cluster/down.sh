#!/usr/bin/env bash
# Stops exactly the processes up.sh recorded in $STATE/pids (never by name), newest first,
# then removes the state directory.
set -uo pipefail
S=${OIM_CLUSTER_STATE:-/tmp/oim-cluster}
[[ -f "$S/pids" ]] || { echo "down.sh: no cluster recorded in $S" >&2; exit 0; }
mapfile -t entries < <(tac "$S/pids")
for e in "${entries[@]}"; do
  pid=${e%% *}
  kill "$pid" 2>/dev/null || true
done
for e in "${entries[@]}"; do
  pid=${e%% *}
  for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "down.sh: ${e#* } (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
done
rm -rf "$S"
