"""The gateway's local worker: a separate process, inside the edge profile's CPU quota."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
from helpers import doubles
from helpers.aio import run

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.profiling.cpu_quota import available
from cnmt.serving.edge import EdgeWorker, QuotaSpec

UNAVAILABLE = available()
FACTORY = functools.partial(doubles.ScriptedTranslator, 0.0, label="edge")


@pytest.mark.cgroup
@pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"cgroup CPU quota unusable here: {UNAVAILABLE}"
)
def test_local_translations_run_in_a_worker_inside_the_quota_cgroup() -> None:
    async def body() -> tuple[str, str, Path]:
        worker = EdgeWorker(FACTORY, QuotaSpec(0.5, 10_000, source="test"))
        await worker.start()
        try:
            cgroup_dir = worker._quota.path
            membership = Path(f"/proc/{worker.pid}/cgroup").read_text()
            translation = await worker.translate("ni hao")
        finally:
            await worker.close()
        assert worker.throttled
        return membership, translation.text, cgroup_dir

    membership, text, cgroup_dir = run(body())
    assert f":/{cgroup_dir.name}" in membership
    assert text == "NI HAO . [edge]"
    assert not cgroup_dir.exists()  # removed at shutdown


def test_refuses_to_run_unthrottled_unless_the_config_allows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CNMT_CGROUP_ROOT", str(tmp_path / "no-cgroup-here"))
    quota = QuotaSpec(0.25, 10_000, source="edge.json")

    async def strict() -> None:
        await EdgeWorker(FACTORY, quota).start()

    with pytest.raises(CnmtRuntimeError) as info:
        run(strict())
    message = str(info.value)
    assert "quota of 0.25 core (from edge.json) needs a writable cgroup" in message
    assert "gateway.allow_unthrottled: true" in message

    async def lenient() -> tuple[bool, str]:
        worker = EdgeWorker(FACTORY, quota, allow_unthrottled=True)
        await worker.start()
        try:
            return worker.throttled, (await worker.translate("hao")).text
        finally:
            await worker.close()

    with caplog.at_level(logging.WARNING, logger="cnmt.serving.edge"):
        throttled, text = run(lenient())
    assert not throttled and text == "HAO . [edge]"
    assert "not applied, running unthrottled" in caplog.text


def test_a_model_that_cannot_load_fails_the_start_with_its_own_message() -> None:
    async def body() -> None:
        await EdgeWorker(doubles.broken_model).start()

    with pytest.raises(ConfigError, match="/models/zh-en: no such model directory"):
        run(body())


def test_translations_queue_and_run_one_at_a_time_in_order() -> None:
    import asyncio

    async def body() -> list[str]:
        worker = EdgeWorker(functools.partial(doubles.ScriptedTranslator, 0.05, label="edge"))
        await worker.start()
        try:
            results = await asyncio.gather(*(worker.translate(f"w{i}") for i in range(5)))
            assert worker.queued == 0
            return [r.text for r in results]
        finally:
            await worker.close()

    assert run(body()) == [f"W{i} . [edge]" for i in range(5)]
