#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm tests and for trying hydra/launcher=slurm by hand:
#   scripts/local_cluster.sh up       install (Debian's slurm-wlm, munge, slurmdbd, mariadb-server) and start
#   scripts/local_cluster.sh down     stop every daemon it started
#   scripts/local_cluster.sh status   sinfo and the daemons' pids
# Needs root (it installs packages and writes /etc/slurm). This host is the controller and the compute node,
# with its real CPU count and memory (slurmd -C): partition `debug`, the default. A second slurmd on this host
# (slurmd -N, its own port) is a second node with the same CPUs, so that partition `multinode` (both nodes)
# can run a 2-node job here. Jobs may be requeued (JobRequeue=1). Accounting goes through slurmdbd into MariaDB (root over its Unix socket, no password), so
# sacct answers: submitit polls it for job states, and the tests read each job's record (and its requeues) there.
# Daemons run as root, started directly (no systemd); their logs and state are in $CLUSTER_DIR.
set -euo pipefail

CLUSTER_DIR="${CLUSTER_DIR:-/var/tmp/cifar-lightning-cluster}"
CONF_DIR=/etc/slurm

log() { echo "local_cluster: $*"; }

install_packages() {
    local missing=()
    for program in slurmctld slurmd slurmdbd munged mariadbd; do
        command -v "$program" >/dev/null || missing+=("$program")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing slurm-wlm, slurmdbd, munge and mariadb-server (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge >/dev/null  # the credential round trip every daemon relies on
}

start_mariadb() {
    install -d -o mysql -g mysql /run/mysqld
    if ! pgrep -x mariadbd >/dev/null; then
        runuser -u mysql -- /usr/sbin/mariadbd --skip-networking --pid-file=/run/mysqld/mysqld.pid \
            >"$CLUSTER_DIR/mariadb.log" 2>&1 &
    fi
    for _ in $(seq 60); do mariadb -e "select 1" >/dev/null 2>&1 && return; sleep 0.5; done
    log "MariaDB did not start: $CLUSTER_DIR/mariadb.log" && exit 1
}

write_config() {
    local node host
    node="$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')"  # CPUs=.. Boards=.. ... RealMemory=..
    host="$(hostname -s)"
    mkdir -p "$CONF_DIR" "$CLUSTER_DIR/state"
    cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by cifar-lightning's scripts/local_cluster.sh: a cluster on $host alone.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobRequeue=1
EnforcePartLimits=ALL
ReturnToService=2
KillWait=10
MinJobAge=600
StateSaveLocation=$CLUSTER_DIR/state
SlurmdSpoolDir=$CLUSTER_DIR/spool-%n
SlurmctldPidFile=$CLUSTER_DIR/slurmctld.pid
SlurmdPidFile=$CLUSTER_DIR/slurmd-%n.pid
SlurmctldLogFile=$CLUSTER_DIR/slurmctld.log
SlurmdLogFile=$CLUSTER_DIR/slurmd-%n.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=$host Port=17001 $node State=UNKNOWN
NodeName=$host-2 NodeHostname=$host Port=17002 $node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=multinode Nodes=$host,$host-2 MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by cifar-lightning's scripts/local_cluster.sh: accounting in the local MariaDB, as root.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$CLUSTER_DIR/slurmdbd.pid
LogFile=$CLUSTER_DIR/slurmdbd.log
EOF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

wait_for() {  # wait_for <what> <command...>: up to 30 s
    local what="$1"
    shift
    for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return; sleep 0.5; done
    log "$what did not come up; logs in $CLUSTER_DIR" && exit 1
}

up() {
    install_packages
    mkdir -p "$CLUSTER_DIR"
    start_munge
    start_mariadb
    write_config
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for slurmdbd sacctmgr -n list cluster
    sacctmgr -i -Q add cluster local >/dev/null 2>&1 || true  # present once; slurmctld then registers
    pgrep -x slurmctld >/dev/null || slurmctld
    wait_for slurmctld scontrol ping
    if ! pgrep -x slurmd >/dev/null; then
        slurmd -N "$(hostname -s)"
        slurmd -N "$(hostname -s)-2"
    fi
    wait_for "the nodes" bash -c "[ \"\$(sinfo -h -N -o '%N %t' | sort -u | grep -cE ' (idle|mix|alloc)$')\" = 2 ]"
    log "up: $(sinfo -h -o '%P %D node(s), %c CPUs, %m MB each' | paste -sd ';')"
}

stop() {  # stop <daemon>: TERM, then KILL after 15 s
    pgrep -x "$1" >/dev/null || return 0
    pkill -x "$1" || true
    for _ in $(seq 30); do pgrep -x "$1" >/dev/null || return 0; sleep 0.5; done
    pkill -9 -x "$1" || true
}

down() {
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop "$daemon"; done
    log "down"
}

status() {
    sinfo || true
    for daemon in munged mariadbd slurmdbd slurmctld slurmd; do echo "$daemon: $(pgrep -x "$daemon" || echo stopped)"; done
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 up|down|status" >&2 && exit 2 ;;
esac
