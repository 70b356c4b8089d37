"""YAML configuration: load safely, resolve ``extends``, substitute variables, validate.

A config file is a mapping of sections. Which top-level keys exist, and the schema of each, is
declared by the subsystems through the plugin hook ``cnmt_register_config_sections`` (`cnmt
plugins` lists them): this module knows none of them. A *component section* selects a
registered component by ``name`` and passes it ``params``, validated against that component's
``Params``::

    extends: serving/default       # optional: a built-in config name or a path relative to
                                   # this file (or a list of them)
    length_estimator:
      name: linear
      params: {gamma: 1.05, delta: 0.8}
    device_policy: cnmt            # a name alone: default params

Merging: a file's own keys override its bases' keys, mappings merge recursively, lists are
replaced, a component selection whose ``name`` changes drops the base's ``params``, and a
top-level section set to ``null`` is removed (``link: null``: this config launches no link).
Strings may use ``${data}`` (the data directory, see :func:`data_dir`) and ``${config_dir}``
(the folder of the file that wrote the string). Built-in configs are addressed by their path
under the package's ``configs`` folder, with or without ``.yaml``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cnmt.errors import ConfigError
from cnmt.registry import ComponentSpec, get_components
from cnmt.schema import build

DATA_ENV = "CNMT_DATA"
DATA_VAR = "${data}"
_VAR = re.compile(r"\$\{([a-z_]+)\}")
# Keys handled by the loader itself.
RESERVED = ("extends", "data_dir", "description")
# Bounds on what one config file may cost to read: YAML aliases let a few hundred bytes stand
# for billions of nodes ("billion laughs"), which every later step (merging, substituting,
# validating) would expand. Real configs are a few KB, a few hundred nodes, a few levels deep.
CONFIG_SUFFIXES = (".yaml", ".yml")
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_NODES = 100_000  # counted with every alias expanded
MAX_CONFIG_DEPTH = 64


@dataclasses.dataclass(frozen=True)
class Config:
    """A loaded, validated configuration: each section's validated value by key."""

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
        """Instantiate the component that section ``key`` selects."""
        spec = self[key]
        if not isinstance(spec, ComponentSpec):
            raise TypeError(f"section {key!r} is not a component selection")
        return spec.create()


# ----------------------------------------------------------------------------- the data folder


def data_dir(raw: Mapping[str, Any] | None = None) -> Path | None:
    """The data directory: $CNMT_DATA, else the config's ``data_dir``, else ``./data`` or
    ``../shared/data`` when one exists, else None."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    if raw and isinstance(raw.get("data_dir"), str):
        return Path(raw["data_dir"])
    for candidate in (Path("data"), Path("..") / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def expand_data(text: str, *, what: str = "", root: Path | None = None) -> str:
    """``text`` with ``${data}`` replaced by the data directory; ConfigError naming ``what``
    (the key or option that holds the text) when it is needed and none is set."""
    if DATA_VAR not in text:
        return text
    root = root if root is not None else data_dir()
    if root is None:
        prefix = f"{what}: " if what else ""
        raise ConfigError(
            f"{prefix}{text} uses {DATA_VAR} but no data directory is set; set "
            f"{DATA_ENV}=/path/to/data (or `data_dir:` in the config)"
        )
    return text.replace(DATA_VAR, str(root))


def portable(text: str) -> str:
    """``text`` with the data directory written as ``${data}``: what files the project writes
    store, so that they read the same on another machine."""
    root = data_dir()
    if root is None:
        return text
    for form in dict.fromkeys((str(Path(root).resolve()), str(root))):
        text = text.replace(form, DATA_VAR)
    return text


def display_path(text: str) -> str:
    """A path (or a tokenizer spec naming paths, ``moses:de+bpe:PATH``) as reports show it:
    normalized, the built-in configs as ``configs/...`` and the data directory as ``${data}``,
    so that nothing of this machine appears in what the project prints or writes."""
    configs = (str(builtin_configs_root()), str(builtin_configs_root().resolve()))

    def one(path: str) -> str:
        if "/" not in path:
            return path
        path = os.path.normpath(path)
        for root in configs:
            if path == root or path.startswith(root + os.sep):
                return "configs" + path[len(root) :]
        return portable(path)

    return re.sub(r"[^:+]+", lambda match: one(match.group(0)), text)


# ----------------------------------------------------------------------------- finding files


def builtin_configs_root() -> Path:
    return Path(str(importlib.resources.files("cnmt.configs")))


def builtin_config_names(folder: str = "") -> list[str]:
    """Built-in config names (``serving/default``), optionally only those under ``folder``."""
    root = builtin_configs_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in (root / folder).rglob("*.yaml"))


def resolve_config_path(
    name_or_path: str | os.PathLike[str], relative_to: Path | None = None
) -> Path:
    """A config file: a path (relative to ``relative_to`` if given, else to the working
    directory) or a built-in config by name (``default``, ``serving/default``)."""
    path = Path(name_or_path)
    local = (relative_to / path) if relative_to is not None and not path.is_absolute() else path
    if local.is_file():
        return local
    root = builtin_configs_root()
    for candidate in (root / path, root / path.with_suffix(".yaml")):
        if not path.is_absolute() and candidate.is_file():
            return candidate
    if path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"{name_or_path}: no such config file (looked at {local})")
    raise ConfigError(
        f"{name_or_path}: no such config file or built-in config; built-in: "
        + ", ".join(builtin_config_names())
    )


# ----------------------------------------------------------------------------- reading YAML


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document whose node graph, with every alias expanded,
    has more than MAX_CONFIG_NODES nodes, nests deeper than MAX_CONFIG_DEPTH or refers to
    itself. The graph is measured after composing (where aliases are still shared references,
    so composing costs only the text's size) and before anything is constructed from it."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes of ``root`` with aliases expanded (each shared node's count is computed
    once, so this is linear in the composed graph) and its depth, without recursion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_CONFIG_NODES:
                raise _Limit(f"it expands to more than {MAX_CONFIG_NODES:,} values (YAML aliases)")
            if depth[key] > MAX_CONFIG_DEPTH:
                raise _Limit(f"it nests deeper than {MAX_CONFIG_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _Limit("a YAML alias refers to a node that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


class _Limit(Exception):
    """A config over one of the reading limits; the message says which."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.suffix not in CONFIG_SUFFIXES:
        # Its content is never shown: a file that is not a config may hold secrets, and the
        # errors below would quote its keys and lines.
        raise ConfigError(
            f"{path}: not a config file (a config is a YAML file whose name ends in "
            f"{' or '.join(CONFIG_SUFFIXES)}); name a config file or a built-in config"
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: a config file is at most {MAX_CONFIG_BYTES // 1024} KiB; this one is "
            "larger: split it, or name large data (traces, corpora) by path instead"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: cannot read config: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Limit as exc:
        raise ConfigError(f"{path}: refused: {exc}; write the values out plainly") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: refused: it nests deeper than {MAX_CONFIG_DEPTH} levels"
        ) from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ConfigError(f"{path}: refused: {str(exc)[:120]}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config must be a mapping of sections, got {type(data).__name__}"
        )
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
        raise ConfigError(
            f"{path}: extends: expected a config (a path or a built-in name) or a list of them, "
            f"got {bases!r}"
        )
    merged: dict[str, Any] = {}
    for base in bases:
        try:
            base_path = resolve_config_path(base, relative_to=real.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: extends: {exc}") from None
        merged = _merge(merged, load_raw(base_path, (*_chain, real)))
    return _merge(merged, data)


def _substitute_vars(value: Any, folder: Path | None, where: str, path: str) -> Any:
    if isinstance(value, str):
        for name in _VAR.findall(value):
            if name != "data":
                raise ConfigError(
                    f"{where}: {path}: unknown variable ${{{name}}}; known: ${{data}}, "
                    "${config_dir}"
                )
        return expand_data(value, what=f"{where}: {path}", root=folder)
    if isinstance(value, dict):
        return {
            k: _substitute_vars(v, folder, where, f"{path}.{k}" if path else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_vars(v, folder, where, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


# ----------------------------------------------------------------------------- validation


def section_keys() -> list[str]:
    """Every top-level key a config may have."""
    return sorted((*get_components().sections(), *RESERVED))


def build_section(key: str, value: Any, where: str) -> Any:
    """Validate the value of top-level section ``key`` against its registered schema."""
    sections = get_components().sections()
    if key not in sections:
        raise ConfigError(f"{where}: {key}: unknown section; valid: {', '.join(section_keys())}")
    return build(sections[key].load(), value, path=key, where=where)


def load_config(name_or_path: str | os.PathLike[str]) -> Config:
    """Load, merge, substitute and validate a config; raise ConfigError on any problem."""
    path = resolve_config_path(name_or_path)
    where = str(path)
    raw = load_raw(path)
    raw = _substitute_vars(raw, data_dir(raw), where, "")
    sections = {
        key: build_section(key, value, where)
        for key, value in raw.items()
        if key not in RESERVED and value is not None
    }
    description = raw.get("description", "")
    return Config(source=where, sections=sections, raw=raw, description=str(description))
