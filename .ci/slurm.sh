#!/usr/bin/env bash
# A single-node Slurm cluster on this machine for the test suite, without systemd or cgroups.
#
#   eval "$(.ci/slurm.sh)"      # then: CI=1 pytest   (CI set: a missing cluster fails the tests)
#   .ci/slurm.sh stop           # cancels every job, stops the daemons this script started
#
# Prints only `export SLURM_CONF=...` on stdout; progress goes to stderr. Idempotent: a second run
# finds the cluster of the first. In order (as root; a few seconds, ~15 s with the install):
#   1. `apt-get install slurm-wlm munge` if slurmctld is missing;
#   2. munged as the munge user (the packaged key, or a new one);
#   3. slurm.conf / gres.conf in ${NBTL_SLURM_DIR:-/tmp/nbtl-ci-slurm}: one node, this host at
#      127.0.0.1, 8 CPUs declared (SlurmdParameters=config_overrides: more than the machine has, so
#      several 1-CPU tasks run side by side), two fake GPUs (`Gres=gpu:2`): character devices
#      /dev/fakegpu0-1 (`mknod c 1 3`, /dev/null's numbers); a gres without `File=` drains the node
#      and plain files are refused. `--gres=gpu:1` jobs get CUDA_VISIBLE_DEVICES=0 and 1, a third
#      waits. No cgroups (proctrack/linuxproc, task/none) and no accounting (no sacct: use
#      squeue/scontrol);
#   4. slurmctld (fresh state) and slurmd in the background, then waits for an idle node.
set -euo pipefail

DIR="${NBTL_SLURM_DIR:-/tmp/nbtl-ci-slurm}"
CONF="$DIR/slurm.conf"
GPUS=2
CPUS=8

log() { echo "slurm.sh: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

alive() {  # pid file
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() { SLURM_CONF="$CONF" sinfo -h -N -o %t 2>/dev/null | head -n 1; }

stop() {
    if alive "$DIR/slurmctld.pid"; then
        # jobs first: their processes belong to slurmstepd, which outlives slurmd
        SLURM_CONF="$CONF" scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -z "$(SLURM_CONF="$CONF" squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    for daemon in slurmd slurmctld munged; do
        if alive "$DIR/$daemon.pid"; then
            log "stopping $daemon"
            as_root kill "$(cat "$DIR/$daemon.pid")"
            for _ in $(seq 1 100); do alive "$DIR/$daemon.pid" || break; sleep 0.1; done
        fi
        rm -f "$DIR/$daemon.pid"
    done
}

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi

# Already up (a previous run): nothing to do.
if [ -s "$CONF" ] && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" &&
    [[ "$(node_state)" =~ ^(idle|mix|alloc)$ ]]; then
    log "cluster already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

# 1. packages
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    log "installing slurm-wlm and munge (apt-get)"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >&2
fi

stop  # a half-started cluster of an earlier run
mkdir -p "$DIR/state" "$DIR/spool"

# 2. munge: the daemons and clients authenticate through it
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || as_root runuser -u munge -- mungekey --create >&2
    as_root install -d -o munge -g munge -m 0755 /run/munge
    log "starting munged"
    as_root runuser -u munge -- munged --pid-file=/run/munge/munged.pid >&2
    cp /run/munge/munged.pid "$DIR/munged.pid"
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# 3. configuration
HOST="$(hostname -s)"
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
for i in $(seq 0 $((GPUS - 1))); do
    [ -c "/dev/fakegpu$i" ] || as_root mknod -m 666 "/dev/fakegpu$i" c 1 3
done
cat >"$CONF" <<EOF
# written by .ci/slurm.sh: a one-node test cluster (no cgroups, no accounting, fake GPUs)
ClusterName=nbtl-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=$(id -un)
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$DIR/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/fakegpu[0-$((GPUS - 1))]
EOF

# 4. daemons (-c: no jobs from an earlier cluster)
log "starting slurmctld and slurmd ($CONF)"
as_root slurmctld -c -f "$CONF" >&2
as_root slurmd -f "$CONF" >&2
for _ in $(seq 1 300); do
    case "$(node_state)" in
    idle) break ;;
    drain* | down*) SLURM_CONF="$CONF" scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.1
done
if [ "$(node_state)" != idle ]; then
    log "the node did not become idle (state: $(node_state)); the logs:"
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    exit 1
fi
log "Slurm ready: node $HOST idle, $CPUS CPUs, gpu:$GPUS"
echo "export SLURM_CONF=$CONF"
