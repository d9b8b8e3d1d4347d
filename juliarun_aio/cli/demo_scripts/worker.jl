# Demo parallel job, worker: announce itself to the master, then stay up until stopped.

const MAX_SECONDS = 120

pid = getpid()
jobdir = get(ENV, "JRUN_DIR", ".")
partial = sum(i * i for i in 0:(pid % 1000 - 1); init=0)
report = joinpath(jobdir, "worker-$pid.txt")
temporary = joinpath(jobdir, "worker-$pid.tmp")
write(temporary, "pid $pid, partial sum $partial\n")
mv(temporary, report; force=true)  # the master never sees a half-written report
println("worker $pid: ready")
flush(stdout)
sleep(MAX_SECONDS)
