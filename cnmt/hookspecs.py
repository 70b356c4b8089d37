"""Hook specifications: what a C-NMT plugin may implement.

Every hook receives ``register``; a plugin calls it once for each thing it offers. For the
component hooks, ``register(cls)``: ``cls.name`` is the name YAML configs select and
``cls.Params`` (a frozen dataclass) the schema of its ``params``. Each hook is called once, when
the registry first needs that kind of component (:mod:`cnmt.registry`).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("cnmt")

Register = Callable[..., None]


@hookspec
def cnmt_register_length_estimators(register: Register) -> None:
    """Offer output-length estimators (subclasses of cnmt.schedulers.LengthEstimator)."""


@hookspec
def cnmt_register_device_policies(register: Register) -> None:
    """Offer device policies (subclasses of cnmt.schedulers.DevicePolicy)."""


@hookspec
def cnmt_register_rtt_estimators(register: Register) -> None:
    """Offer round-trip-time estimators (subclasses of cnmt.schedulers.RttEstimator)."""


@hookspec
def cnmt_register_latency_models(register: Register) -> None:
    """Offer per-device latency models (cnmt.schedulers.LatencyEstimator subclasses)."""


@hookspec
def cnmt_register_translators(register: Register) -> None:
    """Offer runtime model families (cnmt.runtime.Translator subclasses; `name` = `family`)."""


@hookspec
def cnmt_register_exporters(register: Register) -> None:
    """Offer torch-side exporters of model families (cnmt.exporters.base.Exporter subclasses)."""


@hookspec
def cnmt_register_config_sections(register: Register) -> None:
    """Offer top-level config sections: register(key, load), load() returning the schema type."""
