"""cnmt.processes: the one life of C-NMT's child processes (handshake, stop, reaping)."""

from __future__ import annotations

import signal
import subprocess
import sys

from cnmt import processes

# A child that refuses SIGTERM (a hung server) and one that exits on it, both saying so first.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"  # noqa: E501
POLITE = "import time; print('up', flush=True); time.sleep(60)"


def _started(code: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "up\n"
    return child


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period_and_reaped() -> None:
    child = _started(STUBBORN)
    assert processes.stop(child, grace_s=0.2) is True
    assert child.returncode == -signal.SIGKILL  # reaped: its status is known


def test_a_child_that_exits_on_sigterm_is_not_killed() -> None:
    child = _started(POLITE)
    assert processes.stop(child, grace_s=30.0) is False
    assert child.returncode == -signal.SIGTERM


def test_stopping_a_child_that_already_exited_does_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert processes.stop(child, grace_s=0.1) is False
    assert child.returncode == 0


def test_a_spawned_child_that_dies_before_its_first_message_is_reported_with_its_status() -> None:
    # sys.exit(conn): the child exits with status 1 without sending anything.
    process, conn = processes.spawn(sys.exit, (), name="cnmt-test")
    try:
        kind, why = processes.first_message(conn, process, 60.0, "test child")
    finally:
        conn.close()
        processes.stop(process, grace_s=1.0)
    assert kind == "error"
    assert why == "test child: the process exited with status 1 before it was ready"
