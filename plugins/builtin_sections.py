"""Registers the config sections of the applications: serving (``gateway``, ``cloud``,
``link``, ``clouds``), experiments (``replay``) and characterization (``device``).

A section's schema module is imported only when a config uses the key.
"""

from __future__ import annotations

from typing import Any

from cnmt import hookimpl
from cnmt.hookspecs import Register


def _gateway() -> type:
    from cnmt.serving.settings import GatewaySettings

    return GatewaySettings


def _cloud() -> type:
    from cnmt.serving.settings import CloudSettings

    return CloudSettings


def _link() -> type:
    from cnmt.serving.settings import LinkSettings

    return LinkSettings


def _clouds() -> Any:
    from cnmt.serving.settings import CloudEntry

    return list[CloudEntry]


def _replay() -> type:
    from cnmt.experiments.config import ReplayConfig

    return ReplayConfig


def _device() -> type:
    from cnmt.profiling.devices import DeviceSetting

    return DeviceSetting


@hookimpl
def cnmt_register_config_sections(register: Register) -> None:
    register("gateway", _gateway)
    register("cloud", _cloud)
    register("link", _link)
    register("clouds", _clouds)
    register("replay", _replay)
    register("device", _device)
