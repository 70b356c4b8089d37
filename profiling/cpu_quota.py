"""Emulate a slower device with a Linux cgroup CPU quota.

A process placed in a cgroup with quota Q and period P may use at most Q microseconds of CPU time
in every window of P microseconds, across all its threads; the scheduler then suspends it until
the next window. A quota of ``fraction * period`` therefore gives the process ``fraction`` of one
core (``fraction > 1`` means several cores). With a short period (10 ms) the throttling is
fine-grained, so a CPU-bound model runs close to ``1 / fraction`` times slower and its latency
stays linear in the amount of work: a weak edge device emulated on a desktop CPU.

Both cgroup interfaces are supported:

* v1 (a ``cpu`` controller hierarchy, normally ``/sys/fs/cgroup/cpu``): ``cpu.cfs_period_us``,
  ``cpu.cfs_quota_us`` and ``cgroup.procs``;
* v2 (the unified hierarchy, normally ``/sys/fs/cgroup``): ``cpu.max`` = ``"quota period"``,
  with ``+cpu`` enabled in the parent's ``cgroup.subtree_control``.

Creating a cgroup needs write access to the hierarchy, i.e. root (or a delegated subtree).
Every failure raises :class:`CgroupUnavailable` naming the path and the fix.

Typical use::

    with CpuQuota(0.25) as quota:              # creates the cgroup, removes it afterwards
        proc = popen_in_quota([sys.executable, "work.py"], quota, stdout=subprocess.PIPE)
        proc.wait()

:func:`popen_in_quota` starts the command through a two-line ``sh`` wrapper that writes its own
pid into the cgroup and then ``exec``\\ s the command (same pid), so not one instruction of the
command runs unthrottled. ``CNMT_CGROUP_ROOT`` overrides where cgroups are created.

A process killed before it could remove its cgroups (SIGKILL) leaves them behind, empty:
:meth:`CpuQuota.create` first removes every ``cnmt-<pid>-<n>`` cgroup of the root whose process
``<pid>`` is gone and that holds no process (:func:`remove_stale`).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from cnmt.errors import CnmtRuntimeError, ConfigError

ROOT_ENV = "CNMT_CGROUP_ROOT"
MIN_PERIOD_US = 1_000  # kernel limits of cpu.cfs_period_us / cpu.max
MAX_PERIOD_US = 1_000_000
MIN_QUOTA_US = 1_000
_FIX = (
    "run as root (e.g. `sudo cnmt ...`), or in a container started with a writable cgroup "
    f"hierarchy (docker --privileged), or point {ROOT_ENV} at a cgroup directory you may write"
)
_counter = itertools.count()

Version = Literal["v1", "v2"]


class CgroupUnavailable(CnmtRuntimeError):
    """A CPU quota cannot be applied here; the message names the path and what to do."""


def default_root() -> Path:
    """Where cgroups are created: ``$CNMT_CGROUP_ROOT``, else the mounted v1 ``cpu`` hierarchy,
    else the v2 unified hierarchy if it offers the ``cpu`` controller."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    v2: Path | None = None
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    for line in mounts:
        fields = line.split()
        if len(fields) < 4:
            continue
        mount_point, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            return Path(mount_point)
        if fstype == "cgroup2" and v2 is None and _v2_offers_cpu(Path(mount_point)):
            v2 = Path(mount_point)
    if v2 is not None:
        return v2
    raise CgroupUnavailable(
        "no cgroup CPU controller is mounted (looked for a v1 `cpu` hierarchy and a v2 hierarchy "
        "offering `cpu` in /proc/self/mounts); mount one (e.g. `mount -t cgroup -o cpu cgroup "
        f"/sys/fs/cgroup/cpu`) or set {ROOT_ENV}"
    )


def _v2_offers_cpu(path: Path) -> bool:
    try:
        return "cpu" in (path / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def detect_version(root: Path) -> Version:
    """``v1`` or ``v2`` for a cgroup directory; CgroupUnavailable if it is neither."""
    if not root.is_dir():
        raise CgroupUnavailable(f"{root}: no such cgroup directory; {_FIX}")
    if (root / "cpu.cfs_quota_us").exists():
        return "v1"
    if (root / "cgroup.controllers").exists():
        if not _v2_offers_cpu(root):
            raise CgroupUnavailable(
                f"{root}: this cgroup v2 directory does not offer the `cpu` controller "
                f"(see {root / 'cgroup.controllers'}); enable it in the parent's "
                f"cgroup.subtree_control or use a v1 `cpu` hierarchy"
            )
        return "v2"
    raise CgroupUnavailable(
        f"{root}: not a cgroup CPU controller directory (no cpu.cfs_quota_us, no "
        f"cgroup.controllers); {_FIX}"
    )


def _explain(exc: OSError, action: str, path: Path) -> CgroupUnavailable:
    if exc.errno in (errno.EACCES, errno.EPERM):
        why = f"permission denied; {_FIX}"
    elif exc.errno == errno.EROFS:
        why = f"the cgroup hierarchy is mounted read-only; {_FIX}"
    else:
        why = f"{exc.strerror or exc}; {_FIX}"
    return CgroupUnavailable(f"cannot {action} {path}: {why}")


class CpuQuota:
    """A cgroup limiting its processes to ``fraction`` of one CPU core.

    ``fraction`` is the CPU share (0.25 = a quarter of one core, 2.0 = two cores), enforced in
    windows of ``period_us`` microseconds. ``root`` is the cgroup directory under which the new
    cgroup ``name`` (default: a unique ``cnmt-<pid>-<n>``) is created; by default
    :func:`default_root`. Call :meth:`create` (or enter the context manager), place processes
    with :meth:`add_pid` or :func:`popen_in_quota`, and :meth:`remove` when done: it moves any
    remaining process back to ``root`` and deletes the directory.
    """

    def __init__(
        self,
        fraction: float,
        period_us: int = 10_000,
        root: Path | str | None = None,
        name: str | None = None,
    ) -> None:
        if not fraction > 0:
            raise ConfigError(
                f"cpu_quota: {fraction!r} must be a positive fraction of a core (e.g. 0.25)"
            )
        if not MIN_PERIOD_US <= period_us <= MAX_PERIOD_US:
            raise ConfigError(
                f"cpu_period_us: {period_us} out of range; the kernel accepts "
                f"{MIN_PERIOD_US}..{MAX_PERIOD_US} microseconds (10000 = 10 ms is a good choice)"
            )
        quota_us = round(fraction * period_us)
        if quota_us < MIN_QUOTA_US:
            raise ConfigError(
                f"cpu_quota: {fraction} of a {period_us} us period is {quota_us} us, below the "
                f"kernel minimum of {MIN_QUOTA_US} us; use a longer cpu_period_us "
                f"(at least {int(MIN_QUOTA_US / fraction) + 1})"
            )
        self.fraction = float(fraction)
        self.period_us = int(period_us)
        self.quota_us = quota_us
        self.root = Path(root) if root is not None else default_root()
        self.name = name or f"cnmt-{os.getpid()}-{next(_counter)}"
        self.path = self.root / self.name
        self.version: Version | None = None
        self._created = False

    def __repr__(self) -> str:
        return (
            f"CpuQuota(fraction={self.fraction}, period_us={self.period_us}, "
            f"path={str(self.path)!r})"
        )

    @property
    def procs_file(self) -> Path:
        """The file a process writes its pid to in order to join this cgroup."""
        return self.path / "cgroup.procs"

    def create(self) -> CpuQuota:
        """Make the cgroup directory and set its quota; on any failure nothing is left behind."""
        if self._created:
            return self
        self.version = detect_version(self.root)
        remove_stale(self.root)
        if self.version == "v2":
            self._enable_v2_controller()
        try:
            self.path.mkdir()
        except FileExistsError:
            raise CgroupUnavailable(
                f"{self.path} already exists (another run, or one that crashed); choose another "
                f"name or remove it with `rmdir {self.path}`"
            ) from None
        except OSError as exc:
            raise _explain(exc, "create cgroup", self.path) from None
        self._created = True
        try:
            if self.version == "v1":
                self._write(self.path / "cpu.cfs_period_us", str(self.period_us))
                self._write(self.path / "cpu.cfs_quota_us", str(self.quota_us))
            else:
                self._write(self.path / "cpu.max", f"{self.quota_us} {self.period_us}")
        except BaseException:
            self.remove()
            raise
        return self

    def _enable_v2_controller(self) -> None:
        control = self.root / "cgroup.subtree_control"
        try:
            if "cpu" in control.read_text().split():
                return
            control.write_text("+cpu")
        except OSError as exc:
            hint = (
                " (a cgroup that holds processes cannot delegate controllers: move the processes "
                "of this cgroup into a child cgroup first, or set "
                f"{ROOT_ENV} to a cgroup without processes)"
                if exc.errno == errno.EBUSY
                else ""
            )
            raise CgroupUnavailable(
                str(_explain(exc, "enable the cpu controller in", control)) + hint
            ) from None

    @staticmethod
    def _write(path: Path, value: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise _explain(exc, f"write {value!r} to", path) from None

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the cgroup."""
        if not self._created:
            raise CnmtRuntimeError(f"{self!r}: call create() (or use `with`) before add_pid()")
        self._write(self.procs_file, str(pid))

    def pids(self) -> list[int]:
        """The processes currently in the cgroup."""
        try:
            return [int(p) for p in self.procs_file.read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, timeout_s: float = 2.0) -> None:
        """Move remaining processes back to ``root``, then delete the cgroup directory.

        Idempotent. Exiting processes can keep a cgroup busy for a moment, so removal retries
        until ``timeout_s``; if the directory still cannot go, CgroupUnavailable says which.
        """
        if not self._created:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            for pid in self.pids():
                try:
                    with open(self.root / "cgroup.procs", "w") as f:
                        f.write(str(pid))
                except OSError:
                    pass  # the process exited meanwhile; rmdir below decides
            try:
                self.path.rmdir()
                self._created = False
                return
            except FileNotFoundError:
                self._created = False
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise _explain(exc, "remove cgroup", self.path) from None
                time.sleep(0.02)

    def __enter__(self) -> CpuQuota:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


# The names CpuQuota gives its cgroups: cnmt-<pid>-<n>, cnmt-probe-<pid>-<n>.
_OWN_NAME = re.compile(r"cnmt-(?:probe-)?(\d+)-\d+")


def remove_stale(root: Path) -> list[Path]:
    """Remove the cgroups under ``root`` that a CpuQuota of a process now gone created and left
    behind (the process was killed before it could remove them). Only empty ones: a cgroup that
    still holds a process, or whose creator is alive, is left alone. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _OWN_NAME.fullmatch(path.name)
        if match is None or not path.is_dir() or _alive(int(match.group(1))):
            continue
        try:
            if (path / "cgroup.procs").read_text().split():
                continue
            path.rmdir()
        except OSError:
            continue  # another process removed it first, or it just became busy
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def available(root: Path | str | None = None) -> str | None:
    """None if a CPU quota can be applied under ``root`` (default :func:`default_root`), else
    the reason. Creates and removes a probe cgroup: the only honest test of write access."""
    try:
        with CpuQuota(0.5, root=root, name=f"cnmt-probe-{os.getpid()}-{next(_counter)}"):
            return None
    except CgroupUnavailable as exc:
        return str(exc)


# Join the cgroup whose cgroup.procs is $0, then become the command: same pid, so the command's
# first instruction already runs under the quota. Exit status 125 if joining failed.
_JOIN_THEN_EXEC = (
    'echo $$ > "$0" || { echo "cnmt: cannot join cgroup $0" >&2; exit 125; }; exec "$@"'
)
JOIN_FAILED_EXIT = 125


def quota_command(args: Sequence[str], quota: CpuQuota) -> list[str]:
    """``args`` wrapped so that the process joins ``quota``'s cgroup before it runs."""
    return ["/bin/sh", "-c", _JOIN_THEN_EXEC, str(quota.procs_file), *map(str, args)]


def popen_in_quota(
    args: Sequence[str], quota: CpuQuota | None, **popen_kwargs: Any
) -> subprocess.Popen[Any]:
    """Start ``args`` (a list, no shell) inside ``quota``'s cgroup; ``quota=None`` starts it
    unthrottled. The quota must be created. If the child cannot join the cgroup it exits with
    status 125 (:data:`JOIN_FAILED_EXIT`) before running anything."""
    if popen_kwargs.get("shell"):
        raise ValueError("popen_in_quota takes an argument list, not shell=True")
    if isinstance(args, str | bytes):
        raise ValueError("popen_in_quota takes an argument list, not a string")
    if quota is None:
        return subprocess.Popen(list(args), **popen_kwargs)
    if not quota._created:
        raise CnmtRuntimeError(
            f"{quota!r}: call create() (or use `with`) before starting processes in it"
        )
    return subprocess.Popen(quota_command(args, quota), **popen_kwargs)


def cgroup_of(pid: int | str = "self") -> dict[str, str]:
    """Controller list -> cgroup path of a process, from /proc/<pid>/cgroup (``"0::"`` for v2
    is keyed ``""``)."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out
