"""The `model` config section: an RNN architecture to build with random weights and export.

Example (``configs/models/bilstm-de-en.yaml``)::

    model:
      family: bilstm
      name: bilstm-de-en
      source_language: de
      target_language: en
      hidden_size: 500
      layers: 2
      source_vocab: {corpus: ${data}/corpora/iwslt14-de-en/valid.de, size: 10000}
      target_vocab: {corpus: ${data}/corpora/iwslt14-de-en/valid.en, size: 10000}

Vocabularies are the most frequent tokens of the given corpus after tokenization (and BPE when
``bpe_codes`` is set), after the four specials ``<unk> <blank> <s> </s>`` (OpenNMT-py's).
No torch here: `cnmt config validate` checks these files in the core environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnmt.schema import ranged


@dataclass(frozen=True)
class VocabConfig:
    """Build a vocabulary from the most frequent tokens of ``corpus``."""

    corpus: str
    size: int = ranged(low=1, high=1000000)
    max_lines: int | None = ranged(
        None, low=1, high=1000000000
    )  # read only the first lines of a large corpus

    def __post_init__(self) -> None:
        if self.size < 5:
            raise ValueError(f"size must be at least 5 (4 special tokens + 1), got {self.size}")
        if self.max_lines is not None and self.max_lines < 1:
            raise ValueError(f"max_lines must be positive, got {self.max_lines}")


@dataclass(frozen=True)
class ModelConfig:
    """An RNN model family's architecture, vocabularies, tokenizer and limits."""

    family: Literal["bilstm", "gru"]
    name: str
    source_language: str
    target_language: str
    source_vocab: VocabConfig
    target_vocab: VocabConfig
    hidden_size: int = ranged(500, low=1, high=16384)
    embedding_size: int | None = ranged(None, low=1, high=16384)  # default: hidden_size
    layers: int = ranged(2, low=1, high=64)
    lowercase: bool = True
    bpe_codes: str | None = None
    max_source_tokens: int = ranged(256, low=1, high=4096)
    max_output_tokens: int = ranged(250, low=1, high=4096)
    init_range: float = ranged(
        0.1, low=0, high=10, above=True
    )  # weights ~ U(-init_range, init_range), OpenNMT-py's param_init
    seed: int = ranged(0, low=0, high=4294967295)
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size < 2 or self.layers < 1:
            raise ValueError("hidden_size must be at least 2 and layers at least 1")
        if self.family == "bilstm" and self.hidden_size % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size}: a bilstm splits it between two directions, "
                "so it must be even"
            )
        if self.max_source_tokens < 1 or self.max_output_tokens < 1:
            raise ValueError("max_source_tokens and max_output_tokens must be at least 1")

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size or self.hidden_size


@dataclass
class Built:
    """A torch model and everything the manifest says about it."""

    model: Any
    name: str
    source_tokens: list[str]
    target_tokens: list[str]
    special_tokens: dict[str, int]
    source_checksum: str
    max_source_tokens: int
    max_output_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    bpe_codes: Path | None = None
    # More files of the export by manifest role: (file name, contents), e.g. tokenizer models.
    assets: dict[str, tuple[str, bytes]] = field(default_factory=dict)


def config_extra(config: ModelConfig | None) -> dict[str, Any]:
    """The manifest's ``extra`` keys a model config sets (defaults without a config)."""
    if config is None:
        return {
            "source_language": "",
            "target_language": "",
            "lowercase": True,
            "source_eos": False,
        }
    return {
        "source_language": config.source_language,
        "target_language": config.target_language,
        "lowercase": config.lowercase,
        "source_eos": False,
        "description": config.description,
    }
