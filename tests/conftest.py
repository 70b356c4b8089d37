"""Shared fixtures: the data directory, a clean component registry, CLI runner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
