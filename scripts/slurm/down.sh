#!/usr/bin/env bash
# Stop the single-node Slurm started by up.sh, by pid file (never by process name). Keeps the packages.
#   scripts/slurm/down.sh [--purge]     # --purge also deletes the state dir (job state, logs, munge key)
set -uo pipefail
D=${VSD_SLURM_DIR:-/var/lib/vsd-slurm}
stop() {  # stop <pidfile>: SIGTERM, wait up to 10 s, then SIGKILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$f"
}
stop "$D/slurmd.pid"
stop "$D/slurmctld.pid"
stop "$D/munge/munged.pid"
if [ "${1:-}" = --purge ]; then rm -rf "$D"; fi
echo "slurm down"
