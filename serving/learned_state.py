"""What a gateway has learnt, kept in a file so that a restarted gateway continues from it.

The learning components (an ``online`` latency model per device, an ``online_linear`` length
estimator) start from their priors: the device profiles' fits and the fitted length model.
With ``gateway.state_file`` set, the gateway writes what they have learnt there every
``gateway.state_save_s`` seconds and when it stops, and reads it back when it starts.

Learnt state belongs to what it was learnt on: the edge's latency model to the model on the
edge device, the cloud's to the model on the cloud device, the length estimator to the model.
A saved part is used only when its component (name) and what it belongs to match the
gateway's config; otherwise that part starts from its prior and the log says why. A file that
is missing starts everything from the priors; a file that cannot be read is an error that
names it (delete it or fix ``state_file``), never silently replaced.

One file belongs to one gateway: :func:`lock` takes an exclusive ``fcntl`` lock on a sidecar
``.NAME.lock`` beside it for as long as the gateway runs, and a second gateway given the same
``state_file`` fails at start naming the file, instead of the two overwriting each other.

The file (format ``cnmt-gateway-state/1``)::

    {"format": "cnmt-gateway-state/1", "saved_at": "2026-11-30T23:50:00+00:00",
     "parts": {"edge_latency": {"component": "online", "model": "cn2en",
                                "device": "edge-cpu-q25", "state": {...}},
               "cloud_latency": {...}, "length_estimator": {"component": "online_linear",
                                                            "model": "cn2en", "state": {...}}}}
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cnmt.errors import ConfigError
from cnmt.files import read_json, write_json

log = logging.getLogger("cnmt.serving.learned_state")

FORMAT = "cnmt-gateway-state/1"


class Learner(Protocol):
    name: str

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Part:
    """One learning component and what its state belongs to."""

    key: str  # the config section: edge_latency, cloud_latency[.NAME], length_estimator
    learner: Learner
    model: str
    device: str | None = None  # None for the length estimator: it belongs to the model only

    def owner(self) -> dict[str, Any]:
        owner: dict[str, Any] = {"component": self.learner.name, "model": self.model}
        if self.device is not None:
            owner["device"] = self.device
        return owner


def learning_parts(
    model: str,
    edge_device: str,
    cloud_device: str,
    *,
    edge_latency: Any,
    cloud_latency: Any,
    length_estimator: Any,
    more_clouds: Sequence[tuple[str, Any, str, str]] = (),
) -> list[Part]:
    """The parts of a gateway that learn (a component that does not has nothing to save).
    ``more_clouds`` are the clouds after the first, each ``(name, latency model, model,
    device)``: their parts are ``cloud_latency.NAME``."""
    parts = [
        Part("edge_latency", edge_latency, model, edge_device),
        Part("cloud_latency", cloud_latency, model, cloud_device),
        *(
            Part(f"cloud_latency.{name}", learner, cloud_model, device)
            for name, learner, cloud_model, device in more_clouds
        ),
        Part("length_estimator", length_estimator, model),
    ]
    return [part for part in parts if getattr(part.learner, "learns", False)]


class StateLock:
    """The exclusive hold of one gateway on its state file (see :func:`lock`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def lock(path: str | Path) -> StateLock:
    """Hold ``path`` for this gateway until :meth:`StateLock.release` (or the process ends);
    ConfigError if another gateway holds it or the lock file cannot be made."""
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"gateway.state_file {path}: cannot make its lock file {lock_path}: "
            f"{exc.strerror or exc}; point state_file into a writable folder"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"gateway.state_file {path} is in use by another gateway (it holds {lock_path}); "
            "give each gateway its own state_file"
        ) from None
    return StateLock(path, fd)


def save(path: str | Path, parts: list[Part]) -> None:
    """Write every part's state (atomically: a crash mid-write leaves the previous file)."""
    saved = {part.key: {**part.owner(), "state": part.learner.state()} for part in parts}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    write_json(path, {"format": FORMAT, "saved_at": now, "parts": saved}, strict=True)


def restore(path: str | Path, parts: list[Part]) -> list[str]:
    """Continue each part from the file where it matches; returns the keys restored."""
    path = Path(path)
    if not path.exists():
        log.info("state file %s does not exist yet: starting from the priors", path)
        return []
    data = read_json(
        path,
        what="gateway state file",
        fix="delete it to start from the priors, or set gateway.state_file to another path",
        format=FORMAT,
    )
    saved = data.get("parts")
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: `parts` must be a mapping; delete the file to start afresh")
    restored = []
    for part in parts:
        entry = saved.get(part.key)
        if entry is None:
            log.info("%s: no saved %s: starting from its prior", path, part.key)
            continue
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: parts.{part.key} must be a mapping")
        owner = {k: entry.get(k) for k in part.owner()}
        if owner != part.owner():
            log.warning(
                "%s: the saved %s was learnt by %s, this gateway runs %s: starting from its prior",
                path,
                part.key,
                _describe(owner),
                _describe(part.owner()),
            )
            continue
        try:
            part.learner.restore(entry["state"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(
                f"{path}: parts.{part.key}.state does not fit {part.learner.name!r}: {exc}; "
                "delete the file to start from the priors"
            ) from None
        restored.append(part.key)
    return restored


def _describe(owner: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value!r}" for key, value in owner.items())
