#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, with accounting (sacct), for tests and demos.
#
#   slurm/local-cluster.sh up       install (Debian packages) if needed, start, wait for an idle node
#   slurm/local-cluster.sh down     stop the daemons this script started (by PID)
#   slurm/local-cluster.sh status   print the daemons and sinfo
#
# Needs root (it writes /etc/slurm/slurm.conf). State lives in $STABILITY_SLURM_DIR
# (default /var/tmp/stability-slurm): munge socket, a private MariaDB, Slurm spool and logs.
# Why it is built this way (the facts it follows): docs/slurm.md.
set -euo pipefail

DIR=${STABILITY_SLURM_DIR:-/var/tmp/stability-slurm}
CONF_DIR=/etc/slurm
HOST=$(hostname -s)
DB_SOCK=$DIR/mysql/mysqld.sock
PIDS=$DIR/pids

log() { echo "[local-cluster] $*" >&2; }

alive() {  # PID file -> true if that process runs (zombies count as dead)
  local f=$PIDS/$1.pid pid state
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
  [ "$state" != Z ]
}

wait_for() {  # seconds, description, command...
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  while [ $SECONDS -lt $deadline ]; do
    if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what"
  return 1
}

install_packages() {
  local need=()
  for bin in slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-client munged:munge \
             slurmdbd:slurmdbd mariadbd:mariadb-server; do
    # slurmctld and slurmd both come from slurm-wlm: name each package once
    command -v "${bin%%:*}" >/dev/null 2>&1 || [[ " ${need[*]-} " == *" ${bin##*:} "* ]] || need+=("${bin##*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]} (apt-get)"
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e $policy ]; then  # keep postinst scripts from starting services
    printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy && made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm slurm-client munge slurmdbd mariadb-server >/dev/null
  [ $made_policy = 1 ] && rm -f $policy
  return 0
}

write_configs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$CONF_DIR" "$DIR"/{spool/ctld,spool/d,log,mysql,munge} "$PIDS"
  cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by stability's slurm/local-cluster.sh: a one-node cluster on this machine.
ClusterName=stability
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MailProg=/bin/true
JobRequeue=1
KillWait=10
MinJobAge=300
MaxArraySize=1001
DefMemPerCPU=2048
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  cat > "$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=stability_slurm_acct
StorageUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munge() {
  alive munged && return 0
  # Slurm's clients look for munge at its default socket, /run/munge/munge.socket.2.
  mkdir -p /run/munge && chown munge /run/munge "$DIR/munge"
  [ -f /etc/munge/munge.key ] || { mungekey -c 2>/dev/null || /usr/sbin/create-munge-key -f; }
  rm -f "$DIR/munge/munged.pid"
  runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --force
  wait_for 10 munged test -s "$DIR/munge/munged.pid"
  cp "$DIR/munge/munged.pid" "$PIDS/munged.pid"
  wait_for 10 "munge credentials" bash -c "munge -n | unmunge"
}

start_mariadb() {
  alive mariadbd && return 0
  chown -R mysql "$DIR/mysql"
  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    runuser -u mysql -- mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" \
      --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1
  fi
  runuser -u mysql -- mariadbd --no-defaults --datadir="$DIR/mysql/data" --skip-networking \
    --socket="$DB_SOCK" --pid-file="$DIR/mysql/mariadbd.pid" --innodb-buffer-pool-size=64M \
    --innodb-use-native-aio=0 --log-error="$DIR/mysql/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb-admin --socket="$DB_SOCK" ping
  cp "$DIR/mysql/mariadbd.pid" "$PIDS/mariadbd.pid"
}

start_daemon() {  # name, command... (daemons that fork: their own pid file is the truth)
  local name=$1
  shift
  alive "$name" && return 0
  rm -f "$DIR/$name.pid"
  "$@"
  wait_for 15 "$name pid file" test -s "$DIR/$name.pid"
  cp "$DIR/$name.pid" "$PIDS/$name.pid"
}

up() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
  install_packages
  write_configs
  start_munge
  start_mariadb
  MYSQL_UNIX_PORT=$DB_SOCK start_daemon slurmdbd /usr/sbin/slurmdbd
  wait_for 30 slurmdbd sacctmgr -i list cluster
  start_daemon slurmctld /usr/sbin/slurmctld
  start_daemon slurmd /usr/sbin/slurmd
  wait_for 60 "an idle node" bash -c "sinfo -h -N -o %t | grep -qx idle"
  wait_for 30 "accounting" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx stability"
  log "up: $(sinfo -h -N -o '%N %t %c CPUs') (state in $DIR)"
}

down() {
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    if alive "$name"; then
      kill "$(cat "$PIDS/$name.pid")" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$name" || break; sleep 0.2; done
      alive "$name" && kill -9 "$(cat "$PIDS/$name.pid")" 2>/dev/null || true
      log "stopped $name"
    fi
    rm -f "$PIDS/$name.pid"
  done
}

status() {
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name: stopped"; fi
  done
  alive slurmctld && sinfo
  return 0
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
