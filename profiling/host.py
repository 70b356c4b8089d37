"""The host a profile is measured on: what it is, and how busy other processes keep it.

Timings are only as good as the machine is quiet: another process that takes a core makes
the model wait for it (and under a CPU quota, the wait is not even charged to the quota). The
1-minute load average says little about that: it lags by a minute, counts the profiler's own
model and stays high for a minute after a previous profile finished. So the profiler measures
other processes' CPU use directly, from ``/proc/stat``: the CPU time of the whole host over an
interval, minus the CPU time of the profiler's own processes, over the interval's wall time.
The result is in CPUs: 0.0 = an idle host, 1.0 = one core kept busy by others.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")
WINDOW_S = 2.0
"""Shortest window the peak load is taken over: /proc/stat counts in 10 ms ticks, so shorter
windows would be mostly rounding."""


def describe_machine(gpus: bool = False) -> dict[str, Any]:
    """The host, as far as it matters for timings: CPU model, cores, memory, platform, and with
    ``gpus`` the NVIDIA GPUs ``nvidia-smi`` lists (name, memory, driver)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
    }
    with contextlib.suppress(AttributeError):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                info["cpu_model"] = value.strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    info.setdefault("cpu_model", platform.processor() or "unknown")
    if gpus and (smi := shutil.which("nvidia-smi")) is not None:
        query = "--query-gpu=name,memory.total,driver_version"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [smi, query, "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_cpu_seconds(path: Path = PROC_STAT) -> float | None:
    """CPU time (seconds, all CPUs together) the host has spent not idle since boot, from the
    first line of ``/proc/stat``; None where there is no such file.

    Busy is user + nice + system + irq + softirq + steal (a hypervisor's other guests take the
    CPU from us just as a local process would); guest time is already inside user.
    """
    try:
        fields = path.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]] + [0] * (8 - len(fields[1:9]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) of process ``pid`` so far, from
    ``/proc/PID/stat``; None where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count fields after its closing parenthesis
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


class LoadMonitor:
    """Other processes' CPU use, from marks taken while a measurement runs.

    Call :meth:`mark` with the profiler's own CPU time so far (its processes together, in
    seconds) at moments where it is known: the monitor keeps the busy CPU time of the host and
    the wall clock at each mark, and closes a window whenever at least ``window_s`` have passed
    since the last one closed. :attr:`mean` is other processes' CPUs since the first mark,
    :attr:`peak` the largest over the closed windows. ``read`` and ``clock`` are injectable
    for tests.
    """

    def __init__(
        self,
        window_s: float = WINDOW_S,
        read: Callable[[], float | None] = busy_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.read = read
        self.clock = clock
        # (wall clock, host busy CPU s, own CPU s) at the first mark, the open window's start
        # and the last mark
        self._first: tuple[float, float, float] | None = None
        self._window: tuple[float, float, float] | None = None
        self._last: tuple[float, float, float] | None = None
        self._windows: list[float] = []

    def mark(self, own_cpu_s: float) -> None:
        busy = self.read()
        if busy is None:
            return
        point = (self.clock(), busy, own_cpu_s)
        if self._first is None or self._window is None:
            self._first = self._window = point
        elif point[0] - self._window[0] >= self.window_s:
            self._windows.append(_other_cpus(self._window, point))
            self._window = point
        self._last = point

    @property
    def mean(self) -> float | None:
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return None
        return _other_cpus(self._first, self._last)

    @property
    def peak(self) -> float | None:
        return max(self._windows) if self._windows else self.mean


def _other_cpus(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    wall = end[0] - start[0]
    other = (end[1] - start[1]) - (end[2] - start[2])
    return max(other, 0.0) / wall if wall > 0 else 0.0


def probe_other_cpus(
    seconds: float, own_cpu: Callable[[], float] = time.process_time
) -> float | None:
    """Other processes' CPUs over ``seconds`` of this process sleeping (None: not measurable)."""
    monitor = LoadMonitor(window_s=seconds)
    monitor.mark(own_cpu())
    time.sleep(seconds)
    monitor.mark(own_cpu())
    return monitor.mean
