"""Runtime: ONNX Runtime sessions, tokenizers and decode loops. Never imports torch.

Importing this package does not import onnxruntime either: sessions are created on demand.
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
