#!/usr/bin/env bash
# A one-node Slurm on this machine for fmpipe's job-array test: munged, slurmctld, slurmd.
#
#   bash scripts/slurm/local-cluster.sh start    # install if missing (Debian), start, wait until idle
#   bash scripts/slurm/local-cluster.sh status   # daemons, node state, queue
#   bash scripts/slurm/local-cluster.sh env      # prints: export SLURM_CONF=...
#   bash scripts/slurm/local-cluster.sh stop     # cancel jobs, stop exactly what start started
#
# Everything lives in one state folder it owns: $FMPIPE_SLURM_DIR (default ${TMPDIR:-/tmp}/fmpipe-slurm):
# munge key and socket, slurm.conf, spool and state folders, logs, and the PID of each daemon as
# recorded when it was launched. Nothing in /etc is changed; clients find the cluster through
# SLURM_CONF=<state>/slurm.conf (the test sets it itself). Ports: $FMPIPE_SLURM_PORT (default 16817)
# for slurmctld and the next one for slurmd, away from a system Slurm's 6817/6818.
# Plugins: proctrack/linuxproc and task/none (no cgroups needed); CPUs = nproc with OverSubscribe
# so a 4-task array runs at once even on 2 cores. Jobs run as the submitting user (root here).
# stop never kills by name: it signals the recorded PIDs (after checking each is still the program
# it launched) and then any leftover process carrying this cluster's marker in its environment
# (slurmstepd and what it started), which only processes started by this script inherit.
set -euo pipefail

STATE="${FMPIPE_SLURM_DIR:-${TMPDIR:-/tmp}/fmpipe-slurm}"
PORT="${FMPIPE_SLURM_PORT:-16817}"
CONF="$STATE/slurm.conf"
MARK="FMPIPE_LOCAL_SLURM=$STATE"
DAEMONS=(munged slurmctld slurmd)

log() { printf 'local-cluster: %s\n' "$*" >&2; }

pid_of() { # recorded PID of a daemon, if that process is still the same program
    local name=$1 pid
    [[ -f "$STATE/$name.pid" ]] || return 1
    pid=$(<"$STATE/$name.pid")
    [[ -r "/proc/$pid/environ" ]] || return 1
    grep -qzx -- "$MARK" "/proc/$pid/environ" 2>/dev/null || return 1
    echo "$pid"
}

install_if_missing() {
    local missing=0 tool
    for tool in munged slurmctld slurmd sbatch squeue; do
        command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing=1
    done
    (( missing )) || return 0
    [[ $(id -u) -eq 0 ]] || { log "Slurm/munge are not installed; as root run: apt-get install slurmctld slurmd slurm-client munge"; exit 2; }
    log "installing slurmctld slurmd slurm-client munge (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    cat >"$CONF" <<CONF
# Written by scripts/slurm/local-cluster.sh; deleted by its stop.
ClusterName=fmpipe-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pidfile
SlurmdPidFile=$STATE/slurmd.pidfile
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
KillWait=5
MinJobAge=600
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

launch() { # launch NAME CMD...: run in its own session with the marker; record its PID
    local name=$1; shift
    env "$MARK" SLURM_CONF="$CONF" setsid "$@" </dev/null >>"$STATE/$name.out" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...: poll until CMD succeeds
    local limit=$1 what=$2; shift 2
    local t
    for ((t = 0; t < limit * 4; t++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    log "timed out after ${limit}s waiting for $what; logs in $STATE"
    return 1
}

node_idle() { SLURM_CONF="$CONF" sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

start() {
    if pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null && pid_of munged >/dev/null; then
        log "already running (state in $STATE)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    stop_daemons  # a half-started cluster from before
    install_if_missing
    export PATH="$PATH:/usr/sbin:/sbin"
    rm -rf "$STATE"
    mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
    chmod 700 "$STATE"
    dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge.key"
    write_config
    launch munged munged --foreground --force --key-file="$STATE/munge.key" --socket="$STATE/munge.socket" \
        --pid-file="$STATE/munge/munged.pidfile" --log-file="$STATE/munged.log" --seed-file="$STATE/munge/seed"
    wait_for 20 munged munge -s x -S "$STATE/munge.socket"
    launch slurmctld slurmctld -D -c -f "$CONF"
    launch slurmd slurmd -D -f "$CONF" -N "$(hostname -s)"
    if ! wait_for 60 "the node to become idle" node_idle; then
        SLURM_CONF="$CONF" sinfo -N -l >&2 || true
        tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
        exit 1
    fi
    log "one-node Slurm up: $(nproc) CPUs, partition 'local'; state in $STATE"
    echo "export SLURM_CONF=$CONF"
}

cancel_jobs() {
    pid_of slurmctld >/dev/null || return 0
    local jobs
    jobs=$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    [[ -n "${jobs// /}" ]] || return 0
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
    wait_for 30 "jobs to end" bash -c "[[ -z \$(SLURM_CONF='$CONF' squeue -h 2>/dev/null) ]]" || true
}

stop_pid() { # stop_pid PID: TERM, wait up to 10 s, then KILL
    local pid=$1 t
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((t = 0; t < 40; t++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
}

marked_pids() { # processes whose environment carries this cluster's marker
    local env pid
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}; pid=${pid%/environ}
        [[ "$pid" != "$$" && "$pid" != "$BASHPID" ]] || continue
        grep -qzx -- "$MARK" "$env" 2>/dev/null && echo "$pid"
    done
    return 0
}

stop_daemons() {
    local name pid
    for name in slurmd slurmctld munged; do  # reverse start order
        if pid=$(pid_of "$name"); then
            log "stopping $name (pid $pid)"
            stop_pid "$pid"
        fi
        rm -f "$STATE/$name.pid"
    done
    for pid in $(marked_pids); do
        log "stopping leftover pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true))"
        stop_pid "$pid"
    done
}

stop() {
    [[ -d "$STATE" ]] || { log "not running (no $STATE)"; return 0; }
    cancel_jobs
    stop_daemons
    local left
    left=$(marked_pids)
    if [[ -n "$left" ]]; then
        log "still running after stop: $left"
        exit 1
    fi
    rm -rf "$STATE"
    log "stopped; nothing left running"
}

status() {
    local name pid up=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$name"); then
            echo "$name running (pid $pid)"; up=$((up + 1))
        else
            echo "$name not running"
        fi
    done
    ((up == ${#DAEMONS[@]})) || return 3
    echo "export SLURM_CONF=$CONF"
    SLURM_CONF="$CONF" sinfo
    SLURM_CONF="$CONF" squeue
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
