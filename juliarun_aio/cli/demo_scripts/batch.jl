# Demo batch job: estimate pi in five steps, printing progress as it goes.
using Random

const STEPS = 5
const SAMPLES = 100_000

println("hello from ", get(ENV, "JRUN_TYPE", "?"), "/", get(ENV, "JRUN_NAME", "?"))
rng = MersenneTwister(2017)
inside = 0
for step in 1:STEPS
    global inside += count(_ -> rand(rng)^2 + rand(rng)^2 <= 1.0, 1:SAMPLES)
    println("step $step/$STEPS: pi is about ", round(4 * inside / (step * SAMPLES), digits=4))
    flush(stdout)
    sleep(0.3)
end
println(stderr, "a line on stderr, to show both streams")
println("done")
