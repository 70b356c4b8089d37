"""matplotlib for the figures the project writes: the pyplot module on the Agg backend (files,
no screen), or a ConfigError that says how to install it."""

from __future__ import annotations

from typing import Any

from cnmt.errors import ConfigError

INSTALL_HINT = "install matplotlib with: pip install 'cnmt[plots]'"


def pyplot() -> Any:
    """``matplotlib.pyplot``, set to render into files."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(f"figures need matplotlib ({exc}); {INSTALL_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
