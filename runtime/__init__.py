"""Runtime: runs exported models. ONNX Runtime sessions, tokenizers and decode loops.

Only runs models: never imports torch, transformers or ``cnmt.exporters``, also not at call
time (a built-in model is opened from the cache, never exported here), so a gateway runs on
onnxruntime alone. Importing this package does not import onnxruntime either: sessions are
created on demand. May import the core (and ``cnmt.registry`` to find a family's translator).
"""

from __future__ import annotations

from cnmt.runtime.base import Translation, Translator
from cnmt.runtime.manifest import Manifest, load_manifest, write_manifest
from cnmt.runtime.models import BUILTIN_MODELS, cache_dir, load_translator, translator_class
from cnmt.runtime.session import (
    ProviderFallbackWarning,
    SessionConfig,
    create_session,
    session_config,
)

__all__ = [
    "BUILTIN_MODELS",
    "Manifest",
    "ProviderFallbackWarning",
    "SessionConfig",
    "Translation",
    "Translator",
    "cache_dir",
    "create_session",
    "load_manifest",
    "load_translator",
    "session_config",
    "translator_class",
    "write_manifest",
]
