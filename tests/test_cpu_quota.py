"""CPU quotas through cgroups: real throttling (root only), cleanup, and the errors users see."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.profiling.cpu_quota import (
    JOIN_FAILED_EXIT,
    CgroupUnavailable,
    CpuQuota,
    available,
    popen_in_quota,
)

UNAVAILABLE = available()


def needs_cgroup(test):
    """Mark ``test`` as needing a writable cgroup CPU controller; skip it where there is none."""
    test = pytest.mark.cgroup(test)
    return pytest.mark.skipif(
        UNAVAILABLE is not None, reason=f"cgroup CPU quota unusable here: {UNAVAILABLE}"
    )(test)


# Burns 0.3 s of CPU time, then reports its wall time and cgroups as JSON.
BURN = """
import json, time
from pathlib import Path
cpu0, wall0 = time.process_time(), time.perf_counter()
while time.process_time() - cpu0 < 0.3:
    pass
print(json.dumps({"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0,
                  "cgroup": Path("/proc/self/cgroup").read_text()}))
"""


def burn(quota: CpuQuota | None) -> dict:
    proc = popen_in_quota([sys.executable, "-c", BURN], quota, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return json.loads(out)


@needs_cgroup
def test_quarter_core_quota_makes_cpu_bound_child_about_four_times_slower():
    free = burn(None)
    with CpuQuota(0.25, period_us=10_000) as quota:
        throttled = burn(quota)
        assert f":/{quota.name}" in throttled["cgroup"]  # the child ran inside the cgroup
    slowdown_free = free["wall"] / free["cpu"]
    slowdown_quota = throttled["wall"] / throttled["cpu"]
    print(
        f"wall/cpu unthrottled {slowdown_free:.2f}, at 25% quota {slowdown_quota:.2f}, "
        f"wall ratio {throttled['wall'] / free['wall']:.2f}"
    )
    # The kernel grants at most 2.5 ms of CPU per 10 ms window: wall >= ~4x CPU time, however
    # busy the machine is (contention only makes it slower).
    assert slowdown_quota > 3.0


@needs_cgroup
def test_fraction_above_one_grants_several_cores():
    with CpuQuota(2.0, period_us=10_000) as quota:
        assert (quota.path / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (quota.path / "cpu.cfs_period_us").read_text().strip() == "10000"


@needs_cgroup
def test_cgroup_directory_is_removed_after_an_error_inside_the_block():
    with pytest.raises(RuntimeError, match="boom"):
        with CpuQuota(0.5) as quota:
            assert quota.path.is_dir()
            raise RuntimeError("boom")
    assert not quota.path.exists()


@needs_cgroup
def test_remove_moves_a_running_process_back_and_deletes_the_cgroup():
    quota = CpuQuota(0.5).create()
    proc = popen_in_quota(["sleep", "30"], quota)
    try:
        deadline = time.monotonic() + 5
        while proc.pid not in quota.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert quota.pids() == [proc.pid]
        quota.remove()
        assert not quota.path.exists()
        assert proc.poll() is None  # still running, now outside the quota
        own = Path(f"/proc/{proc.pid}/cgroup").read_text()
        assert quota.name not in own
    finally:
        proc.kill()
        proc.wait()
        quota.remove()


@needs_cgroup
def test_unprivileged_user_is_told_to_run_as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, try, report the message
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                CpuQuota(0.25, name=f"cnmt-test-unpriv-{os.getpid()}").create()
                message = "created"
            except CgroupUnavailable as exc:
                message = str(exc)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert "permission denied" in message
    assert "run as root" in message
    assert "/cnmt-test-unpriv-" in message  # names the path it could not create


def test_missing_cgroup_root_names_the_path_and_the_fix(tmp_path):
    root = tmp_path / "no-such-cgroup"
    with pytest.raises(CgroupUnavailable, match="no such cgroup directory") as info:
        CpuQuota(0.25, root=root).create()
    assert str(root) in str(info.value) and "run as root" in str(info.value)
    assert isinstance(info.value, CnmtRuntimeError)


def test_directory_that_is_not_a_cgroup_is_rejected(tmp_path):
    with pytest.raises(CgroupUnavailable, match="not a cgroup CPU controller directory"):
        CpuQuota(0.25, root=tmp_path).create()
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_available_gives_the_reason_when_unusable(tmp_path):
    reason = available(tmp_path / "absent")
    assert reason is not None and str(tmp_path / "absent") in reason


def test_environment_variable_chooses_the_cgroup_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMT_CGROUP_ROOT", str(tmp_path / "elsewhere"))
    assert CpuQuota(0.25).root == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("fraction", "period", "message"),
    [
        (0, 10_000, "positive fraction"),
        (-0.5, 10_000, "positive fraction"),
        (0.25, 500, "out of range"),
        (0.25, 2_000_000, "out of range"),
        (0.05, 10_000, "below the kernel minimum"),
    ],
)
def test_impossible_quota_settings_are_config_errors(tmp_path, fraction, period, message):
    with pytest.raises(ConfigError, match=message):
        CpuQuota(fraction, period_us=period, root=tmp_path)


def fake_v1_root(tmp_path: Path) -> Path:
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cgroup.procs").write_text("")
    return tmp_path


def test_v1_quota_is_written_as_quota_and_period_microseconds(tmp_path):
    quota = CpuQuota(0.25, period_us=20_000, root=fake_v1_root(tmp_path), name="q").create()
    assert quota.version == "v1"
    assert (tmp_path / "q" / "cpu.cfs_period_us").read_text() == "20000"
    assert (tmp_path / "q" / "cpu.cfs_quota_us").read_text() == "5000"
    for f in (tmp_path / "q").iterdir():  # the kernel removes these itself on rmdir
        f.unlink()
    quota.remove()
    assert not (tmp_path / "q").exists()


def test_v2_enables_the_cpu_controller_and_writes_cpu_max(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    quota = CpuQuota(1.5, period_us=10_000, root=tmp_path, name="q").create()
    assert quota.version == "v2"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (tmp_path / "q" / "cpu.max").read_text() == "15000 10000"
    for f in (tmp_path / "q").iterdir():
        f.unlink()
    quota.remove()


def test_v2_without_the_cpu_controller_says_so(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("io memory\n")
    with pytest.raises(CgroupUnavailable, match="does not offer the `cpu` controller"):
        CpuQuota(0.25, root=tmp_path).create()


def test_existing_cgroup_of_the_same_name_is_not_taken_over(tmp_path):
    (fake_v1_root(tmp_path) / "taken").mkdir()
    with pytest.raises(CgroupUnavailable, match="already exists"):
        CpuQuota(0.25, root=tmp_path, name="taken").create()
    assert (tmp_path / "taken").is_dir()  # not removed: it was not ours


def test_command_does_not_run_when_it_cannot_join_the_cgroup(tmp_path):
    quota = CpuQuota(0.25, root=fake_v1_root(tmp_path), name="q").create()
    (tmp_path / "q" / "cgroup.procs").mkdir()  # joining (writing the pid) now fails
    marker = tmp_path / "ran"
    proc = popen_in_quota(["touch", str(marker)], quota, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == JOIN_FAILED_EXIT
    assert "cannot join cgroup" in err
    assert not marker.exists()


def test_popen_in_quota_refuses_shell_strings_and_uncreated_quotas(tmp_path):
    quota = CpuQuota(0.25, root=tmp_path, name="q")
    with pytest.raises(ValueError, match="argument list"):
        popen_in_quota("echo hi", quota)
    with pytest.raises(ValueError, match="shell=True"):
        popen_in_quota(["echo", "hi"], quota, shell=True)
    with pytest.raises(CnmtRuntimeError, match="call create"):
        popen_in_quota(["echo", "hi"], quota)
