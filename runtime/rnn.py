"""Greedy decoding of the RNN families (BiLSTM, GRU, cn2en) on ONNX Runtime. No torch.

Each family is two graphs (names fixed here; the exporters import them):

- ``encoder``: ``src_ids`` [batch, src_len] int64 and ``src_lengths`` [batch] int64 in, the
  decoder's initial state out (GRU: ``hidden``; BiLSTM: ``memory_bank``, ``h``, ``c``).
- ``decoder``: one step. ``input_ids`` [batch] (the previous token) and the state in,
  ``log_probs`` [batch, target_vocab] and the next state out. The BiLSTM step also takes the
  attention memory (``memory_bank``, ``src_lengths``), constant over the loop, and carries the
  input-feeding vector ``input_feed``.

The decode loop is the same for all: encode once, start from BOS, feed back the argmax, stop a
row at EOS (its later outputs are ignored while other rows of the batch finish), stop when every
row finished or after ``max_output_tokens`` steps. Forced mode runs exactly M steps and ignores
EOS: the unit of work that characterization times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cnmt.errors import ConfigError
from cnmt.runtime.base import GreedyOutput, Translation, Translator
from cnmt.runtime.manifest import Manifest, file_path, graph_path
from cnmt.runtime.repeated_warnings import MODEL_WARNINGS, shorten
from cnmt.runtime.session import SessionConfig, create_session, resolve_config
from cnmt.runtime.tokenizers import (
    Bpe,
    Cn2enTokenizer,
    SentencePieceTokenizer,
    TextCodec,
    Vocabulary,
    WordTokenizer,
    no_known_token,
)

# The kind of repeated warning (and metric label) for source tokens outside the vocabulary.
DROPPED_TOKENS = "dropped_source_tokens"

ENCODER_INPUTS = ("src_ids", "src_lengths")
GRU_ENCODER_OUTPUTS = ("hidden",)
GRU_DECODER_INPUTS = ("input_ids", "hidden")
GRU_DECODER_OUTPUTS = ("log_probs", "hidden_out")
BILSTM_ENCODER_OUTPUTS = ("memory_bank", "h", "c")
BILSTM_DECODER_INPUTS = ("input_ids", "h", "c", "input_feed", "memory_bank", "src_lengths")
BILSTM_DECODER_OUTPUTS = ("log_probs", "h_out", "c_out", "input_feed_out")


@dataclass
class DecodeResult:
    """Output ids per row and how many decoder steps ran (EOS excluded, except in forced
    mode, where each row holds exactly one token per step)."""

    ids: list[list[int]]
    steps: int


class RnnTranslator(Translator):
    """The shared decode loop; subclasses say how encoder outputs become decoder state."""

    family: ClassVar[str]
    name: ClassVar[str]
    decoder_inputs: ClassVar[tuple[str, ...]]
    decoder_outputs: ClassVar[tuple[str, ...]]
    encoder_outputs: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        manifest: Manifest,
        encoder: Any,
        decoder: Any,
        source: TextCodec,
        target: TextCodec,
        source_eos: bool,
    ) -> None:
        self.manifest = manifest
        self.encoder = encoder
        self.decoder = decoder
        self.source = source
        self.target = target
        self.source_eos = source_eos
        self.bos = manifest.special("bos")
        self.eos = manifest.special("eos")
        self.pad = manifest.special_tokens.get("pad", 0)
        specials = set(manifest.special_tokens.values())
        # Forced runs cycle through ordinary tokens: same work as real text, no special paths.
        self._filler = np.array(
            [i for i in range(len(source.vocab)) if i not in specials][:64] or [self.eos],
            dtype=np.int64,
        )
        self._check_graph_names()
        self._check_special_ids()

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls, model_dir: Path, manifest: Manifest, session_config: SessionConfig
    ) -> RnnTranslator:
        if manifest.family != cls.family:
            raise ConfigError(
                f"{model_dir}: manifest family {manifest.family!r} cannot be opened as "
                f"{cls.family!r}"
            )
        session_config = resolve_config(session_config)
        encoder = create_session(graph_path(model_dir, manifest, "encoder"), session_config)
        decoder = create_session(graph_path(model_dir, manifest, "decoder"), session_config)
        source, target = cls.codecs(model_dir, manifest)
        return cls(
            manifest, encoder, decoder, source, target, bool(manifest.extra.get("source_eos"))
        )

    @classmethod
    def codecs(cls, model_dir: Path, manifest: Manifest) -> tuple[TextCodec, TextCodec]:
        source_vocab = Vocabulary.load(file_path(model_dir, manifest, "source_vocab"))
        target_vocab = Vocabulary.load(file_path(model_dir, manifest, "target_vocab"))
        extra = manifest.extra
        bpe = (
            Bpe.load(file_path(model_dir, manifest, "bpe_codes"))
            if "bpe_codes" in manifest.files
            else None
        )
        if "source_spm" in manifest.files or "target_spm" in manifest.files:
            return cls._sentencepiece_codecs(model_dir, manifest, source_vocab, target_vocab)
        lowercase = bool(extra.get("lowercase", True))
        source = TextCodec(
            WordTokenizer(str(extra.get("source_language", "")), lowercase),
            source_vocab,
            manifest.special_tokens.get("unk"),
            bpe,
        )
        target = TextCodec(
            WordTokenizer(str(extra.get("target_language", "")), lowercase),
            target_vocab,
            manifest.special_tokens.get("unk"),
            bpe,
        )
        return source, target

    @classmethod
    def _sentencepiece_codecs(
        cls,
        model_dir: Path,
        manifest: Manifest,
        source_vocab: Vocabulary,
        target_vocab: Vocabulary,
    ) -> tuple[TextCodec, TextCodec]:
        """Raw text <-> the pieces of one SentencePiece model per side (no word splitting,
        no lowercasing: the models were trained on raw text)."""
        fix = f"export the model again with `cnmt export --family {cls.family}`"
        codecs = []
        for side, vocab in (("source", source_vocab), ("target", target_vocab)):
            if f"{side}_spm" not in manifest.files:
                raise ConfigError(
                    f"{model_dir}: manifest.json names a sentencepiece model for one side only "
                    f"(files.{side}_spm is missing); {fix}"
                )
            path = file_path(model_dir, manifest, f"{side}_spm")
            tokenizer = SentencePieceTokenizer(path, fix)
            pieces = tokenizer.processor.get_piece_size()
            if pieces != len(vocab):
                raise ConfigError(
                    f"{path}: the sentencepiece model has {pieces} pieces but the {side} "
                    f"vocabulary has {len(vocab)}; {fix}"
                )
            codecs.append(TextCodec(tokenizer, vocab, manifest.special_tokens.get("unk")))
        return codecs[0], codecs[1]

    def _check_graph_names(self) -> None:
        for role, session, names in (
            ("encoder", self.encoder, (ENCODER_INPUTS, self.encoder_outputs)),
            ("decoder", self.decoder, (self.decoder_inputs, self.decoder_outputs)),
        ):
            have_in = tuple(i.name for i in session.get_inputs())
            have_out = tuple(o.name for o in session.get_outputs())
            if set(have_in) != set(names[0]) or set(have_out) != set(names[1]):
                raise ConfigError(
                    f"model {self.manifest.name!r}: the {role} graph has inputs {have_in} and "
                    f"outputs {have_out}, but the {self.family} family needs {names[0]} -> "
                    f"{names[1]}; export the model again with `cnmt export --family {self.family}`"
                )

    def _check_special_ids(self) -> None:
        """Every special id of the manifest inside the vocabulary that uses it, and the decoder's
        output as wide as the target vocabulary: a bad manifest fails at load time, not with
        an ONNX Runtime error on every request."""
        where = f"model {self.manifest.name!r}: manifest.json"
        fix = f"export the model again with `cnmt export --family {self.family}`"
        target, source = len(self.target.vocab), len(self.source.vocab)
        uses = [("bos", target, "target"), ("eos", target, "target"), ("pad", source, "source")]
        if self.source_eos:
            uses.append(("eos", source, "source"))
        if "unk" in self.manifest.special_tokens:
            uses += [("unk", source, "source"), ("unk", target, "target")]
        for token, size, side in uses:
            value = self.manifest.special_tokens.get(token, self.pad if token == "pad" else None)
            if value is None:
                continue
            if not 0 <= value < size:
                raise ConfigError(
                    f"{where}: special_tokens.{token} is {value}, outside the {side} "
                    f"vocabulary's ids 0..{size - 1}; {fix}"
                )
        width = self.decoder.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != target:
            raise ConfigError(
                f"{where}: the decoder graph scores {width} target tokens but the target "
                f"vocabulary has {target}; {fix}"
            )

    # -- family specifics ------------------------------------------------------------------

    def initial_state(
        self, encoded: list[np.ndarray], lengths: np.ndarray
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def state_names(self) -> tuple[tuple[str, str], ...]:
        """(decoder output, decoder input) pairs carried from one step to the next."""
        raise NotImplementedError

    # -- Translator ------------------------------------------------------------------------

    @property
    def max_source_tokens(self) -> int:
        return self.manifest.max_source_tokens

    def encode_text(self, text: str, log_dropped: bool = True) -> list[int]:
        """Source ids of ``text`` (no EOS); ConfigError when empty or longer than the limit."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("empty text: give a sentence to translate")
        ids, unknown = self.source.encode(text)
        if unknown and self.source.unk is None:
            if log_dropped:
                MODEL_WARNINGS.warn(
                    self.manifest.name,
                    DROPPED_TOKENS,
                    f"{self.manifest.name}: dropped {len(unknown)} source token(s) not in the "
                    f"vocabulary, as the reference model does: {shorten(unknown)}",
                )
            else:
                MODEL_WARNINGS.seen(self.manifest.name, DROPPED_TOKENS)
        if len(ids) > self.max_source_tokens:
            raise ConfigError(
                f"text has {len(ids)} source tokens; model {self.manifest.name!r} accepts at most "
                f"{self.max_source_tokens} (max_source_tokens in its manifest.json): split it "
                "into shorter sentences"
            )
        known = len(ids) - (len(unknown) if self.source.unk is not None else 0)
        if known == 0:
            # Every token dropped or <unk>: a "translation" would be invented from EOS alone.
            raise ConfigError(no_known_token(self.manifest.name, unknown))
        return ids

    def count_source_tokens(self, text: str) -> int:
        # Counted, not logged: translate() logs them (in the worker that translates).
        return len(self.encode_text(text, log_dropped=False))

    def count_target_tokens(self, text: str) -> int | None:
        return len(self.target.tokens(text))

    def translate(self, text: str) -> Translation:
        return self.translate_batch([text])[0]

    def translate_batch(self, texts: Sequence[str]) -> list[Translation]:
        if isinstance(texts, str):
            raise TypeError("translate_batch takes a list of texts; use translate for one")
        if not texts:
            return []
        start = time.perf_counter()
        sources = [self.encode_text(t) for t in texts]
        result = self.decode(sources)
        words = [self.target.decode(ids) for ids in result.ids]
        seconds = time.perf_counter() - start
        return [
            Translation(text=w, source_tokens=len(s), output_tokens=len(ids), seconds=seconds)
            for w, s, ids in zip(words, sources, result.ids, strict=True)
        ]

    def greedy_outputs(self, texts: Sequence[str], max_new_tokens: int) -> list[GreedyOutput]:
        sources = [self.encode_text(t, log_dropped=False) for t in texts]
        ids = self.decode(sources, max_steps=max_new_tokens).ids
        return [GreedyOutput(row, self.target.decode(row)) for row in ids]

    def teacher_forced_picks(
        self, texts: Sequence[str], outputs: Sequence[Sequence[int]]
    ) -> list[list[int]]:
        picks = []
        for text, output in zip(texts, outputs, strict=True):
            source = self.encode_text(text, log_dropped=False)
            row = np.asarray([[*output, self.eos]], dtype=np.int64)
            picks.append(self.decode([source], forced_steps=row.shape[1], teacher=row).ids[0])
        return picks

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        self.forced(n_tokens, m_tokens)

    def forced(self, n_tokens: int, m_tokens: int) -> DecodeResult:
        """Encode ``n_tokens`` ordinary tokens and decode exactly ``m_tokens`` steps."""
        if n_tokens < 1 or m_tokens < 1:
            raise ConfigError(f"forced run needs N >= 1 and M >= 1, got N={n_tokens}, M={m_tokens}")
        if n_tokens > self.max_source_tokens:
            raise ConfigError(
                f"N={n_tokens} exceeds max_source_tokens={self.max_source_tokens} of "
                f"model {self.manifest.name!r}"
            )
        ids = np.resize(self._filler, n_tokens).tolist()
        return self.decode([ids], forced_steps=m_tokens)

    # -- the decode loop -------------------------------------------------------------------

    def decode(
        self,
        sources: Sequence[Sequence[int]],
        forced_steps: int | None = None,
        max_steps: int | None = None,
        teacher: np.ndarray | None = None,
    ) -> DecodeResult:
        """Greedy decode of a batch of id sequences (EOS appended here when the family wants),
        at most ``max_steps`` (default: the manifest's max_output_tokens) or, forced, exactly
        ``forced_steps``. With ``teacher`` (batch x forced_steps ids), step t is fed
        ``teacher[:, t - 1]`` instead of the previous argmax: the ids are then what the model
        picks after each prefix of the teacher's tokens."""
        suffix = [self.eos] if self.source_eos else []
        rows = [list(s) + suffix for s in sources]
        batch = len(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        src = np.full((batch, int(lengths.max())), self.pad, dtype=np.int64)
        for b, row in enumerate(rows):
            src[b, : len(row)] = row
        encoded = self.encoder.run(
            list(self.encoder_outputs), {"src_ids": src, "src_lengths": lengths}
        )
        feeds = self.initial_state(encoded, lengths)
        carried = self.state_names()
        outputs = [name for name, _ in carried]
        output_names = [self.decoder_outputs[0], *outputs]
        feeds["input_ids"] = np.full(batch, self.bos, dtype=np.int64)
        limit = forced_steps or max_steps or self.manifest.max_output_tokens
        out: list[list[int]] = [[] for _ in range(batch)]
        finished = np.zeros(batch, dtype=bool)
        steps = 0
        run = self.decoder.run
        eos = self.eos
        for _ in range(limit):
            log_probs, *state = run(output_names, feeds)
            steps += 1
            tokens = log_probs.argmax(axis=1)
            if forced_steps is None:
                finished |= tokens == eos
                for b in np.flatnonzero(~finished):
                    out[b].append(int(tokens[b]))
                if finished.all():
                    break
            else:  # EOS ignored: every row keeps every token
                for b in range(batch):
                    out[b].append(int(tokens[b]))
            fed = tokens if teacher is None else teacher[:, steps - 1]
            feeds["input_ids"] = fed.astype(np.int64, copy=False)
            for (_, name), value in zip(carried, state, strict=True):
                feeds[name] = value
        return DecodeResult(ids=out, steps=steps)


class GruTranslator(RnnTranslator):
    """GRU encoder-decoder without attention (PyTorch seq2seq tutorial): word (+ BPE)
    vocabularies, or one SentencePiece model per side (the trained FR-EN model)."""

    family = "gru"
    name = "gru"
    encoder_outputs = GRU_ENCODER_OUTPUTS
    decoder_inputs = GRU_DECODER_INPUTS
    decoder_outputs = GRU_DECODER_OUTPUTS

    def initial_state(
        self, encoded: list[np.ndarray], lengths: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {"hidden": encoded[0]}

    def state_names(self) -> tuple[tuple[str, str], ...]:
        return (("hidden_out", "hidden"),)


class Cn2enTranslator(GruTranslator):
    """The trained ZH->EN GRU of the cn2en package: Chinese characters in, English words out.

    Tokens not in the vocabulary are dropped (as cn2en does) and logged; EOS ends the source.
    """

    family = "cn2en"
    name = "cn2en"

    @classmethod
    def codecs(cls, model_dir: Path, manifest: Manifest) -> tuple[TextCodec, TextCodec]:
        source_vocab = Vocabulary.load(file_path(model_dir, manifest, "source_vocab"))
        target_vocab = Vocabulary.load(file_path(model_dir, manifest, "target_vocab"))
        tokenizer = Cn2enTokenizer()
        return TextCodec(tokenizer, source_vocab, None), TextCodec(tokenizer, target_vocab, None)


class BiLstmTranslator(RnnTranslator):
    """OpenNMT-py style BiLSTM encoder, LSTM decoder with input feeding and global attention."""

    family = "bilstm"
    name = "bilstm"
    encoder_outputs = BILSTM_ENCODER_OUTPUTS
    decoder_inputs = BILSTM_DECODER_INPUTS
    decoder_outputs = BILSTM_DECODER_OUTPUTS

    def initial_state(
        self, encoded: list[np.ndarray], lengths: np.ndarray
    ) -> dict[str, np.ndarray]:
        memory_bank, h, c = encoded
        hidden = h.shape[-1]
        return {
            "h": h,
            "c": c,
            "input_feed": np.zeros((h.shape[1], hidden), dtype=h.dtype),
            "memory_bank": memory_bank,
            "src_lengths": lengths,
        }

    def state_names(self) -> tuple[tuple[str, str], ...]:
        return (("h_out", "h"), ("c_out", "c"), ("input_feed_out", "input_feed"))
