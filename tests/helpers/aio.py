"""Running an async test body: under a deadline, so no test can hang; waiting for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def run(coro: Any, timeout_s: float = 60.0) -> Any:
    """Run one async test body with an overall deadline, so no test can hang."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


async def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
