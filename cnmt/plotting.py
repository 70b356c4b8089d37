"""matplotlib for the figures the project writes: the pyplot module on the Agg backend (files,
no screen), or a ConfigError that says how to install it."""

from __future__ import annotations

from typing import Any

from cnmt.errors import ConfigError

INSTALL_HINT = "install matplotlib with: pip install 'cnmt[plots]'"


def available() -> bool:
    """Whether figures can be drawn here (matplotlib is an optional extra)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> Any:
    """``matplotlib.pyplot``, set to render into files."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(f"figures need matplotlib ({exc}); {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
