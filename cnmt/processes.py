"""Child processes: start one, wait for its first word, stop it, reap it.

Every long-lived child of C-NMT (the cloud server of `cnmt launch`, the gateway's edge worker,
the profiling worker) follows one life: it is started, says once that it is ready (or why it
is not) within a time limit, and is stopped with SIGTERM, then SIGKILL if it has not exited
after a grace period, and reaped so that no zombie is left. This module is that life, written
once; what each child does is its own module's business.

A child started by :func:`spawn` runs ``target(*args, conn)`` in a fresh interpreter
(multiprocessing's ``spawn``: it shares no state with the parent) and sends its first message
through ``conn``: ``("ready", value)`` or ``("error", why)``. :func:`stop` takes a
:class:`multiprocessing.Process` or a :class:`subprocess.Popen` alike.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# How long a killed child may take to be reaped (SIGKILL cannot be refused: this is only the
# kernel's time to tear it down).
KILL_WAIT_S = 5.0


def spawn(
    target: Callable[..., None], args: tuple[Any, ...], name: str, *, duplex: bool = False
) -> tuple[Any, Connection]:
    """Start ``target(*args, child_end)`` in a spawned daemon process; returns the process and
    the parent's end of the pipe. The child's end is closed here, so once the child dies,
    reading the parent's end gives EOF."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=duplex)
    process = context.Process(target=target, args=(*args, child_end), name=name, daemon=True)
    process.start()
    child_end.close()
    return process, parent_end


def first_message(conn: Connection, process: Any, timeout_s: float, what: str) -> tuple[str, Any]:
    """The child's first message, ``("ready", value)`` or ``("error", why)``, waiting at most
    ``timeout_s``; a child that exits (or closes its end) first, or says nothing in time, is
    an ``("error", ...)`` naming ``what`` it is. Blocking: run it in an executor from a loop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.poll(0.1):
            try:
                return conn.recv()  # type: ignore[no-any-return]
            except (EOFError, OSError):
                break  # it closed its end: it is exiting
        elif not process.is_alive():
            break
    else:
        return ("error", f"{what}: not ready after {timeout_s:g} s")
    process.join(KILL_WAIT_S)
    status = process.exitcode
    return ("error", f"{what}: the process exited with status {status} before it was ready")


def _alive(process: Any) -> bool:
    if isinstance(process, subprocess.Popen):
        return process.poll() is None
    return bool(process.is_alive())


def _wait(process: Any, timeout_s: float) -> None:
    if isinstance(process, subprocess.Popen):
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    else:
        process.join(timeout_s)


def stop(process: Any, grace_s: float, *, wait_first_s: float = 0.0) -> bool:
    """Stop ``process`` (a started multiprocessing.Process or subprocess.Popen) and reap it:
    wait ``wait_first_s`` for it to exit on its own (after it was asked to), then SIGTERM, wait
    ``grace_s``, then SIGKILL. Returns True if it had to be killed. Blocking."""
    if wait_first_s > 0 and _alive(process):
        _wait(process, wait_first_s)
    if _alive(process):
        process.terminate()  # SIGTERM: a child with a handler shuts down cleanly
        _wait(process, grace_s)
    killed = _alive(process)
    if killed:
        process.kill()
    _wait(process, KILL_WAIT_S)
    return killed


async def stop_async(process: Any, grace_s: float, *, wait_first_s: float = 0.0) -> bool:
    """:func:`stop` without blocking the running event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, lambda: stop(process, grace_s, wait_first_s=wait_first_s)
    )


def reap_on_exit(process: Any, on_exit: Callable[[Any], None]) -> None:
    """Reap ``process`` (a started multiprocessing.Process) as soon as it exits, then call
    ``on_exit(process)``: a child that dies while this process goes on serving must not stay a
    zombie until it exits. Watches the process's sentinel in the running event loop."""
    loop = asyncio.get_running_loop()

    def exited() -> None:
        loop.remove_reader(process.sentinel)
        # The sentinel is ready once the child's end closed, i.e. it is exiting: a blocking
        # waitpid returns at once (bounded all the same). Then no zombie, and exitcode is known.
        process.join(1.0)
        on_exit(process)

    loop.add_reader(process.sentinel, exited)


def stop_reaping(process: Any) -> None:
    """Undo :func:`reap_on_exit` (before stopping ``process`` on purpose)."""
    try:
        asyncio.get_running_loop().remove_reader(process.sentinel)
    except (ValueError, OSError):
        pass  # already closed
