"""C-NMT: collaborative edge-cloud inference of neural machine translation."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("cnmt")
"""Marker for plugin hook implementations: ``@cnmt.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
