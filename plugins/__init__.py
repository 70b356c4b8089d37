"""Plugins: how components reach C-NMT, and the registry YAML selects them from.

Writing a plugin
----------------
A plugin is a module with functions named after the hooks in :mod:`cnmt.hookspecs`, each
decorated with ``@cnmt.hookimpl``::

    import cnmt
    from cnmt.schedulers import DevicePolicy

    class SafetyMargin(DevicePolicy):
        name = "safety_margin"
        ...

    @cnmt.hookimpl
    def cnmt_register_device_policies(register):
        register(SafetyMargin)

Built-in components are registered from the modules in :data:`DEFAULT_PLUGINS`, in that order.
Third-party distributions announce their plugin module in the ``cnmt`` entry point group::

    [options.entry_points]
    cnmt =
        safety_margin = cnmt_safety_margin

and are loaded when the registry is first built, unless ``CNMT_DISABLE_PLUGIN_AUTOLOAD`` is set
to a non-empty value other than ``0``. ``cnmt plugins`` lists every registered component.
A component name must be unique within its kind: a second registration fails and names both
modules.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from cnmt import hookspecs
from cnmt.errors import ConfigError
from cnmt.schema import NoParams

ENTRY_POINT_GROUP = "cnmt"
DISABLE_AUTOLOAD_ENV = "CNMT_DISABLE_PLUGIN_AUTOLOAD"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "cnmt.plugins.builtin_schedulers",
    "cnmt.plugins.builtin_models",
)

# Component kind -> the hook that offers components of that kind.
KINDS: dict[str, str] = {
    "length_estimator": "cnmt_register_length_estimators",
    "device_policy": "cnmt_register_device_policies",
    "rtt_estimator": "cnmt_register_rtt_estimators",
    "translator": "cnmt_register_translators",
    "exporter": "cnmt_register_exporters",
}


@dataclasses.dataclass(frozen=True)
class Registered:
    """One component known to the registry."""

    kind: str
    name: str
    cls: type[Any]
    plugin: str

    @property
    def module(self) -> str:
        return self.cls.__module__

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class Components:
    """Every registered component, by kind and name."""

    def __init__(self, entries: Iterable[Registered]) -> None:
        self._by_kind: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        for entry in entries:
            self._by_kind.setdefault(entry.kind, {})[entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def all(self) -> list[Registered]:
        return [e for kind in sorted(self._by_kind) for _, e in sorted(self._by_kind[kind].items())]

    def get(self, kind: str, name: str) -> Registered:
        if kind not in self._by_kind:
            raise ConfigError(f"unknown component kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        try:
            return self._by_kind[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "(none registered)"
            label = kind.replace("_", " ")
            raise ConfigError(f"unknown {label} {name!r}; known: {known}") from None

    def create(self, kind: str, name: str, params: Any = None) -> Any:
        """Instantiate component ``name`` of ``kind`` with validated params (default: defaults)."""
        cls = self.get(kind, name).cls
        if params is None:
            params = params_class(cls)()
        return cls(params)


def params_class(cls: type[Any]) -> type[Any]:
    """The parameter schema a component declares (``NoParams`` when it declares none)."""
    return getattr(cls, "Params", NoParams)


def autoload_enabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")


def get_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the built-ins and (unless disabled) entry points."""
    pm = pluggy.PluginManager("cnmt")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload_enabled():
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def collect(pm: pluggy.PluginManager) -> Components:
    """Call every registration hook, one plugin at a time so each entry knows its plugin."""
    entries: dict[tuple[str, str], Registered] = {}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        # pluggy calls the last registered implementation first; walk in registration order.
        for impl in reversed(hook.get_hookimpls()):
            def register(cls: type[Any], *, _kind: str = kind, _plugin: str = impl.plugin_name) -> None:
                _add(entries, _kind, cls, _plugin)

            impl.function(register=register)
    return Components(entries.values())


def _add(entries: dict[tuple[str, str], Registered], kind: str, cls: type[Any], plugin: str) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"plugin {plugin}: {cls.__module__}.{cls.__qualname__} has no `name`")
    params = params_class(cls)
    if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):
        raise ConfigError(
            f"plugin {plugin}: {cls.__module__}.{cls.__qualname__}.Params must be a frozen dataclass"
        )
    existing = entries.get((kind, name))
    if existing is not None:
        raise ConfigError(
            f"two {kind.replace('_', ' ')}s are named {name!r}: "
            f"{existing.module}.{existing.cls.__qualname__} (plugin {existing.plugin}) and "
            f"{cls.__module__}.{cls.__qualname__} (plugin {plugin}); rename one of them"
        )
    entries[(kind, name)] = Registered(kind=kind, name=name, cls=cls, plugin=plugin)


@functools.cache
def get_components() -> Components:
    """The process-wide registry, built on first use."""
    return collect(get_plugin_manager())


def distribution_of(pm: pluggy.PluginManager, plugin_name: str) -> str:
    """'name version' of the distribution a plugin came from, or 'built-in'."""
    for plugin, dist in pm.list_plugin_distinfo():
        if pm.get_name(plugin) == plugin_name:
            return f"{dist.metadata['name']} {dist.version}"
    return "built-in"
