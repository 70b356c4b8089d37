"""Hook specifications: what a C-NMT plugin may implement.

Every hook receives ``register``; a plugin calls ``register(cls)`` once for each component it
offers. ``cls.name`` is the name that YAML configs select and ``cls.Params`` (a frozen
dataclass) is the schema of its ``params``. Hooks are called once, when the component
registry is first built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cnmt")

Register = Callable[[type[Any]], None]


@hookspec
def cnmt_register_length_estimators(register: Register) -> None:
    """Offer output-length estimators (subclasses of cnmt.schedulers.LengthEstimator)."""


@hookspec
def cnmt_register_device_policies(register: Register) -> None:
    """Offer device policies (subclasses of cnmt.schedulers.DevicePolicy)."""


@hookspec
def cnmt_register_rtt_estimators(register: Register) -> None:
    """Offer round-trip-time estimators (subclasses of cnmt.schedulers.rtt_estimators.RttEstimator)."""


@hookspec
def cnmt_register_translators(register: Register) -> None:
    """Offer runtime model families (cnmt.runtime.Translator subclasses; `name` = `family`)."""


@hookspec
def cnmt_register_exporters(register: Register) -> None:
    """Offer torch-side exporters of model families (cnmt.exporters.base.Exporter subclasses)."""
