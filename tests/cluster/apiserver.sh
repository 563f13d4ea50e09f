#!/usr/bin/env bash
# Stops or starts the kube-apiserver that up.sh started, for fault tests: `stop` saves its exact
# command line and kills it (SIGKILL, as a crash or a lost control-plane node would: a SIGTERM
# drain keeps answering for 30 s and more); `start` runs that command
# again with the same flags, state and audit log, records the new pid in $STATE/pids (so down.sh
# stops it) and waits until it is ready.
#
#   OIM_CLUSTER_STATE  the cluster's state directory (default /tmp/oim-cluster)
set -euo pipefail
S=${OIM_CLUSTER_STATE:-/tmp/oim-cluster}
CMDLINE="$S/kube-apiserver.cmdline"
[[ -f "$S/pids" ]] || { echo "apiserver.sh: no cluster recorded in $S" >&2; exit 1; }
alive() { [[ -r /proc/$1/stat ]] && [[ "$(cut -d' ' -f3 </proc/$1/stat 2>/dev/null)" != Z ]]; }
pid_of() { awk '$2 == "kube-apiserver" {print $1}' "$S/pids" | tail -n 1; }

case "${1:-}" in
stop)
  pid=$(pid_of)
  [[ -n "$pid" ]] && alive "$pid" || { echo "apiserver.sh: kube-apiserver is not running" >&2; exit 1; }
  cp "/proc/$pid/cmdline" "$CMDLINE"
  kill -9 "$pid"
  for _ in $(seq 1 40); do alive "$pid" || exit 0; sleep 0.25; done
  echo "apiserver.sh: kube-apiserver (pid $pid) is still alive 10s after SIGKILL" >&2
  exit 1
  ;;
start)
  [[ -s "$CMDLINE" ]] || { echo "apiserver.sh: no saved command line; run 'apiserver.sh stop' first" >&2; exit 1; }
  old=$(pid_of)
  if [[ -n "$old" ]] && alive "$old"; then echo "apiserver.sh: kube-apiserver is already running (pid $old)" >&2; exit 1; fi
  mapfile -d '' cmd <"$CMDLINE"
  "${cmd[@]}" >>"$S/log/kube-apiserver.log" 2>&1 &
  new=$!
  # Same place in the list: down.sh stops it after the controllers and before etcd.
  sed -i "s/^$old kube-apiserver\$/$new kube-apiserver/" "$S/pids"
  port=$(printf '%s\n' "${cmd[@]}" | awk 'prev == "--secure-port" {print; exit} {prev = $0}')
  for _ in $(seq 1 480); do
    if curl -fs --cacert "$S/pki/ca.crt" "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then exit 0; fi
    alive "$new" || { echo "apiserver.sh: kube-apiserver exited; see $S/log/kube-apiserver.log" >&2; exit 1; }
    sleep 0.25
  done
  echo "apiserver.sh: kube-apiserver did not become ready within 120s" >&2
  exit 1
  ;;
*)
  echo "usage: apiserver.sh stop|start" >&2
  exit 2
  ;;
esac
