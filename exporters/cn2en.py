"""Read the trained model of the PyPI package cn2en without importing the package.

``import cn2en.model`` would import matplotlib, pick a CUDA device and unpickle with the full
pickle machinery. Instead the package folder is located with ``importlib.util.find_spec``, the
weights are read with ``torch.load(weights_only=True)`` and the two vocabulary pickles with
:class:`LangUnpickler`, which builds only cn2en's ``Lang`` class (as :class:`Lang`, a plain
holder) and refuses every other global, so a tampered pickle cannot run code.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError

INSTALL_HINT = (
    "install it with `pip install --no-deps cn2en==0.0.118` (newer pip rejects its metadata "
    "otherwise; `scripts/install-cn2en` does this)"
)
FILES = ("model.pth", "input_lang.pkl", "output_lang.pkl")
SOS = 0  # cn2en's SOS_token and EOS_token
EOS = 1
HIDDEN = 256


class Lang:
    """cn2en's vocabulary record: ``word2index``, ``index2word`` and ``n_words``; data only."""

    word2index: dict[str, int]
    index2word: dict[int, str]
    n_words: int


class LangUnpickler(pickle.Unpickler):
    """Unpickles a cn2en vocabulary: the only global it builds is the ``Lang`` class."""

    # cn2en pickled its vocabularies from a script, so the class is recorded as __main__.Lang.
    ALLOWED = {("__main__", "Lang"), ("cn2en.model", "Lang"), ("model", "Lang")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return Lang
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a cn2en vocabulary holds only a Lang object"
        )


def load_lang(path: Path) -> list[str]:
    """The vocabulary in ``path`` as a list of tokens by id."""
    try:
        with path.open("rb") as handle:
            lang = LangUnpickler(handle).load()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: cn2en vocabulary missing; reinstall cn2en: {INSTALL_HINT}"
        ) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a cn2en vocabulary pickle ({exc})") from None
    index2word = getattr(lang, "index2word", None)
    n_words = getattr(lang, "n_words", None)
    if (
        not isinstance(lang, Lang)
        or not isinstance(index2word, dict)
        or not isinstance(n_words, int)
    ):
        raise ConfigError(f"{path}: not a cn2en vocabulary (expected a Lang with index2word)")
    if sorted(index2word) != list(range(n_words)) or not all(
        isinstance(w, str) for w in index2word.values()
    ):
        raise ConfigError(f"{path}: corrupt cn2en vocabulary (ids are not 0..{n_words - 1})")
    return [index2word[i] for i in range(n_words)]


@dataclass(frozen=True)
class Cn2enSource:
    """The files of a cn2en model: ``model.pth`` and the two vocabulary pickles."""

    folder: Path

    @property
    def weights(self) -> Path:
        return self.folder / "model.pth"


def locate(path: str | Path | None = None) -> Cn2enSource:
    """The installed cn2en package folder (found without importing it), or ``path``: a folder
    holding cn2en's three files, or its ``model.pth`` with the pickles beside it."""
    if path is None:
        spec = importlib.util.find_spec("cn2en")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"the cn2en package is not installed; {INSTALL_HINT}")
        folder = Path(next(iter(spec.submodule_search_locations)))
    else:
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"{folder}: not a cn2en model folder, missing {', '.join(missing)}; {INSTALL_HINT}"
        )
    return Cn2enSource(folder)


def load_state(source: Cn2enSource) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder state dict, decoder state dict) from ``model.pth``, tensors only."""
    import torch

    try:
        checkpoint = torch.load(source.weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise ConfigError(f"{source.weights}: cannot read cn2en weights ({exc})") from None
    if not isinstance(checkpoint, dict) or not {"encoder", "decoder"} <= set(checkpoint):
        raise ConfigError(
            f"{source.weights}: expected a dict with `encoder` and `decoder` state dicts"
        )
    return checkpoint["encoder"], checkpoint["decoder"]
