# Demo parallel job, master: report each worker that joins, then keep the job running.
#
# Workers announce themselves with a file in the job directory ($JRUN_DIR).  The master
# runs until it is stopped (the demo deletes the job), at most MAX_SECONDS.

const MAX_SECONDS = 120

jobdir = get(ENV, "JRUN_DIR", ".")
println("master of ", get(ENV, "JRUN_NAME", "?"), ": waiting for workers")
flush(stdout)
seen = Set{String}()
deadline = time() + MAX_SECONDS
while time() < deadline
    for name in sort(readdir(jobdir))
        path = joinpath(jobdir, name)
        if startswith(name, "worker-") && endswith(name, ".txt") && !(name in seen) && filesize(path) > 0
            push!(seen, name)
            println("worker joined: ", strip(read(path, String)), " (", length(seen), " so far)")
            flush(stdout)
        end
    end
    sleep(0.1)
end
println("master: done")
