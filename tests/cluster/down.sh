#!/usr/bin/env bash
# Stops exactly the processes up.sh recorded in $STATE/pids (never by name), newest first, each
# after the previous one exited (the API server drains against a live etcd), then removes the
# state directory.
set -uo pipefail
S=${OIM_CLUSTER_STATE:-/tmp/oim-cluster}
[[ -f "$S/pids" ]] || { echo "down.sh: no cluster recorded in $S" >&2; exit 0; }
# Alive = exists and is not a zombie (in containers without an init, nobody may reap them).
alive() { [[ -r /proc/$1/stat ]] && [[ "$(cut -d' ' -f3 </proc/$1/stat 2>/dev/null)" != Z ]]; }
mapfile -t entries < <(tac "$S/pids")
for e in "${entries[@]}"; do
  pid=${e%% *}
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 120); do alive "$pid" || break; sleep 0.25; done
  if alive "$pid"; then
    echo "down.sh: ${e#* } (pid $pid) did not stop within 30s of SIGTERM; sending SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
done
rm -rf "$S"
