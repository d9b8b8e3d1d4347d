#!/usr/bin/env bash
# slurm-down.sh - undo scripts/slurm-up.sh: end every job, stop every slurmd, slurmctld and the
# munged slurm-up.sh started (each by its pid file, never by name), remove the jrn<K> network
# namespaces, their veths and the 10.231.0.1 address, and delete the job state, spool
# directories, logs and the generated configs, so that the next slurm-up.sh starts from
# nothing but the installed packages.
#
#   bash scripts/slurm-down.sh [--uninstall]
#
# --uninstall also purges the packages slurm-up.sh installs. Idempotent; runs as root without
# standard input. A Slurm this script did not set up (a slurm.conf without slurm-up.sh's
# marker) is left alone.
set -uo pipefail
exec </dev/null
export DEBIAN_FRONTEND=noninteractive

UNINSTALL=0
case ${1:-} in
  "") ;;
  --uninstall) UNINSTALL=1 ;;
  -h|--help) echo "usage: bash scripts/slurm-down.sh [--uninstall]"; exit 0 ;;
  *) echo "slurm-down.sh: unknown argument '$1'" >&2; echo "usage: bash scripts/slurm-down.sh [--uninstall]" >&2; exit 2 ;;
esac

SCRIPT=slurm-down
# shellcheck source=scripts/slurm-lib.sh
. "$(dirname "$0")/slurm-lib.sh"
[ "$(id -u)" = 0 ] || die "run as root: this script stops daemons and removes network namespaces"
if [ -e "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
  die "$CONF was not written by slurm-up.sh; not touching this Slurm"
fi
take_lock

# 1. jobs first, while slurmctld and the slurmds can still signal them (KillWait is 5 s)
if pid_alive "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086  # a list of job ids
    scancel $jobs 2>/dev/null
    wait_for 20 bash -c '[ -z "$(squeue -h -t PD,R,CG,CF,S -o %A)" ]' \
      || log "jobs still listed after 20 s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
  fi
fi

# 2. the daemons, by pid file
stop_slurm
if [ -e "$RUN/munged.ours" ]; then
  stop_pidfiles munged /run/munge/munged.pid
  rm -f "$RUN/munged.ours"
fi

# 3. job steps whose slurmd died before it could end them (their socket is in one of our
#    spool directories), then every process left in one of our nodes' job cgroups
for p in $(pgrep -x slurmstepd 2>/dev/null); do
  if [[ $(ls -l "/proc/$p/fd" 2>/dev/null) == *" $STATE/slurmd.node"* ]]; then
    log "ending leftover $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)(pid $p)"
    kill -9 "$p" 2>/dev/null
  fi
done
for dir in /sys/fs/cgroup/*/slurm_node*; do
  [ -d "$dir" ] || continue
  for f in $(find "$dir" -name cgroup.procs 2>/dev/null); do
    for p in $(cat "$f" 2>/dev/null); do
      log "ending leftover job process $p ($(cat "/proc/$p/comm" 2>/dev/null)) in ${f%/cgroup.procs}"
      kill -9 "$p" 2>/dev/null
    done
  done
  # deepest first: a cgroup can only be removed once it has no children
  find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# 4. the network namespaces of node2..nodeN, and the host side
remove_netns 0
restore_host_network

# 5. state, logs and the generated configs
rm -rf "$STATE/slurmctld" "$STATE"/slurmd.* "$LOGS" "$RUN"
for f in "$CONF" "$CGROUP_CONF"; do
  [ -e "$f" ] && grep -qxF "$MARKER" "$f" && rm -f "$f"
done
log "removed job state, logs and configs"

if [ "$UNINSTALL" = 1 ]; then
  apt-get purge -y -qq slurm-wlm slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge >/dev/null 2>&1
  apt-get autoremove -y -qq --purge >/dev/null 2>&1
  log "packages purged"
fi
log "down"
exit 0
