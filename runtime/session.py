"""ONNX Runtime sessions: execution providers in order of preference, thread settings.

A provider that this onnxruntime build knows but cannot use here (``CUDAExecutionProvider`` on
a CPU-only install, or one whose libraries fail to load) is skipped with a
:class:`ProviderFallbackWarning` naming it; the session runs on the next provider in the list,
and on ``CPUExecutionProvider`` when none is left. A name onnxruntime does not know at all is a
typo: :class:`~cnmt.errors.ConfigError` listing the valid names.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Literal

from cnmt.errors import ConfigError

CPU = "CPUExecutionProvider"
INSTALL_HINT = "install ONNX Runtime with: pip install 'cnmt[cpu]' (or 'cnmt[gpu]' for CUDA)"


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider is not usable here; a later one in the list is used."""


@dataclass(frozen=True)
class SessionConfig:
    """How to run graphs: providers by preference, thread counts (0 = ONNX Runtime's default)."""

    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # Idle worker threads spin by default; on a CPU quota (an emulated edge) spinning burns it.
    allow_spinning: bool = True
    optimization: Literal["disable", "basic", "extended", "all"] = "all"

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("providers: give at least one execution provider")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be 0 (default) or positive")


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module, or a ConfigError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"onnxruntime is not installed ({exc}); {INSTALL_HINT}") from None
    return onnxruntime


def session_config(
    providers: str | Sequence[str] | None = None, threads: int | None = None, **options: Any
) -> SessionConfig:
    """A SessionConfig from CLI-style values: a provider or comma list, and intra-op threads."""
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    kwargs: dict[str, Any] = dict(options)
    if providers:
        kwargs["providers"] = tuple(providers)
    if threads is not None:
        kwargs["intra_op_threads"] = threads
    try:
        return SessionConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"session settings: {exc}") from None


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """The requested providers this build can use, in order; warn about each one skipped."""
    ort = import_onnxruntime()
    known = list(ort.get_all_providers())
    available = set(ort.get_available_providers())
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise ConfigError(
            f"unknown execution provider {unknown[0]!r}; valid: {', '.join(known)} "
            f"(available in this onnxruntime build: {', '.join(sorted(available))})"
        )
    usable = [name for name in dict.fromkeys(requested) if name in available]
    skipped = [name for name in requested if name not in available]
    have = ", ".join(sorted(available))
    if not usable:
        warnings.warn(
            f"execution provider {', '.join(skipped)} is not available in this onnxruntime "
            f"build (available: {have}); falling back to {CPU}",
            ProviderFallbackWarning,
            stacklevel=3,
        )
        return [CPU]
    for name in skipped:
        warnings.warn(
            f"execution provider {name} is not available in this onnxruntime build "
            f"(available: {have}); using {usable[0]}",
            ProviderFallbackWarning,
            stacklevel=3,
        )
    return usable


def resolve_config(config: SessionConfig) -> SessionConfig:
    """``config`` with only the providers usable here (warning once about the others), so that
    a model opening several sessions warns once, not per graph."""
    return replace(config, providers=tuple(resolve_providers(config.providers)))


def session_options(config: SessionConfig) -> Any:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.optimization]
    if not config.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: provider fallbacks are reported as warnings
    return options


def create_session(path: str | os.PathLike[str], config: SessionConfig | None = None) -> Any:
    """An InferenceSession for the ONNX file at ``path`` on the first usable providers."""
    config = config or SessionConfig()
    ort = import_onnxruntime()
    providers = resolve_providers(config.providers)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{path}: ONNX graph not found; export the model again with `cnmt export`"
        )
    try:
        session = ort.InferenceSession(
            os.fspath(path), sess_options=session_options(config), providers=providers
        )
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
        raise ConfigError(
            f"{path}: onnxruntime cannot load this graph ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}); the file is corrupt or from an incompatible exporter: "
            "export the model again with `cnmt export`"
        ) from None
    active = session.get_providers()
    for name in providers:
        if name not in active:
            warnings.warn(
                f"execution provider {name} failed to initialise for {os.path.basename(path)} "
                f"(check its libraries, e.g. CUDA/cuDNN/TensorRT); running on {', '.join(active)}",
                ProviderFallbackWarning,
                stacklevel=2,
            )
    return session
