"""What every runtime translator offers: the contract between models, profiler and servers."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

if TYPE_CHECKING:
    from cnmt.runtime.manifest import Manifest
    from cnmt.runtime.session import SessionConfig


@dataclass(frozen=True, slots=True)
class Translation:
    """One translated sentence.

    ``source_tokens`` is N and ``output_tokens`` is M, both counted in the model's own tokens
    (EOS excluded), the same units as the model's latency profile. ``seconds`` is the wall time
    of tokenization, encoding and decoding.
    """

    text: str
    source_tokens: int
    output_tokens: int
    seconds: float


class GreedyOutput(NamedTuple):
    """One greedy decode: the output token ids (EOS excluded) and their text."""

    ids: list[int]
    text: str


class Translator(abc.ABC):
    """A loaded model, ready to translate on ONNX Runtime.

    A model family registers its Translator subclass through the ``cnmt_register_translators``
    hook with ``name = family``; :func:`cnmt.runtime.load_translator` picks it by the
    ``family`` in an exported model's manifest and calls :meth:`load`.
    """

    family: ClassVar[str]
    name: ClassVar[str]

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, session_config: SessionConfig) -> Translator:
        """Open the exported model in ``model_dir`` (its manifest already read and checked)."""
        raise NotImplementedError(f"{cls.__qualname__} does not implement Translator.load")

    @property
    @abc.abstractmethod
    def max_source_tokens(self) -> int:
        """The longest input in model tokens; longer texts raise a CnmtError (or are truncated
        where the family documents it)."""

    @abc.abstractmethod
    def count_source_tokens(self, text: str) -> int:
        """N for ``text``, without running the model (cheap: the scheduler calls it per request)."""

    def count_target_tokens(self, text: str) -> int | None:
        """M of a reference translation ``text`` in this model's output tokens, or None when the
        family cannot tell (``cnmt evaluate`` compares M with it)."""
        return None

    @abc.abstractmethod
    def translate(self, text: str) -> Translation:
        """Greedy translation of one sentence; empty text raises a CnmtError."""

    def translate_batch(self, texts: Sequence[str]) -> list[Translation]:
        """Translate several sentences; families with a batched decode override this."""
        return [self.translate(t) for t in texts]

    @abc.abstractmethod
    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        """Encode an input of exactly ``n_tokens`` and decode exactly ``m_tokens`` steps, EOS
        ignored: the unit of work that characterization times."""

    def greedy_outputs(self, texts: Sequence[str], max_new_tokens: int) -> list[GreedyOutput]:
        """Greedy ids and text per text, at most ``max_new_tokens`` each: what comparing two
        exports of one model (fp32 and int8) looks at. Families that offer int8 implement it."""
        raise NotImplementedError(
            f"the {self.family} family does not report its output tokens (greedy_outputs), so "
            "its int8 export cannot be checked against fp32"
        )

    def teacher_forced_picks(
        self, texts: Sequence[str], outputs: Sequence[Sequence[int]]
    ) -> list[list[int]]:
        """Per text, the token this model picks after each prefix of ``outputs`` (fed its
        tokens, not its own): ``len(output) + 1`` picks, the last where EOS would come."""
        raise NotImplementedError(
            f"the {self.family} family does not score given outputs (teacher_forced_picks), so "
            "its int8 export cannot be checked against fp32"
        )
