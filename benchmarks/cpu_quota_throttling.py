"""How a cgroup CPU quota slows short runs, and why `cnmt profile` makes no system call between
the runs of a cell.

Runs the same syscall-free compute loop (calibrated to about ``--run-ms`` of CPU) three ways in
one go and prints, side by side, the timed wall time of a run over its CPU time (the slowdown a
profile would record) and the wall/CPU ratio of the whole process (what the quota enforces):

* unthrottled;
* inside a quota (default 25% of a core, 10 ms period), runs back to back with nothing between
  them (how the profiler's worker runs a cell);
* inside the same quota, with one cheap system call (a CPU-clock read) between runs.

Linux charges the quota at timer ticks and at system calls, so in the third case the stall the
quota owes tends to fall on the system call between runs instead of inside the timed run.

Needs root (a writable cgroup). Usage: python benchmarks/cpu_quota_throttling.py [--quota 0.25]
[--run-ms 4] [--runs 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# The child: calibrates a loop to the requested CPU time, then times `runs` runs.
CHILD = r"""
import sys, time
mode, iterations, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def work():
    x = 0
    for i in range(iterations):
        x += i
    return x
total = 0.0
cpu0, wall0 = time.process_time(), time.perf_counter()
for _ in range(runs):
    start = time.perf_counter()
    work()
    total += time.perf_counter() - start
    if mode == "syscall":
        time.process_time()
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
print(total / runs, cpu / runs, wall / cpu)
"""


def calibrate(run_ms: float) -> int:
    """Loop iterations that take about ``run_ms`` of CPU in this interpreter."""
    iterations = 200_000
    start = time.process_time()
    x = 0
    for i in range(iterations):
        x += i
    per_iteration = (time.process_time() - start) / iterations
    return max(1000, int(run_ms / 1e3 / per_iteration))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quota", type=float, default=0.25, help="fraction of a core (0.25)")
    parser.add_argument("--period-us", type=int, default=10_000, help="quota period (10000)")
    parser.add_argument("--run-ms", type=float, default=4.0, help="CPU time of one run (4)")
    parser.add_argument("--runs", type=int, default=60, help="runs per case (60)")
    args = parser.parse_args()

    from cnmt.profiling.cpu_quota import CpuQuota, available, popen_in_quota

    reason = available()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    iterations = calibrate(args.run_ms)

    def case(mode: str, quota: CpuQuota | None) -> tuple[float, float, float]:
        argv = [sys.executable, "-c", CHILD, mode, str(iterations), str(args.runs)]
        proc = popen_in_quota(argv, quota, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate()
        per_run, cpu_per_run, wall_per_cpu = (float(v) for v in out.split())
        return per_run, cpu_per_run, wall_per_cpu

    rows = [("unthrottled", *case("none", None))]
    with CpuQuota(args.quota, args.period_us) as quota:
        rows.append(("quota, runs back to back", *case("none", quota)))
    with CpuQuota(args.quota, args.period_us) as quota:
        rows.append(("quota, a system call between runs", *case("syscall", quota)))
    print(
        f"quota {args.quota:g} of a core, period {args.period_us} us, "
        f"{args.runs} runs of ~{args.run_ms:g} ms CPU"
    )
    print(f"expected slowdown of a run under the quota: {1 / args.quota:.2f}x its CPU time")
    header = ("case", "timed ms/run", "CPU ms/run", "timed/CPU", "process wall/CPU")
    print(f"{header[0]:<36}{header[1]:>14}{header[2]:>12}{header[3]:>11}{header[4]:>18}")
    for name, per_run, cpu_per_run, ratio in rows:
        print(
            f"{name:<36}{per_run * 1e3:>14.2f}{cpu_per_run * 1e3:>12.2f}"
            f"{per_run / cpu_per_run:>10.2f}x{ratio:>17.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
