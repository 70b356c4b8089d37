"""Bergamot (Firefox Translations) models on ONNX Runtime: greedy decoding with SSRU states and
Marian's lexical shortlist. No torch.

The exporter (:mod:`cnmt.exporters.bergamot`) writes three graphs:

- ``encoder``: ``src_ids`` [batch, src_len] (sentencepiece ids, ``</s>`` last) and
  ``src_lengths`` [batch] in; the cross-attention keys and values of every decoder layer out
  (``memory_key_1``, ``memory_value_1``, ...; [batch, heads, src_len, head_dim]), computed once
  per sentence instead of once per step.
- ``decoder``: one step. ``input_ids`` [batch] (the previous token; ``start_id``, the
  vocabulary size, at the first step: Marian starts from a zero embedding), ``position`` [1],
  the SSRU state of every layer (``ssru_1``, ``ssru_2``; [batch, 256]), the memory and
  ``src_lengths`` in; ``logits`` [batch, vocab] and the next states (``ssru_1_out``, ...) out.
- ``decoder_shortlist``: the same step with one more input, ``candidates`` [K]: the logits of
  those target words only, [batch, K].

The **lexical shortlist** (Marian's binary ``lex.*.s2t.bin``, copied into the model directory)
lists, for each source word, its likeliest translations; a sentence's candidates are the
``first`` most frequent target words plus the lists of its source words (a few hundred of 32k).
Scoring only those is what makes Bergamot's decoder fast, and the package's engine decodes that
way, so it is the default here too (``shortlist=False`` scores the whole vocabulary).

Decoding follows Marian's settings of these models: greedy (beam 1), ``<unk>`` never chosen, at
most ``max_length_factor`` (2.5) times the source length (with ``</s>``) steps.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cnmt.errors import ConfigError
from cnmt.runtime.base import GreedyOutput, Translation, Translator
from cnmt.runtime.manifest import Manifest, file_path, graph_path
from cnmt.runtime.marian import _load_spm
from cnmt.runtime.session import SessionConfig, create_session, resolve_config
from cnmt.runtime.tokenizers import no_known_token

FAMILY = "bergamot"
REEXPORT = "export the model again with `cnmt export --family bergamot`"
SHORTLIST_MAGIC = 0xF11A48D5013417F5


def encoder_outputs(layers: int) -> tuple[str, ...]:
    return tuple(
        name for layer in range(1, layers + 1) for name in (f"memory_key_{layer}",
                                                            f"memory_value_{layer}")
    )  # fmt: skip


def state_names(layers: int) -> tuple[str, ...]:
    return tuple(f"ssru_{layer}" for layer in range(1, layers + 1))


ENCODER_INPUTS = ("src_ids", "src_lengths")


def decoder_inputs(layers: int, shortlist: bool) -> tuple[str, ...]:
    names = ("input_ids", "position", *state_names(layers), *encoder_outputs(layers))
    return (*names, "src_lengths", *(("candidates",) if shortlist else ()))


def decoder_outputs(layers: int) -> tuple[str, ...]:
    return ("logits", *(f"{name}_out" for name in state_names(layers)))


@dataclass(frozen=True)
class Shortlist:
    """Marian's binary lexical shortlist: per source word, candidate target words."""

    first: int
    best: int
    offsets: np.ndarray  # [source vocab + 1] uint64 into ``words``
    words: np.ndarray  # uint32 target word ids

    @classmethod
    def load(cls, path: Path) -> Shortlist:
        def fail(why: str) -> ConfigError:
            return ConfigError(f"{path}: not a Marian binary shortlist ({why}); {REEXPORT}")

        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the shortlist ({exc}); {REEXPORT}") from None
        if len(blob) < 48:
            raise fail("file too short")
        magic, _checksum, first, best, n_offsets, n_words = struct.unpack_from("<6Q", blob, 0)
        if magic != SHORTLIST_MAGIC:
            raise fail("bad magic number")
        if 48 + 8 * n_offsets + 4 * n_words != len(blob):
            raise fail("sizes do not match the file length")
        offsets = np.frombuffer(blob, dtype="<u8", count=n_offsets, offset=48)
        words = np.frombuffer(blob, dtype="<u4", count=n_words, offset=48 + 8 * n_offsets)
        if (
            n_offsets < 2
            or int(offsets[-1]) != n_words
            or np.any(np.diff(offsets.astype(np.int64)) < 0)
        ):
            raise fail("offsets out of order")
        return cls(int(first), int(best), offsets, words)

    def candidates(self, sources: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
        """Sorted candidate target ids for a batch: the ``first`` most frequent words and the
        shortlist of every source word (Marian takes the union over the batch too)."""
        parts = [np.arange(min(self.first, vocab_size), dtype=np.int64)]
        limit = len(self.offsets) - 1
        for word in {int(w) for row in sources for w in row}:
            if 0 <= word < limit:
                start, end = int(self.offsets[word]), int(self.offsets[word + 1])
                parts.append(self.words[start:end].astype(np.int64))
        chosen = np.unique(np.concatenate(parts))
        return chosen[chosen < vocab_size]


@dataclass
class GraphTimes:
    """Seconds spent in each graph (and outside them) while decoding: the benchmark's split."""

    encoder: float = 0.0
    decoder: float = 0.0
    loop: float = 0.0  # argmax, candidate bookkeeping, feeds


class BergamotTranslator(Translator):
    """A Bergamot model (Marian transformer encoder, SSRU decoder): greedy on ONNX Runtime.

    N counts the source sentencepiece tokens without ``</s>``; M the generated tokens without
    ``</s>``. Inputs longer than ``max_source_tokens`` raise a ConfigError.
    """

    family: ClassVar[str] = FAMILY
    name: ClassVar[str] = FAMILY

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        session_config: SessionConfig,
        shortlist: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        extra = manifest.extra
        self.layers = int(extra.get("decoder_layers", 0))
        self.vocab_size = int(extra.get("vocab_size", 0))
        self.state_dim = int(extra.get("dim", 0))
        if self.layers < 1 or self.vocab_size < 2 or self.state_dim < 1:
            raise ConfigError(
                f"{self.model_dir}: manifest.json extra lacks decoder_layers, vocab_size or dim; "
                f"{REEXPORT}"
            )
        self.length_factor = float(extra.get("max_length_factor", 2.5))
        self.eos = manifest.special("eos")
        self.unk = manifest.special("unk")
        self.start = manifest.special("start")
        self.spm = _load_spm(file_path(self.model_dir, manifest, "spm"))
        if self.spm.get_piece_size() != self.vocab_size:
            raise ConfigError(
                f"{self.model_dir}: the sentencepiece model has {self.spm.get_piece_size()} "
                f"pieces, the manifest's vocab_size is {self.vocab_size}; {REEXPORT}"
            )
        session_config = resolve_config(session_config)
        self.encoder = create_session(
            graph_path(self.model_dir, manifest, "encoder"), session_config
        )
        self.shortlist: Shortlist | None = None
        role = "decoder"
        if shortlist:
            self.shortlist = Shortlist.load(file_path(self.model_dir, manifest, "shortlist"))
            role = "decoder_shortlist"
        self.decoder = create_session(graph_path(self.model_dir, manifest, role), session_config)
        self._check_graphs(role)
        self.times = GraphTimes()
        ordinary = np.arange(self.vocab_size, dtype=np.int64)
        self._filler = ordinary[(ordinary != self.eos) & (ordinary != self.unk)][100:1100]

    def _check_graphs(self, role: str) -> None:
        for name, session, (inputs, outputs) in (
            ("encoder", self.encoder, (ENCODER_INPUTS, encoder_outputs(self.layers))),
            (
                role,
                self.decoder,
                (
                    decoder_inputs(self.layers, role == "decoder_shortlist"),
                    decoder_outputs(self.layers),
                ),
            ),
        ):
            have_in = tuple(i.name for i in session.get_inputs())
            have_out = tuple(o.name for o in session.get_outputs())
            if have_in != inputs or have_out != outputs:
                raise ConfigError(
                    f"model {self.manifest.name!r}: the {name} graph has inputs {have_in} and "
                    f"outputs {have_out}, the bergamot family needs {inputs} -> {outputs}; "
                    f"{REEXPORT}"
                )

    @classmethod
    def load(
        cls, model_dir: Path, manifest: Manifest, session_config: SessionConfig
    ) -> BergamotTranslator:
        return cls(model_dir, manifest, session_config)

    # -- text ------------------------------------------------------------------------------

    @property
    def max_source_tokens(self) -> int:
        return self.manifest.max_source_tokens

    def source_ids(self, text: str) -> list[int]:
        """Sentencepiece ids of ``text`` without ``</s>``; ConfigError when empty, unknown or
        too long."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"cannot translate an empty text ({text!r}); give at least one word")
        ids = list(self.spm.encode(text))
        if ids and all(i == self.unk for i in ids):
            pieces = self.spm.encode(text, out_type=str)
            raise ConfigError(no_known_token(self.manifest.name, pieces))
        if len(ids) > self.max_source_tokens:
            raise ConfigError(
                f"text has {len(ids)} source tokens; model {self.manifest.name!r} accepts at most "
                f"{self.max_source_tokens} (max_source_tokens in its manifest.json): split it "
                "into shorter sentences"
            )
        return ids

    def count_source_tokens(self, text: str) -> int:
        return len(self.source_ids(text))

    def count_target_tokens(self, text: str) -> int | None:
        return len(self.spm.encode(text))

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self.spm.decode([int(i) for i in ids]))

    def translate(self, text: str) -> Translation:
        return self.translate_batch([text])[0]

    def translate_batch(self, texts: Sequence[str]) -> list[Translation]:
        if isinstance(texts, str):
            raise TypeError("translate_batch takes a list of texts; use translate for one")
        if not texts:
            return []
        start = time.perf_counter()
        sources = [self.source_ids(t) for t in texts]
        outputs = self.decode(sources)
        seconds = time.perf_counter() - start
        return [
            Translation(
                text=self.detokenize(ids),
                source_tokens=len(src),
                output_tokens=len(ids),
                seconds=seconds,
            )
            for src, ids in zip(sources, outputs, strict=True)
        ]

    def greedy_outputs(self, texts: Sequence[str], max_new_tokens: int) -> list[GreedyOutput]:
        # One sentence at a time: the shortlist of a batch is the union of its sentences' lists,
        # so a sentence decoded in a batch may pick a word its own list lacks, and its
        # teacher-forced picks (decoded alone) would not be comparable.
        rows = [self.decode([self.source_ids(t)])[0][:max_new_tokens] for t in texts]
        return [GreedyOutput(row, self.detokenize(row)) for row in rows]

    def teacher_forced_picks(
        self, texts: Sequence[str], outputs: Sequence[Sequence[int]]
    ) -> list[list[int]]:
        picks = []
        for text, output in zip(texts, outputs, strict=True):
            row = [*map(int, output), self.eos]
            picks.append(self.decode([self.source_ids(text)], len(row), teacher=[row])[0])
        return picks

    # -- decoding --------------------------------------------------------------------------

    def step_limit(self, n_tokens: int) -> int:
        """Marian's length limit: ``max_length_factor`` times the source with ``</s>``."""
        return max(
            1, min(self.manifest.max_output_tokens, int(self.length_factor * (n_tokens + 1)))
        )

    def decode(
        self,
        sources: Sequence[Sequence[int]],
        forced_steps: int | None = None,
        teacher: Sequence[Sequence[int]] | None = None,
    ) -> list[list[int]]:
        """Greedy output ids (no ``</s>``) of a batch of source ids (no ``</s>``); forced: exactly
        ``forced_steps`` tokens per row, ``</s>`` never chosen. With ``teacher`` (per row,
        ``forced_steps`` ids), step t + 1 is fed ``teacher[b][t]`` instead of the pick, and
        ``</s>`` may be picked: the ids are what the model picks after each prefix of the
        teacher's tokens (how int8 is checked against fp32)."""
        clock = time.perf_counter
        t0 = clock()
        rows = [[*map(int, s), self.eos] for s in sources]
        batch = len(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        src = np.full((batch, int(lengths.max())), self.eos, dtype=np.int64)
        for b, row in enumerate(rows):
            src[b, : len(row)] = row
        t1 = clock()
        memory = self.encoder.run(None, {"src_ids": src, "src_lengths": lengths})
        t2 = clock()
        feeds: dict[str, Any] = {"src_lengths": lengths}
        feeds.update(zip(encoder_outputs(self.layers), memory, strict=True))
        states = state_names(self.layers)
        for name in states:
            feeds[name] = np.zeros((batch, self.state_dim), dtype=np.float32)
        banned = [self.unk] + ([self.eos] if forced_steps is not None and teacher is None else [])
        fed = None if teacher is None else np.asarray(teacher, dtype=np.int64)
        if self.shortlist is not None:
            # A banned word is left out of the candidates: nothing to mask at each step.
            ids = self.shortlist.candidates(rows, self.vocab_size)
            ids = ids[~np.isin(ids, banned)]
            feeds["candidates"] = ids
        else:
            ids = np.arange(self.vocab_size, dtype=np.int64)
        banned_columns = np.flatnonzero(np.isin(ids, banned))
        eos_column = np.flatnonzero(ids == self.eos)
        limits = np.array(
            [forced_steps or self.step_limit(len(r) - 1) for r in rows], dtype=np.int64
        )
        out: list[list[int]] = [[] for _ in range(batch)]
        finished = np.zeros(batch, dtype=bool)
        tokens = np.full(batch, self.start, dtype=np.int64)
        position = np.zeros(1, dtype=np.int64)
        outputs = list(decoder_outputs(self.layers))
        run = self.decoder.run
        decoder_seconds = 0.0
        for step in range(int(limits.max())):
            feeds["input_ids"] = tokens
            position[0] = step
            feeds["position"] = position
            s0 = clock()
            logits, *next_states = run(outputs, feeds)
            decoder_seconds += clock() - s0
            if banned_columns.size:
                logits[:, banned_columns] = -np.inf
            best = logits.argmax(axis=1)
            tokens = ids[best]
            if forced_steps is None and eos_column.size:
                finished |= best == eos_column[0]
            for b in np.flatnonzero(~finished):
                out[b].append(int(tokens[b]))
            if fed is not None:
                tokens = fed[:, step]
            finished |= step + 1 >= limits
            if finished.all():
                break
            feeds.update(zip(states, next_states, strict=True))
        end = clock()
        self.times.encoder += t2 - t1
        self.times.decoder += decoder_seconds
        self.times.loop += (end - t0) - (t2 - t1) - decoder_seconds
        return out

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        if not 1 <= n_tokens <= self.max_source_tokens:
            raise ConfigError(
                f"n_tokens={n_tokens}: must be between 1 and {self.max_source_tokens}"
            )
        if not 1 <= m_tokens <= self.manifest.max_output_tokens:
            raise ConfigError(
                f"m_tokens={m_tokens}: must be between 1 and {self.manifest.max_output_tokens}"
            )
        self.decode([np.resize(self._filler, n_tokens).tolist()], forced_steps=m_tokens)
