"""The component registry: what plugins offer, by kind and name, and how YAML selects it.

Plugins (pluggy) implement the hooks in :mod:`cnmt.hookspecs`; each hook hands them a
``register`` callback. The built-in plugins are the modules in :data:`DEFAULT_PLUGINS`,
registered in that order by import (the one place the core names them); third-party plugins
announce themselves in the ``cnmt`` entry point group and load unless
``CNMT_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value other than ``0``.

The registry is built per kind, on first use: opening a model calls only the translator hook,
so a gateway never runs (or imports) what the exporter hook would. A name must be unique within
its kind; a second registration fails naming both modules.

YAML selects a component with ``{name: NAME, params: {...}}`` (or just ``NAME``). A schema
field typed :func:`component` (``component("length_estimator")``) validates such a selection
against the registered class's ``Params`` and yields a :class:`ComponentSpec`, so nested
components (a replayed policy's own RTT estimator) are checked by ``cnmt config validate`` like
top-level ones. Top-level config sections are registered too (``cnmt_register_config_sections``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import pluggy

from cnmt import hookspecs
from cnmt.errors import ConfigError
from cnmt.schema import NoParams, build, fail

ENTRY_POINT_GROUP = "cnmt"
DISABLE_AUTOLOAD_ENV = "CNMT_DISABLE_PLUGIN_AUTOLOAD"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "cnmt.plugins.builtin_schedulers",
    "cnmt.plugins.builtin_models",
    "cnmt.plugins.builtin_sections",
)

# Component kind -> the hook that offers components of that kind.
KINDS: dict[str, str] = {
    "length_estimator": "cnmt_register_length_estimators",
    "device_policy": "cnmt_register_device_policies",
    "rtt_estimator": "cnmt_register_rtt_estimators",
    "latency_model": "cnmt_register_latency_models",
    "translator": "cnmt_register_translators",
    "exporter": "cnmt_register_exporters",
}
SECTIONS_HOOK = "cnmt_register_config_sections"


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


@dataclasses.dataclass(frozen=True)
class Section:
    """A top-level config key; ``load()`` returns its schema (imported only when used)."""

    key: str
    load: Callable[[], Any]
    plugin: str


def params_class(cls: type[Any]) -> type[Any]:
    """The parameter schema a component declares (``NoParams`` when it declares none)."""
    return getattr(cls, "Params", NoParams)


class Components:
    """Every registered component, by kind and name; each kind is collected on first use."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._by_kind: dict[str, dict[str, Registered]] = {}
        self._sections: dict[str, Section] | None = None

    def _kind(self, kind: str) -> dict[str, Registered]:
        _check_kind(kind)
        if kind not in self._by_kind:
            entries: dict[str, Registered] = {}
            for plugin, call in _implementations(self.pm, KINDS[kind]):

                def register(cls: type[Any], *, _plugin: str = plugin) -> None:
                    _add(entries, kind, cls, _plugin)

                _call_hook(self.pm, plugin, KINDS[kind], call, register)
            self._by_kind[kind] = entries
        return self._by_kind[kind]

    def names(self, kind: str) -> list[str]:
        return sorted(self._kind(kind))

    def all(self) -> list[Registered]:
        return [e for kind in sorted(KINDS) for _, e in sorted(self._kind(kind).items())]

    def get(self, kind: str, name: str, label: str | None = None) -> Registered:
        """The component ``name`` of ``kind``; ConfigError listing the known names (``label``
        says what the user calls the kind, e.g. "model family" for a translator)."""
        entries = self._kind(kind)
        try:
            return entries[name]
        except KeyError:
            known = ", ".join(sorted(entries)) or "(none registered)"
            what = label or kind.replace("_", " ")
            raise ConfigError(f"unknown {what} {name!r}; known: {known}") from None

    def create(
        self, kind: str, name: str, params: Any = None, label: str | None = None, **context: Any
    ) -> Any:
        """Instantiate component ``name`` of ``kind`` with validated params (default: defaults).

        ``context`` goes to the constructor too: what a kind of component needs besides its
        YAML params (a latency model's prior, from the device profile)."""
        cls = self.get(kind, name, label).cls
        return cls(params_class(cls)() if params is None else params, **context)

    def sections(self) -> dict[str, Section]:
        """Every top-level config section, by key."""
        if self._sections is None:
            found: dict[str, Section] = {}
            for plugin, call in _implementations(self.pm, SECTIONS_HOOK):

                def register(key: str, load: Callable[[], Any], *, _plugin: str = plugin) -> None:
                    if key in found:
                        raise ConfigError(
                            f"two plugins declare the config section {key!r}: "
                            f"{found[key].plugin} and {_plugin}; rename one of them"
                        )
                    found[key] = Section(key, load, _plugin)

                _call_hook(self.pm, plugin, SECTIONS_HOOK, call, register)
            self._sections = found
        return self._sections


def _call_hook(
    pm: pluggy.PluginManager,
    plugin: str,
    hook: str,
    call: Callable[..., Any],
    register: Callable[..., None],
) -> None:
    """One plugin's implementation of ``hook``; an exception its own code raises becomes a
    PluginLoadError naming the plugin and its distribution (ours are already ConfigErrors)."""
    try:
        call(register=register)
    except ConfigError:
        raise
    except Exception as exc:
        raise PluginLoadError(
            f"the plugin {plugin!r} ({distribution_of(pm, plugin)}) failed in its {hook} hook: "
            f"{type(exc).__name__}: {exc}. Fix or update the plugin, or run without "
            f"third-party plugins: {DISABLE_AUTOLOAD_ENV}=1 cnmt ..."
        ) from exc


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown component kind {kind!r}; known: {', '.join(sorted(KINDS))}")


def _implementations(
    pm: pluggy.PluginManager, hook_name: str
) -> Iterable[tuple[str, Callable[..., Any]]]:
    """(plugin name, function) of each implementation, in registration order (built-ins first;
    ``get_hookimpls`` lists them so, though pluggy *calls* the last registered first), so that
    each registration knows its plugin and a duplicate name blames the later one."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        yield impl.plugin_name, impl.function


def _add(entries: dict[str, Registered], kind: str, cls: type[Any], plugin: str) -> None:
    name = getattr(cls, "name", None)
    where = f"plugin {plugin}: {cls.__module__}.{cls.__qualname__}"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} has no `name`")
    params = params_class(cls)
    if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):
        raise ConfigError(f"{where}.Params must be a frozen dataclass")
    existing = entries.get(name)
    if existing is not None:
        raise ConfigError(
            f"two {kind.replace('_', ' ')}s are named {name!r}: "
            f"{existing.module}.{existing.cls.__qualname__} (plugin {existing.plugin}) and "
            f"{cls.__module__}.{cls.__qualname__} (plugin {plugin}); rename one of them"
        )
    entries[name] = Registered(kind=kind, name=name, cls=cls, plugin=plugin)


def autoload_enabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus the distribution each third-party plugin came from (``name
    version`` by plugin name), recorded as :func:`get_plugin_manager` loads them."""

    def __init__(self) -> None:
        super().__init__("cnmt")
        self.distributions: dict[str, str] = {}


def get_plugin_manager() -> PluginManager:
    """A plugin manager with the hookspecs, the built-ins and (unless disabled) entry points.

    A third-party plugin that cannot be imported, registered or validated (a misspelled hook,
    say) raises :class:`PluginLoadError`, naming its distribution and entry point, what is
    wrong, and how to run without it."""
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.check_pending()
    if autoload_enabled():
        _load_entry_points(pm)
    return pm


class PluginLoadError(ConfigError):
    """A third-party plugin that cannot be loaded (exit 2, one message, no traceback)."""


def _load_entry_points(pm: PluginManager) -> None:
    """Every plugin of the ``cnmt`` entry point group, each validated as soon as it is
    registered, so that an error names the one plugin at fault. (pluggy's own
    ``load_setuptools_entrypoints`` loads them all first and reports a bad hook without the
    distribution it came from.)"""
    for dist in importlib.metadata.distributions():
        for entry in dist.entry_points:
            if entry.group != ENTRY_POINT_GROUP or pm.get_plugin(entry.name) is not None:
                continue
            where = (
                f"the plugin {entry.name!r} (entry point `{entry.name} = {entry.value}` of the "
                f"distribution {dist.metadata['name']} {dist.version})"
            )
            try:
                plugin = entry.load()
            except Exception as exc:
                raise _plugin_error(
                    where, f"cannot be imported: {type(exc).__name__}: {exc}", dist
                ) from exc
            unknown = _unknown_hooks(pm, plugin)
            if unknown:
                raise _plugin_error(where, _describe_unknown_hooks(unknown), dist)
            try:
                pm.register(plugin, name=entry.name)
                pm.check_pending()
            except (pluggy.PluginValidationError, ValueError) as exc:
                pm.unregister(name=entry.name)
                raise _plugin_error(where, f"cannot be registered: {exc}", dist) from exc
            pm.distributions[entry.name] = f"{dist.metadata['name']} {dist.version}"


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The names of ``plugin``'s hook implementations that name no hook of ours."""
    known = set(hook_names())
    return sorted(
        name
        for name in dir(plugin)
        if pm.parse_hookimpl_opts(plugin, name) is not None and name not in known
    )


def hook_names() -> list[str]:
    """Every hook a plugin may implement."""
    return sorted(n for n in dir(hookspecs) if n.startswith("cnmt_register_"))


def _describe_unknown_hooks(unknown: list[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, hook_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    return (
        f"implements the unknown hook(s) {', '.join(parts)}; the hooks are "
        f"{', '.join(hook_names())}"
    )


def _plugin_error(where: str, what: str, dist: importlib.metadata.Distribution) -> PluginLoadError:
    return PluginLoadError(
        f"{where} {what}. Fix or update the plugin, uninstall it "
        f"(`pip uninstall {dist.metadata['name']}`), or run without third-party plugins: "
        f"{DISABLE_AUTOLOAD_ENV}=1 cnmt ..."
    )


@functools.cache
def get_components() -> Components:
    """The process-wide registry, built on first use."""
    return Components(get_plugin_manager())


def distribution_of(pm: pluggy.PluginManager, plugin_name: str) -> str:
    """'name version' of the distribution a plugin came from, or 'built-in'."""
    return getattr(pm, "distributions", {}).get(plugin_name, "built-in")


# ----------------------------------------------------------------------- components in YAML


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """A component selected in YAML: its kind, registered ``name`` and validated ``params``."""

    kind: str
    name: str
    params: Any

    def create(self, **context: Any) -> Any:
        return get_components().create(self.kind, self.name, self.params, **context)


@dataclasses.dataclass(frozen=True)
class Kind:
    """Schema marker: the annotated field selects a registered component of ``kind``."""

    kind: str

    @property
    def description(self) -> str:
        return f"a {self.kind.replace('_', ' ')} ({{name, params}})"

    def build_value(self, value: Any, path: str, where: str) -> ComponentSpec:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            fail(where, path, f"expected {self.description}, got {value!r}")
        unknown = sorted(str(k) for k in set(value) - {"name", "params"})
        if unknown:
            fail(where, f"{path}.{unknown[0]}", "unknown key; valid keys: name, params")
        name = value.get("name")
        if not isinstance(name, str):
            fail(where, f"{path}.name", "missing or not a string")
        try:
            entry = get_components().get(self.kind, name)
        except ConfigError as exc:
            fail(where, f"{path}.name", str(exc))
        params = build(
            params_class(entry.cls), value.get("params"), path=f"{path}.params", where=where
        )
        return ComponentSpec(kind=self.kind, name=name, params=params)


def component(kind: str) -> Any:
    """The schema type of a field that selects a component of ``kind`` in YAML."""
    _check_kind(kind)
    return Annotated[ComponentSpec, Kind(kind)]
