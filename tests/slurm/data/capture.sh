#!/usr/bin/env bash
# capture.sh - record the real Slurm outputs the unit tests in tests/slurm parse.
#
#   bash tests/slurm/data/capture.sh   # as root, on a cluster from scripts/slurm-up.sh --nodes 3
#
# Runs jobs that end in every state this cluster can produce (completed, failed, killed by a
# signal, cancelled while pending and while running, time limit, out of memory, node failure,
# requeued, suspended, held, past its deadline, waiting for resources / a dependency / a begin
# time / a down node, completing while ignoring SIGTERM, on three nodes), then writes the
# exact output of the commands juliarun_aio.server._slurm_cli runs (same options, same
# formats) into this folder. Takes about two minutes: the time limit and the node failure
# need Slurm's own timers. Kills node3's slurmd on the way, and brings it back with scripts/slurm-up.sh.
set -euo pipefail
exec </dev/null
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
WORK=$(mktemp -d /tmp/jr-capture.XXXXXX)
cleanup() {  # every capture job ends, node3 comes back
  squeue --noheader --me --format=%A --states=PD,R,S,CG,CF | sort -u | xargs -r scancel
  bash "$ROOT/scripts/slurm-up.sh" --nodes 3 >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
D=$'\x1f'
SQUEUE_FORMAT="JobID:$D,State:$D,Reason:$D,NodeList:$D,exit_code:$D,Name:$D"
SACCT_FORMAT="JobID,State,ExitCode,NodeList,JobName"
UID16=0123456789abcdef
name() { echo "jr.capture.$1.$UID16.${2:-master}"; }
sub() { # sub SCENARIO [SLOT] SBATCH-ARGS... -- prints the job id
  local scn=$1 slot=$2; shift 2
  sbatch --parsable --job-name="$(name "$scn" "$slot")" --output=/dev/null --no-requeue "$@"
}
squeue_now() {  # this run's jobs (earlier runs' stay listed for MinJobAge)
  squeue --noheader --me --states=all --Format="$SQUEUE_FORMAT" \
    | awk -F "$D" -v first="$FIRST" '$1 >= first && $6 ~ /^jr\.capture\./' || true
}
state_of() { squeue --noheader --jobs="$1" --states=all --Format=State: | tr -d ' '; }
wait_state() { # wait_state JOBID STATE SECONDS
  local deadline=$(( $(date +%s) + $3 ))
  until [ "$(state_of "$1")" = "$2" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "job $1 not $2 after $3 s: $(state_of "$1")" >&2; return 1; }
    sleep 0.2
  done
}

sbatch --parsable --job-name="$(name parsable)" --output=/dev/null --wrap true >"$HERE/sbatch-parsable.txt"
FIRST=$(cut -d';' -f1 "$HERE/sbatch-parsable.txt")

# the data-directory probe: each node reads a file this machine wrote (first: the jobs below
# fill node1)
echo probe-content >"$WORK/probe"
srun --nodes=3 --ntasks-per-node=1 --job-name="$(name probe)" --chdir=/ --immediate=60 --quiet \
  sh -c 'c=$(head -n 1 -- "$1" 2>/dev/null) || c=; printf "%s\037%s\n" "$SLURMD_NODENAME" "$c"' sh "$WORK/probe" >"$HERE/srun-probe.txt"

done_id=$(sub done master --wrap 'exit 0')
fail_id=$(sub fail master --wrap 'exit 7')
signal_id=$(sub signal master --wrap 'kill -9 $$')
oom_id=$(sub oom master --mem=64M --wrap 'python3 -c "b = bytearray(1 << 30); print(len(b))"')
timeout_id=$(sub timeout master --time=1 --wrap 'sleep 600')
multi_id=$(sub multi master --nodes=3 --ntasks-per-node=1 --wrap 'srun sleep 600')
held_id=$(sub held master --hold --wrap true)
begin_id=$(sub begin master --begin=now+3600 --wrap true)
hog_id=$(sub hog master --nodelist=node1 --mem=6000M --wrap 'sleep 600')
resources_id=$(sub resources master --nodelist=node1 --mem=6000M --wrap true)
dependency_id=$(sub dependency master --dependency=afterok:"$timeout_id" --wrap true)
never_id=$(sub never master --dependency=afterok:"$fail_id" --wrap true)
cancelrun_id=$(sub cancel-running master --wrap 'sleep 600')
cancelpend_id=$(sub cancel-pending master --hold --wrap true)
trap_id=$(sub completing master --wrap 'trap "" TERM; sleep 600 & wait; sleep 600')
suspend_id=$(sub suspended master --wrap 'sleep 600')
requeue_id=$(sbatch --parsable --job-name="$(name requeued)" --output=/dev/null --requeue --wrap 'sleep 600')
nodefail_id=$(sub node-fail master --nodelist=node3 --wrap 'sleep 600')
nodefail_rq_id=$(sbatch --parsable --job-name="$(name node-fail-requeue)" --output=/dev/null --requeue --nodelist=node3 --wrap 'sleep 600')
workers=""
for w in 1 2 3 4; do workers="$workers $(sub spread "worker-$w" --wrap 'sleep 600')"; done

for id in $cancelrun_id $trap_id $suspend_id $requeue_id $nodefail_id $nodefail_rq_id $multi_id $hog_id; do
  wait_state "$id" RUNNING 30
done
squeue_now >"$HERE/squeue-running.txt"
scontrol --oneliner show node >"$HERE/scontrol-show-node.txt"
scontrol --oneliner show node node2 >"$HERE/scontrol-show-node-node2.txt"
{ scontrol --oneliner show node nosuchnode 2>&1; echo "exit=$?"; } >"$HERE/scontrol-show-node-unknown.txt" || true

scancel "$cancelrun_id" "$cancelpend_id"
scancel "$trap_id"
scontrol suspend "$suspend_id"
scontrol requeue "$requeue_id"
squeue_now >"$HERE/squeue-transitions.txt"

# errors, exactly as sbatch and scancel report them
{ sbatch --parsable --job-name="$(name bad)" --partition=nosuchpartition --wrap true 2>&1; echo "exit=$?"; } >"$HERE/sbatch-error-partition.txt" || true
{ sbatch --parsable --job-name="$(name bad)" --mem=100000000M --wrap true 2>&1; echo "exit=$?"; } >"$HERE/sbatch-error-memory.txt" || true
{ scancel "$done_id" 2>&1; echo "exit=$?"; } >"$HERE/scancel-finished.txt" || true
{ scancel 999999999 2>&1; echo "exit=$?"; } >"$HERE/scancel-unknown.txt" || true
{ scancel --signal=TERM --full "$done_id" 999999999 2>&1; echo "exit=$?"; } >"$HERE/scancel-signal-finished.txt" || true

# node3 fails: its slurmd dies; Slurm declares the node DOWN after SlurmdTimeout (30 s)
kill -9 "$(cat /run/slurm/slurmd.node3.pid)"
reqnode_id=$(sub reqnode master --nodelist=node3 --wrap true)
wait_state "$nodefail_id" NODE_FAIL 120
deadline_id=$(sub deadline master --nodelist=node3 --deadline=now+20 --time=1 --wrap true)
wait_state "$timeout_id" TIMEOUT 120
wait_state "$deadline_id" DEADLINE 120
sleep 1
squeue_now >"$HERE/squeue-finished.txt"
scontrol --oneliner show node node3 >"$HERE/scontrol-show-node-node3-down.txt"

ids="$deadline_id,$done_id,$fail_id,$signal_id,$oom_id,$timeout_id,$cancelrun_id,$cancelpend_id,$trap_id,$nodefail_id,$nodefail_rq_id,$requeue_id"
sacct --completion --allocations --noheader --parsable2 --delimiter="$D" --jobs="$ids" --format="$SACCT_FORMAT" >"$HERE/sacct-completion.txt"
{ sacct --allocations --noheader --parsable2 --delimiter="$D" --jobs="$ids" --format="$SACCT_FORMAT" 2>&1; echo "exit=$?"; } >"$HERE/sacct-accounting-disabled.txt" || true
echo "captured into $HERE"
