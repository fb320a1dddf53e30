#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests/test_slurm.py (needs root; Debian's packages).
#
#   tests/slurm/start_cluster.sh DIR        install munge and slurm if missing, start munged, slurmctld and slurmd
#                                           with their config, state, logs and pid files in DIR; print SLURM_CONF
#   tests/slurm/start_cluster.sh stop DIR   stop the daemons this script started there (by their pid files)
#
# The node has this machine's hostname and CPUs (nproc, which would count OMP_NUM_THREADS without the env -u), one
# partition "debug", no accounting and no cgroups (proctrack/linuxproc), as root. Tasks are bound to cores
# (task/affinity, TaskPluginParam=Cores), as on many clusters: a task gets the CPUs its step gave it, no more.
# KillWait is short, so that a requeued job's tasks end quickly.
set -euo pipefail

if [ "${1:-}" = stop ]; then
    dir=$2
    # End the jobs first (all their processes, hung ones too), or they outlive the daemons that would kill them.
    if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        export SLURM_CONF=$dir/slurm.conf
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true  # SIGTERM, then SIGKILL after KillWait
            for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
        fi
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    exit 0
fi

dir=$(mkdir -p "${1:?usage: $0 DIR | stop DIR}" && cd "$1" && pwd)
[ "$(id -u)" = 0 ] || { echo "start_cluster.sh: needs root (slurmd runs jobs as their user)" >&2; exit 1; }

if ! command -v munged >/dev/null || ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null; then
    echo "start_cluster.sh: installing munge and slurm" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client >&2
fi

# munge authenticates slurm's messages; a key is made when the package is installed.
mkdir -p /run/munge
chown munge:munge /run/munge
chmod 0755 /run/munge
[ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; } >&2
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force >&2
    cp /run/munge/munged.pid "$dir/munged.pid"  # started here, so "stop" stops it
fi
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    echo "start_cluster.sh: slurmctld or slurmd is already running here (pids $(pgrep -d ' ' -x 'slurmctld|slurmd'));" \
        "stop that cluster first: its ports are the ones this one needs" >&2
    exit 1
fi

host=$(hostname -s)
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat >"$dir/slurm.conf" <<CONF
ClusterName=aelightning
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
TaskPluginParam=Cores
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=3600
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF" >&2
slurmd -f "$SLURM_CONF" >&2
for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
        idle*|mixed*|allocated*) echo "$SLURM_CONF"; exit 0 ;;
        down*|drain*) scontrol update NodeName="$host" State=RESUME >&2 || true ;;
    esac
    sleep 1
done
echo "start_cluster.sh: the node did not come up (state: ${state:-none}); logs in $dir/log" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
