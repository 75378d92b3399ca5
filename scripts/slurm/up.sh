#!/usr/bin/env bash
# Bring up a single-node Slurm on this machine (no systemd): munged, slurmctld, slurmd as background daemons.
#   sudo scripts/slurm/up.sh            # idempotent; prints the env to source, e.g.
#   source /var/lib/vsd-slurm/env.sh    # SLURM_CONF + PATH with the sacct stand-in (scripts/slurm/bin)
#   python run.py -m hydra/launcher=slurm_cpu seed=0,1
#   scripts/slurm/down.sh               # stops the daemons by pid
# State lives in $VSD_SLURM_DIR (default /var/lib/vsd-slurm). Facts behind each setting: docs/sweeps.md.
set -euo pipefail

D=${VSD_SLURM_DIR:-/var/lib/vsd-slurm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOST=$(hostname -s)
t0=$(date +%s%N)

if [ "$(id -u)" != 0 ]; then echo "up.sh: needs root (installs packages, runs munged as the munge user)" >&2; exit 2; fi

# 1. packages (Slurm 22.05 + munge on Debian 12); apt's policy-rc.d blocks service starts, which we want.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mkdir -p "$D"/{ctld,spool,log}
chmod 755 "$D"

# 2. munge: munged refuses loose permissions or a foreign owner, so it gets its own dir owned by munge
#    (0711: clients must be able to traverse to the socket; the key stays 0400).
M="$D/munge"
install -d -m 711 -o munge -g munge "$M"
if [ ! -s "$M/munge.key" ]; then
  dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 status=none
  chown munge:munge "$M/munge.key"; chmod 400 "$M/munge.key"
fi
if ! alive "$M/munged.pid"; then
  rm -f "$M/munge.socket" "$M/munge.socket.lock"
  runuser -u munge -- munged --socket="$M/munge.socket" --key-file="$M/munge.key" \
    --log-file="$M/munged.log" --pid-file="$M/munged.pid" --seed-file="$M/munged.seed"
fi
for _ in $(seq 50); do [ -S "$M/munge.socket" ] && break; sleep 0.1; done

# 3. slurm.conf: CPUs/sockets/cores from `slurmd -C`; RealMemory BELOW the detected value (above: node INVAL).
NODE=$(slurmd -C | head -1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE")
BOARDS=$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$NODE")
SOCKETS=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$NODE")
CORES=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$NODE")
THREADS=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$NODE")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
MEM=$(( MEM * 9 / 10 ))
cat > "$D/slurm.conf.new" <<CONF
# Written by scripts/slurm/up.sh for a single-node test cluster.
ClusterName=vsd
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$M/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# no cgroups in this container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# finished jobs stay visible to squeue (and so to the sacct stand-in) for an hour
MinJobAge=3600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
mv "$D/slurm.conf.new" "$D/slurm.conf"
export SLURM_CONF="$D/slurm.conf"

cat > "$D/env.sh" <<ENV
export SLURM_CONF=$D/slurm.conf
export PATH=$HERE/bin:\$PATH
ENV

# 4. daemons (each daemonises and writes its pid file)
# -c: a fresh controller forgets jobs of earlier bring-ups (a job whose processes died with an earlier
# session would otherwise keep the node "completing" for minutes).
if ! alive "$D/slurmctld.pid"; then slurmctld -c -f "$SLURM_CONF"; fi
if ! alive "$D/slurmd.pid"; then slurmd -f "$SLURM_CONF" -N "$HOST"; fi

# 5. wait until the node takes jobs
for _ in $(seq 300); do
  state=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true)
  case "$state" in idle*|mix*|alloc*) break ;; esac
  sleep 0.2
done
case "$state" in
  idle*|mix*|alloc*) ;;
  *) echo "up.sh: node $HOST not ready (state '${state:-none}'); logs in $D/log" >&2; exit 1 ;;
esac
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "slurm up in ${ms} ms (node $HOST: $CPUS CPUs, $MEM MB); source $D/env.sh"
