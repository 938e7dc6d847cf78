#!/usr/bin/env bash
# A real one-node Slurm on this machine, for development and for the end-to-end test:
# Debian's slurmctld, slurmd and munge, run as plain processes (no systemd, no cgroups),
# every daemon on 127.0.0.1, all state under one folder.
#
#   infra/hpc/slurm-local.sh start     install (apt, once) + start; idempotent
#   infra/hpc/slurm-local.sh status    daemons, sinfo, squeue; exit 1 when not running
#   infra/hpc/slurm-local.sh stop      cancel every job, stop the daemons; idempotent
#   infra/hpc/slurm-local.sh env       print `export SLURM_CONF=...` (eval it in a shell)
#
# Environment: SLN_SLURM_DIR (state folder, default <project>/.slurm), SLN_SLURMCTLD_PORT
# and SLN_SLURMD_PORT (default 6817/6818; the test fixture picks free ones so it can run
# beside `make slurm`).
#
# Two partitions on the one node: `cpu` (default) and `gpu`. The node declares one
# stand-in `gpu` gres, so GPU worker jobs ask for `--gres=gpu:1` exactly as on a real
# cluster; with no CUDA device, torch on the worker falls back to the CPU.
#
# Exit codes: 0 ok, 1 not running (status) or a daemon failed to start, 3 Slurm is not
# installed and apt could not install it (the test skips on 3 only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
D="$(mkdir -p "${SLN_SLURM_DIR:-$ROOT/.slurm}" && cd "${SLN_SLURM_DIR:-$ROOT/.slurm}" && pwd)"
CTLD_PORT="${SLN_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${SLN_SLURMD_PORT:-6818}"
HOST="$(hostname -s)"
PACKAGES=(slurmctld slurmd slurm-client munge)
export SLURM_CONF="$D/slurm.conf"

log() { echo "slurm-local: $*" >&2; }

installed() {
    local bin
    for bin in slurmctld slurmd sbatch squeue scontrol scancel sinfo munged mungekey munge unmunge; do
        command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1 || return 1
    done
}

install() {
    export PATH="$PATH:/usr/sbin:/sbin"
    installed && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "Slurm is not installed and apt-get cannot run here (needs root on Debian):"
        log "  apt-get install ${PACKAGES[*]}"
        exit 3
    fi
    log "installing ${PACKAGES[*]} with apt (once)"
    local out="$D/apt.log"
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 "${PACKAGES[@]}"; } >"$out" 2>&1; then
        log "apt could not install Slurm; the last lines of $out:"
        tail -n 20 "$out" >&2
        exit 3
    fi
    installed || { log "apt finished but the Slurm commands are missing"; exit 3; }
}

pid_alive() { [ -f "$D/$1.pid" ] && kill -0 "$(cat "$D/$1.pid")" 2>/dev/null; }

node_state() { sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n 1; }

running() { pid_alive munged && pid_alive slurmctld && pid_alive slurmd; }

write_conf() {
    # Memory a little below what slurmd detects, or the node is drained as "Low RealMemory".
    local cpus mem
    cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')"
    mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
    mem=$((mem * 9 / 10))
    # One stand-in GPU: Slurm drops a file-less gpu gres, so /dev/null is its "device".
    # On a real GPU node: File=/dev/nvidia[0-3] or AutoDetect=nvml.
    cat >"$D/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/null
EOF
    cat >"$SLURM_CONF" <<EOF
# Written by infra/hpc/slurm-local.sh: one node, two partitions, loopback only.
ClusterName=sln
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge/sock
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
# No slurmdbd: completed jobs go to a text file (JobId, JobName, Partition, state).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.log
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
# Both partitions share the node: pending GPU jobs start first when a core frees.
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP PriorityTier=2
EOF
}

# A daemon in the foreground of its own session: we keep its PID (munged's own fork
# leaves zombies here) and a Ctrl-C in the caller's terminal does not reach it.
spawn() {
    local name="$1"
    shift
    setsid "$@" </dev/null >>"$D/log/$name.out" 2>&1 &
    echo $! >"$D/$name.pid"
}

wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local i
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "$what did not come up within ${seconds}s; logs in $D/log"
    tail -n 20 "$D/log/$what.log" "$D/log/$what.out" >&2 2>/dev/null || true
    return 1
}

munge_ok() { munge -S "$D/munge/sock" -n | unmunge -S "$D/munge/sock"; }

node_idle() { case "$(node_state)" in idle | mix | alloc) return 0 ;; *) return 1 ;; esac; }

failed() {
    stop_daemons
    log "not started: see the logs in $D/log"
    exit 1
}

start() {
    install
    if running && node_idle; then
        log "already running (SLURM_CONF=$SLURM_CONF)"
        return 0
    fi
    stop_daemons
    mkdir -p "$D/munge" "$D/state" "$D/spool" "$D/log" "$D/run"
    chmod 0700 "$D/state" "$D/spool"
    chmod 0755 "$D/munge"
    if [ ! -s "$D/munge/munge.key" ]; then
        mungekey -c -k "$D/munge/munge.key"
    fi
    chmod 0400 "$D/munge/munge.key"
    write_conf
    spawn munged munged -F --force -S "$D/munge/sock" --key-file="$D/munge/munge.key" \
        --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" \
        --seed-file="$D/munge/munged.seed"
    wait_for munged 10 munge_ok || failed
    # -c: a fresh controller state (jobs of an earlier run were cancelled by `stop`).
    spawn slurmctld slurmctld -D -c -f "$SLURM_CONF"
    wait_for slurmctld 20 scontrol ping || failed
    spawn slurmd slurmd -D -c -f "$SLURM_CONF"
    wait_for slurmd 30 node_idle || failed
    log "up: node $HOST, partitions cpu (default) and gpu, state in $D"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_daemons() {
    local name pid i
    for name in slurmd slurmctld munged; do
        pid_alive "$name" || { rm -f "$D/$name.pid"; continue; }
        pid="$(cat "$D/$name.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        rm -f "$D/$name.pid"
    done
}

stop() {
    if running; then
        # Job processes (slurmstepd and the workers) outlive slurmd: cancel them first.
        scancel --full --user "$(id -un)" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_daemons
    log "stopped"
}

status() {
    if ! running; then
        log "not running (state in $D)"
        return 1
    fi
    echo "SLURM_CONF=$SLURM_CONF"
    for name in munged slurmctld slurmd; do echo "$name pid $(cat "$D/$name.pid")"; done
    sinfo
    squeue
}

case "${1:-status}" in
start) start ;;
stop) stop ;;
status) status ;;
env) echo "export SLURM_CONF=$SLURM_CONF" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
