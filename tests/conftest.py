"""Shared fixtures: the data directory, a clean component registry, the live serving setup.

The doubles and helpers themselves live in the ``helpers`` package beside this file (on
``sys.path`` through pytest's ``pythonpath``); the ones a test asks for by name are here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The serving helpers are imported by the fixtures that use them: a test that starts no server
# is collected without importing aiohttp and the gateway.
if TYPE_CHECKING:
    from helpers.live import GatewayAndCloud
    from helpers.servers import ScriptedCloudProcess

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """$CNMT_DATA, else ../shared/data beside the repository (where CI puts it)."""
    if os.environ.get("CNMT_DATA"):
        return Path(os.environ["CNMT_DATA"])
    candidate = REPO_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if root is None or not root.is_dir():
        pytest.skip("real data not found: set CNMT_DATA to the shared data directory")
    return root


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Every test runs in a scratch working directory, so that a command's default output
    (``./cnmt-reproduce``, a report, a figure) never lands in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _fresh_repeated_warnings() -> None:
    """A model warning logged by one test must not be rate-limited away in the next."""
    from cnmt.runtime.repeated_warnings import MODEL_WARNINGS

    MODEL_WARNINGS.clear()


@pytest.fixture(autouse=True)
def _data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    root = data_root()
    if root is not None and not os.environ.get("CNMT_DATA"):
        monkeypatch.setenv("CNMT_DATA", str(root))


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """Rebuild the component registry for this test and again afterwards."""
    from cnmt.registry import get_components

    get_components.cache_clear()
    try:
        yield
    finally:
        get_components.cache_clear()


@pytest.fixture
def gateway_and_cloud() -> GatewayAndCloud:
    """``helpers.live.gateway_and_cloud``: ``async with gateway_and_cloud(cloud_model,
    policy=..., **start_gateway_keywords) as live`` starts a scripted cloud and a gateway with
    doubles in front of it, yields a ``LiveGateway`` (``live.translate(text)``,
    ``live.get_json(path)``, ``live.metrics()``, ``live.gateway``) and stops both after."""
    from helpers.live import gateway_and_cloud

    return gateway_and_cloud


@pytest.fixture
def scripted_cloud_process() -> Iterator[Callable[..., ScriptedCloudProcess]]:
    """Make a scripted cloud that runs in a child process (``.start()`` gives its URL,
    ``.kill()`` crashes it): ``scripted_cloud_process(delay_s=0.03)``. Each one made is killed
    after the test, whatever the test did."""
    from helpers.servers import ScriptedCloudProcess

    made: list[ScriptedCloudProcess] = []

    def make(delay_s: float = 0.0) -> ScriptedCloudProcess:
        made.append(ScriptedCloudProcess(delay_s))
        return made[-1]

    yield make
    for cloud in made:
        cloud.kill()
