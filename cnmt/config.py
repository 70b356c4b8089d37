"""YAML configuration: load safely, resolve ``extends``, substitute variables, validate.

A config file is a mapping of sections. A *component section* selects a registered component by
``name`` and passes it ``params``, validated against that component's ``Params`` schema::

    extends: base.yaml            # optional; a path relative to this file, or a list of them
    length_estimator:
      name: linear
      params: {gamma: 1.05, delta: 0.8}
    device_policy:
      name: cnmt

Other sections are plain typed mappings (see :data:`SECTIONS`). Merging: a file's own keys
override its bases' keys, mappings merge recursively, lists are replaced, and a component
section whose ``name`` changes drops the base's ``params``. Strings may use ``${data}`` (the data
directory: ``$CNMT_DATA``, else the config's ``data_dir``, else ``./data`` or
``../shared/data`` when one exists) and ``${config_dir}`` (the folder of the file that wrote the
string). Built-in configs are addressed by their path under the package's ``configs`` folder,
with or without ``.yaml``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from cnmt.errors import ConfigError
from cnmt.schema import build

DATA_ENV = "CNMT_DATA"
_VAR = re.compile(r"\$\{([a-z_]+)\}")


@dataclasses.dataclass(frozen=True)
class ComponentConfig:
    """A component selected in YAML: its registered ``name`` and validated ``params``."""

    name: str
    params: Any

    def create(self, kind: str) -> Any:
        from cnmt.plugins import get_components

        return get_components().create(kind, self.name, self.params)


@dataclasses.dataclass(frozen=True)
class ComponentSection:
    """A top-level key whose value selects a component of ``kind``."""

    kind: str


# Top-level key -> what its value must be: a component selection or a typed dataclass.
# A callable is imported lazily so that the core loads without optional subsystems.
SECTIONS: dict[str, ComponentSection | Callable[[], type[Any]]] = {
    "length_estimator": ComponentSection("length_estimator"),
    "device_policy": ComponentSection("device_policy"),
    "rtt_estimator": ComponentSection("rtt_estimator"),
    "gateway": lambda: importlib.import_module("cnmt.serving.settings").GatewaySettings,
    "cloud": lambda: importlib.import_module("cnmt.serving.settings").CloudSettings,
    "link": lambda: importlib.import_module("cnmt.serving.settings").LinkSettings,
    "device": lambda: importlib.import_module("cnmt.profiles").DeviceSetting,
    "marian": lambda: importlib.import_module("cnmt.exporters.marian").MarianModelConfig,
    "model": lambda: importlib.import_module("cnmt.exporters.model_config").ModelConfig,
    "replay": lambda: importlib.import_module("cnmt.experiments.config").ReplayConfig,
}
# Keys handled by the loader itself.
RESERVED = ("extends", "data_dir", "description")


@dataclasses.dataclass(frozen=True)
class Config:
    """A loaded, validated configuration."""

    source: str
    sections: Mapping[str, Any]
    raw: Mapping[str, Any]
    description: str = ""

    def __contains__(self, key: str) -> bool:
        return key in self.sections

    def __getitem__(self, key: str) -> Any:
        try:
            return self.sections[key]
        except KeyError:
            present = ", ".join(sorted(self.sections)) or "(none)"
            raise ConfigError(
                f"{self.source}: this command needs a `{key}` section; the config has: {present}"
            ) from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.sections.get(key, default)

    def create(self, key: str) -> Any:
        """Instantiate the component selected by component section ``key``."""
        section = SECTIONS[key]
        assert isinstance(section, ComponentSection)
        return self[key].create(section.kind)


def builtin_configs_root() -> Path:
    return Path(str(importlib.resources.files("cnmt.configs")))


def builtin_config_names() -> list[str]:
    root = builtin_configs_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A config file on disk, or a built-in config by name (``default``, ``experiments/gru``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    root = builtin_configs_root()
    for candidate in (root / path, root / path.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    if path.suffix in (".yaml", ".yml") or os.sep in str(name_or_path):
        raise ConfigError(f"{name_or_path}: no such config file")
    raise ConfigError(
        f"{name_or_path}: no such config file or built-in config; built-in: "
        + ", ".join(builtin_config_names())
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _substitute_config_dir(value: Any, folder: Path) -> Any:
    if isinstance(value, str):
        return value.replace("${config_dir}", str(folder))
    if isinstance(value, dict):
        return {k: _substitute_config_dir(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_config_dir(v, folder) for v in value]
    return value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "name" in value and old.get("name") != value["name"]:
                out[key] = value  # another component: the base's params are not its params
            else:
                out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged mapping of ``path`` and its bases, before validation."""
    real = path.resolve()
    if real in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, real))
        raise ConfigError(f"{path}: `extends` forms a cycle: {cycle}")
    data = _substitute_config_dir(_read_yaml(path), real.parent)
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: extends: expected a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = (real.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: extends: base config {base!r} not found (looked at {base_path})")
        merged = _merge(merged, load_raw(base_path, (*_chain, real)))
    return _merge(merged, data)


def data_dir(raw: Mapping[str, Any] | None = None) -> Path | None:
    """The data directory: $CNMT_DATA, else the config's data_dir, else ./data or ../shared/data."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    if raw and isinstance(raw.get("data_dir"), str):
        return Path(raw["data_dir"])
    for candidate in (Path("data"), Path("..") / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _substitute_vars(value: Any, variables: dict[str, str | None], where: str, path: str) -> Any:
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise ConfigError(
                    f"{where}: {path}: unknown variable ${{{name}}}; known: "
                    + ", ".join(f"${{{v}}}" for v in sorted(variables))
                )
            found = variables[name]
            if found is None:
                raise ConfigError(
                    f"{where}: {path}: uses ${{data}} but no data directory is set; set "
                    f"{DATA_ENV}=/path/to/data or `data_dir:` in the config"
                )
            return found

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _substitute_vars(v, variables, where, f"{path}.{k}" if path else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_vars(v, variables, where, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _build_component(kind: str, value: Any, key: str, where: str) -> ComponentConfig:
    from cnmt.plugins import get_components, params_class

    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping with `name` and `params`, got {value!r}")
    unknown = sorted(set(value) - {"name", "params"})
    if unknown:
        raise ConfigError(f"{where}: {key}.{unknown[0]}: unknown key; valid keys: name, params")
    name = value.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: {key}.name: missing or not a string")
    components = get_components()
    try:
        entry = components.get(kind, name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {key}.name: {exc}") from None
    params = build(params_class(entry.cls), value.get("params"), path=f"{key}.params", where=where)
    return ComponentConfig(name=name, params=params)


def build_section(key: str, value: Any, where: str) -> Any:
    """Validate the value of top-level section ``key``."""
    spec = SECTIONS[key]
    if isinstance(spec, ComponentSection):
        return _build_component(spec.kind, value, key, where)
    return build(spec(), value, path=key, where=where)


def load_config(name_or_path: str | os.PathLike[str]) -> Config:
    """Load, merge, substitute and validate a config; raise ConfigError on any problem."""
    path = resolve_config_path(name_or_path)
    where = str(path)
    raw = load_raw(path)
    folder = data_dir(raw)
    raw = _substitute_vars(raw, {"data": str(folder) if folder else None}, where, "")
    valid = sorted((*SECTIONS, *RESERVED))
    sections = {}
    for key, value in raw.items():
        if key in RESERVED:
            continue
        if key not in SECTIONS:
            raise ConfigError(f"{where}: {key}: unknown section; valid: {', '.join(valid)}")
        sections[key] = build_section(key, value, where)
    description = raw.get("description", "")
    return Config(source=where, sections=sections, raw=raw, description=str(description))


def iter_sections() -> Iterator[tuple[str, str]]:
    """(key, what it holds) for each known top-level section, for help texts."""
    for key, spec in sorted(SECTIONS.items()):
        yield key, (f"component ({spec.kind})" if isinstance(spec, ComponentSection) else "mapping")
