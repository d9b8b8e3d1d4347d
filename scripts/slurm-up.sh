#!/usr/bin/env bash
# slurm-up.sh - bring a Debian machine from nothing to a working Slurm cluster on this one
# machine, for trying and testing juliarun_aio's Slurm support.
#
#   bash scripts/slurm-up.sh [--nodes N] [--cpus N] [--proctrack auto|cgroup|linuxproc] [--fresh]
#
# Runs as root, without systemd and without standard input. Installs munge and Slurm from
# Debian's packages, writes /etc/slurm/slurm.conf and cgroup.conf, and starts munged,
# slurmctld and one slurmd per node:
#   - node1 runs in this machine's network namespace; with --nodes 1 everything is on
#     127.0.0.1;
#   - with --nodes N > 1, node2..nodeN each run in a network namespace of their own
#     (jrn<K>, address 10.231.<K>.2, a veth pair jrh<K>/jrc<K> to this machine), node1 and
#     slurmctld are reached at 10.231.0.1 (an address added to lo), so every node reaches
#     every other one and jobs on different nodes really talk over the network. All nodes
#     share the file system, as a cluster with a shared mount does.
#
# Idempotent: a second run leaves running daemons and their jobs alone; a changed setting
# restarts the daemons, keeping job state. --fresh forgets every earlier job (job ids start
# again at 1). The settings a JuliaRun server relies on:
#   - node names node1..nodeN, never "localhost" (Slurm 22.05 maps any name to a node called
#     localhost, and a second node then fails with "Duplicated NodeHostName");
#   - select/cons_tres with CR_Core_Memory and DefMemPerCPU, so --cpus-per-task and --mem are
#     what a job gets (without a default every job claims a whole node's memory);
#   - each node advertises --cpus CPUs (default 16, config_overrides) so many small jobs fit
#     on a small machine;
#   - proctrack/cgroup + task/cgroup on cgroup v1 where that works (scancel then ends
#     double-forked children and --mem is enforced), else proctrack/linuxproc;
#   - jobcomp/filetxt, so `sacct -c` reports jobs that have left squeue;
#   - the scheduler runs at once on submit (batch_sched_delay=0,sched_min_interval=0);
#   - finished jobs stay in squeue for MinJobAge=300 s, long enough to read their final
#     state; a node that stops answering is DOWN after SlurmdTimeout=30 s.
#
# scripts/slurm-down.sh undoes all of this.
set -euo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive

NODES=1
CPUS=16
PROCTRACK=auto
FRESH=0
usage() {
  echo "usage: bash scripts/slurm-up.sh [--nodes N] [--cpus N] [--proctrack auto|cgroup|linuxproc] [--fresh]"
}
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) NODES=${2:-}; shift 2 ;;
    --nodes=*) NODES=${1#*=}; shift ;;
    --cpus) CPUS=${2:-}; shift 2 ;;
    --cpus=*) CPUS=${1#*=}; shift ;;
    --proctrack) PROCTRACK=${2:-}; shift 2 ;;
    --proctrack=*) PROCTRACK=${1#*=}; shift ;;
    --fresh) FRESH=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "slurm-up.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[[ $NODES =~ ^[1-9][0-9]?$ ]] && [ "$NODES" -le 50 ] || { echo "slurm-up.sh: --nodes takes 1..50, not '$NODES'" >&2; exit 2; }
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || { echo "slurm-up.sh: --cpus takes a positive number, not '$CPUS'" >&2; exit 2; }
case $PROCTRACK in auto|cgroup|linuxproc) ;; *) echo "slurm-up.sh: --proctrack takes auto, cgroup or linuxproc" >&2; exit 2 ;; esac

SCRIPT=slurm-up
# shellcheck source=scripts/slurm-lib.sh
. "$(dirname "$0")/slurm-lib.sh"
CTLD_ADDR=127.0.0.1
[ "$NODES" -gt 1 ] && CTLD_ADDR=10.231.0.1
MEM_MB=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
[ "$(id -u)" = 0 ] || die "run as root: this script installs packages and starts daemons"
take_lock

# ---------------------------------------------------------------------------- refuse others'
if [ -e "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
  die "$CONF exists and was not written by this script; this script only manages a Slurm it set up (move that file away to use it)"
fi

# ---------------------------------------------------------------------------- packages
PKGS="munge slurm-wlm slurm-client iproute2 util-linux"
MISSING=""
for p in $PKGS; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  log "installing:$MISSING"
  # Keep the packages' maintainer scripts from starting daemons with the packaged config.
  POLICY_RC=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; POLICY_RC=1
  fi
  trap '[ "$POLICY_RC" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  timeout 600 apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086  # a list of package names
  timeout 900 apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold $MISSING >/dev/null \
    || die "apt-get install$MISSING failed"
  [ "$POLICY_RC" = 1 ] && rm -f /usr/sbin/policy-rc.d
  POLICY_RC=0
  log "installed"
fi
VERSION=$(slurmctld -V)
# On a systemd machine the packaged units may run with the packaged config: this script runs
# the Slurm daemons itself (a munged under systemd is reused).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl stop slurmd slurmctld >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge "$RUN"
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
munge_ok() { munge -n | unmunge; }
# (a dead munged's socket makes `munge -n` retry for seconds: look at the pid file first)
if ! pid_alive /run/munge/munged.pid munged || ! munge_ok >/dev/null 2>&1; then
  # --force: a munged that was killed leaves its socket behind
  runuser -u munge -- /usr/sbin/munged --force 9>&- || die "munged did not start"
  wait_for 10 munge_ok || die "munged started but does not answer"
  touch "$RUN/munged.ours"
  log "munged started (pid $(cat /run/munge/munged.pid))"
fi

# ---------------------------------------------------------------------------- network namespaces
if [ "$NODES" -gt 1 ]; then
  # (no `| grep -q` under pipefail: grep ending early can fail the pipeline with SIGPIPE)
  [[ $(ip addr show dev lo) == *" 10.231.0.1/"* ]] || ip addr add 10.231.0.1/32 dev lo
  [ -e "$FORWARD_SAVED" ] || cat /proc/sys/net/ipv4/ip_forward >"$FORWARD_SAVED"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  for k in $(seq 2 "$NODES"); do
    ns=jrn$k
    if [ -e "/run/netns/$ns" ] && ip link show "jrh$k" >/dev/null 2>&1 \
        && [[ $(ip -n "$ns" addr show dev "jrc$k" 2>/dev/null) == *" 10.231.$k.2/"* ]]; then
      continue
    fi
    # a slurmd left in a broken namespace would keep it alive, unreachable: stop it first
    stop_pidfiles slurmd "$RUN/slurmd.node$k.pid"
    ip link del "jrh$k" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip link add "jrh$k" type veth peer name "jrc$k"
    ip link set "jrc$k" netns "$ns"
    ip addr add "10.231.$k.1/24" dev "jrh$k"
    ip link set "jrh$k" up
    ip -n "$ns" addr add "10.231.$k.2/24" dev "jrc$k"
    ip -n "$ns" link set "jrc$k" up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "10.231.$k.1"
    log "netns $ns up: node$k at 10.231.$k.2"
  done
fi

# ---------------------------------------------------------------------------- config
mkdir -p "$STATE/slurmctld" "$LOGS"
if [ "$PROCTRACK" = auto ]; then
  if [ -d /sys/fs/cgroup/freezer ] && [ -d /sys/fs/cgroup/memory ]; then PROCTRACK=cgroup; else PROCTRACK=linuxproc; fi
fi
node_addr() { if [ "$1" = 1 ]; then echo "$CTLD_ADDR"; else echo "10.231.$1.2"; fi; }

write_conf() { # write_conf cgroup|linuxproc: writes $CONF.new and $CGROUP_CONF.new
  local task=task/none k
  [ "$1" = cgroup ] && task=task/cgroup
  {
    echo "$MARKER"
    cat <<EOF
# $NODES node(s) on this machine, $CPUS CPUs each, proctrack/$1
ClusterName=juliarun
SlurmctldHost=localhost($CTLD_ADDR)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd.%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.%n.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/$1
TaskPlugin=$task
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
SlurmdTimeout=30
KillWait=5
EOF
    for k in $(seq 1 "$NODES"); do
      echo "NodeName=node$k NodeHostname=node$k NodeAddr=$(node_addr "$k") CPUs=$CPUS RealMemory=$(( MEM_MB / NODES )) State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF.new"
  {
    echo "$MARKER"
    echo "CgroupPlugin=cgroup/v1"
    echo "ConstrainCores=no"
    echo "ConstrainRAMSpace=yes"
  } >"$CGROUP_CONF.new"
}
install_conf() { # install_conf: move the new files in place; 0 when something changed
  local changed=1 f
  for f in "$CONF" "$CGROUP_CONF"; do
    if cmp -s "$f.new" "$f"; then rm -f "$f.new"; else mv "$f.new" "$f"; changed=0; fi
  done
  return $changed
}

nodes_usable() {
  [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated|completing)$')" -ge "$NODES" ]
}
start_slurm() {
  local k n
  if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
    if [ "$FRESH" = 1 ]; then /usr/sbin/slurmctld -c 9>&- || die "slurmctld did not start"
    else /usr/sbin/slurmctld 9>&- || die "slurmctld did not start"; fi
    wait_for 30 bash -c '[[ $(scontrol ping) == *UP* ]]' || die "slurmctld does not answer"
    log "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
  fi
  for k in $(seq 1 "$NODES"); do
    n=node$k
    pid_alive "$RUN/slurmd.$n.pid" slurmd && continue
    mkdir -p "$STATE/slurmd.$n"
    # 9>&-: the daemons must not inherit the lock. nsenter, not `ip netns exec`: that one
    # remounts /sys and so hides the cgroup hierarchies
    if [ "$k" = 1 ]; then /usr/sbin/slurmd -N "$n" 9>&- || die "slurmd $n did not start"
    else nsenter --net="/run/netns/jrn$k" /usr/sbin/slurmd -N "$n" 9>&- || die "slurmd $n did not start"; fi
    wait_for 10 pid_alive "$RUN/slurmd.$n.pid" slurmd || die "slurmd $n did not start"
    log "slurmd $n started (pid $(cat "$RUN/slurmd.$n.pid"))"
  done
  local deadline=$(( $(date +%s) + 30 ))
  until nodes_usable; do
    # ReturnToService=2 brings nodes back when they register; a node set DOWN or DRAIN by
    # hand (or by an earlier fault test) needs a resume.
    for n in $(sinfo -h -N -t down,drain,drained,fail -o '%N' 2>/dev/null); do
      scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
    done
    [ "$(date +%s)" -lt "$deadline" ] || die "nodes not usable after 30 s: $(sinfo -h -N -o '%N %T %E' | tr '\n' ';')"
    sleep 0.1
  done
}

# smoke: one task on each node, each saying where it ran (all nodes share one hostname)
smoke() {
  [ "$(timeout 60 srun -N"$NODES" -n"$NODES" --ntasks-per-node=1 -J slurm-up-smoke printenv SLURMD_NODENAME 2>/dev/null | sort -u | wc -l)" = "$NODES" ]
}

if [ "$FRESH" = 1 ]; then
  # end the old jobs while slurmctld can still reach them, then forget them and their records
  if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    squeue -h -o %A 2>/dev/null | sort -u | xargs -r scancel 2>/dev/null || true
    wait_for 15 bash -c '[ -z "$(squeue -h -t PD,R,CG,CF,S -o %A)" ]' || true
  fi
  stop_slurm
  rm -rf "${STATE:?}"/slurmctld/* "$STATE"/slurmd.* "$LOGS/jobcomp.log"
  log "forgot earlier jobs"
fi
write_conf "$PROCTRACK"
if install_conf; then
  log "wrote $CONF: $NODES node(s) x $CPUS CPUs, proctrack/$PROCTRACK"
  stop_slurm
fi
for f in "$RUN"/slurmd.node*.pid; do  # nodes beyond --nodes, from an earlier run
  [ -e "$f" ] || continue
  n=${f#"$RUN"/slurmd.node}; n=${n%.pid}
  if [ "$n" -gt "$NODES" ]; then stop_pidfiles slurmd "$f"; fi
done
remove_netns "$NODES"
if [ "$NODES" = 1 ]; then restore_host_network; fi
start_slurm

if ! smoke; then
  [ "$PROCTRACK" = cgroup ] || die "a one-task srun on each node failed"
  log "srun failed with proctrack/cgroup; falling back to proctrack/linuxproc"
  PROCTRACK=linuxproc
  write_conf linuxproc
  install_conf || true
  stop_slurm
  start_slurm
  smoke || die "a one-task srun on each node failed with proctrack/linuxproc too"
fi
log "READY: $VERSION, $NODES node(s) [$(sinfo -h -N -o '%N=%T' | sort -u | tr '\n' ' ' | sed 's/ $//')], proctrack/$(sed -n 's/^ProctrackType=proctrack\///p' "$CONF")"
