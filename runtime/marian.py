"""MarianMT on ONNX Runtime: sentencepiece tokenization and a greedy decode loop with a KV cache.

Nothing here imports torch or transformers: an edge gateway translates with ``onnxruntime``,
``sentencepiece`` and ``numpy`` only. The exporter (:mod:`cnmt.exporters.marian`) writes the
model directory this module reads: three graphs exported by optimum-onnx (``encoder``,
``decoder`` without past, ``decoder_with_past``), the tokenizer files and ``manifest.json``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cnmt.errors import ConfigError
from cnmt.files import read_json
from cnmt.runtime.base import GreedyOutput, Translation, Translator
from cnmt.runtime.manifest import Manifest, file_path, graph_path
from cnmt.runtime.session import SessionConfig, create_session
from cnmt.runtime.tokenizers import no_known_token

FAMILY = "marian"
SPIECE_UNDERLINE = "\u2581"
# The same cleanup transformers applies when a tokenizer sets clean_up_tokenization_spaces.
_CLEANUP = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip
REEXPORT = "export the model again with `cnmt export --family marian`"


def _import_sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError as exc:
        raise ConfigError(
            f"the marian family needs sentencepiece ({exc}); install it with: "
            "pip install 'sentencepiece>=0.2'"
        ) from None
    return sentencepiece


def _load_spm(path: Path) -> Any:
    spm = _import_sentencepiece()
    if not path.is_file():
        raise ConfigError(f"{path}: sentencepiece model not found; {REEXPORT}")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise ConfigError(
            f"{path}: not a valid sentencepiece model ({str(exc).strip()[:200]}); {REEXPORT}"
        ) from None
    return processor


def _load_json_mapping(path: Path) -> dict[str, Any]:
    return read_json(path, what="tokenizer file", fix=REEXPORT)


def _load_vocab(path: Path) -> dict[str, int]:
    data = _load_json_mapping(path)
    for piece, index in data.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ConfigError(
                f"{path}: entry {piece!r} maps to {index!r}, not a token id; {REEXPORT}"
            )
    return data


def _token_text(value: Any, default: str) -> str:
    """A special token from tokenizer_config.json: a string or a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


class MarianTokenizer:
    """Marian's sentencepiece tokenization, equal to transformers' ``MarianTokenizer``.

    Encoding: the text is split around literal special tokens (``</s>``, ``<unk>``, ``<pad>``),
    which map to their own ids; in each remaining chunk a leading ``>>code<<`` (a target
    language code of multilingual models) becomes one token; the rest is cut into pieces by the
    *source* sentencepiece model and each piece is looked up in ``vocab.json`` (a missing piece
    becomes ``<unk>``); ``</s>`` is appended. Decoding drops special ids and ids the vocabulary
    lacks, joins the pieces with the *target* sentencepiece model and turns ``\u2581`` into
    spaces. Texts are not normalized (transformers does not call Moses normalization either).
    """

    def __init__(
        self,
        source_spm: Path,
        target_spm: Path,
        vocab: Path,
        target_vocab: Path | None = None,
        tokenizer_config: Path | None = None,
    ) -> None:
        config = _load_json_mapping(tokenizer_config) if tokenizer_config else {}
        self.eos_token = _token_text(config.get("eos_token"), "</s>")
        self.unk_token = _token_text(config.get("unk_token"), "<unk>")
        self.pad_token = _token_text(config.get("pad_token"), "<pad>")
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._source = _load_spm(source_spm)
        self._target = _load_spm(target_spm)
        self.vocab = _load_vocab(vocab)
        for token in (self.eos_token, self.unk_token, self.pad_token):
            if token not in self.vocab:
                raise ConfigError(f"{vocab}: special token {token!r} is missing; {REEXPORT}")
        self.eos_id = self.vocab[self.eos_token]
        self.unk_id = self.vocab[self.unk_token]
        self.pad_id = self.vocab[self.pad_token]
        special = (self.eos_token, self.unk_token, self.pad_token)
        self._special_ids = {self.vocab[t]: t for t in special}
        self._special_split = re.compile("(" + "|".join(re.escape(t) for t in special) + ")")
        decode_vocab = _load_vocab(target_vocab) if target_vocab else self.vocab
        self._pieces = {index: piece for piece, index in decode_vocab.items()}

    def _chunk_ids(self, chunk: str) -> list[int]:
        ids = []
        if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:
            ids.append(self.vocab.get(chunk[: end + 2], self.unk_id))
            chunk = chunk[end + 2 :]
        pieces = self._source.encode(chunk, out_type=str)
        vocab, unk = self.vocab, self.unk_id
        ids.extend(vocab.get(piece, unk) for piece in pieces)
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Source token ids of ``text`` without the final ``</s>``."""
        ids: list[int] = []
        for chunk in self._special_split.split(text):
            if not chunk:
                continue
            if chunk in self.vocab and self.vocab[chunk] in self._special_ids:
                ids.append(self.vocab[chunk])
            else:
                ids.extend(self._chunk_ids(chunk))
        return ids

    def unknown(self, text: str) -> list[str]:
        """The source pieces of ``text`` that are not in the vocabulary (they become <unk>)."""
        return [
            piece
            for chunk in self._special_split.split(text)
            if chunk
            for piece in self._source.encode(chunk, out_type=str)
            if piece not in self.vocab
        ]

    def encode(self, text: str) -> list[int]:
        """Model input ids of ``text``: its tokens followed by ``</s>``."""
        return [*self.tokenize(text), self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, skipping special tokens (as ``skip_special_tokens=True``)."""
        pieces = []
        for index in ids:
            index = int(index)
            if index in self._special_ids:
                continue
            piece = self._pieces.get(index, self.unk_token)
            if piece in (self.eos_token, self.unk_token, self.pad_token):
                continue
            pieces.append(piece)
        text = self._target.decode_pieces(pieces).replace(SPIECE_UNDERLINE, " ").strip()
        if self.clean_up_spaces:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text


class MarianDecoder:
    """Greedy decoding of an exported Marian model on ONNX Runtime.

    The encoder runs once. The first decoder step runs the graph without past (it also returns
    the cross-attention keys/values of the encoder output); every later step feeds one token per
    sequence to ``decoder_with_past`` together with the cached self-attention keys/values and
    the (constant) cross-attention ones. Through IO binding, each step's ``present`` tensors stay
    ONNX Runtime values that are bound directly as the next step's ``past`` inputs, the logits
    land in one preallocated buffer, and the next-token ids are written into one bound array in
    place: no per-step copy of the cache through numpy. Finished sequences are fed ``<pad>``
    (as transformers does). ``suppressed`` token ids (Marian's ``bad_words_ids``: ``<pad>``)
    never win the argmax; in forced mode ``</s>`` never does either, so exactly M tokens come out.
    """

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        session_config: SessionConfig,
    ) -> None:
        self.manifest = manifest
        self.encoder = create_session(graph_path(model_dir, manifest, "encoder"), session_config)
        self.decoder = create_session(graph_path(model_dir, manifest, "decoder"), session_config)
        self.decoder_with_past = create_session(
            graph_path(model_dir, manifest, "decoder_with_past"), session_config
        )
        self.eos_id = manifest.special("eos")
        self.pad_id = manifest.special("pad")
        self.start_id = manifest.special("decoder_start")
        self.vocab_size = int(manifest.extra.get("vocab_size", 0))
        self.suppressed = np.asarray(manifest.extra.get("suppressed_token_ids", []), np.int64)
        self._check_graphs()
        self._present_names = [n for n in self._output_names(self.decoder) if n != "logits"]
        self._self_attention = [n for n in self._present_names if ".decoder." in n]
        self._cross_attention = [n for n in self._present_names if ".encoder." in n]
        past_outputs = [n for n in self._output_names(self.decoder_with_past) if n != "logits"]
        if sorted(past_outputs) != sorted(self._self_attention):
            raise ConfigError(
                f"{model_dir}: decoder_with_past returns {past_outputs}, expected the decoder "
                f"self-attention cache {self._self_attention}; {REEXPORT}"
            )

    @staticmethod
    def _output_names(session: Any) -> list[str]:
        return [o.name for o in session.get_outputs()]

    def _check_graphs(self) -> None:
        expected = {
            "encoder": (self.encoder, {"input_ids", "attention_mask"}),
            "decoder": (
                self.decoder,
                {"input_ids", "encoder_hidden_states", "encoder_attention_mask"},
            ),
            "decoder_with_past": (self.decoder_with_past, {"input_ids", "encoder_attention_mask"}),
        }
        for role, (session, needed) in expected.items():
            names = {i.name for i in session.get_inputs()}
            if not needed <= names:
                raise ConfigError(
                    f"graph {role!r} of {self.manifest.name!r} lacks inputs "
                    f"{sorted(needed - names)} (has {sorted(names)}); {REEXPORT}"
                )
        logits = self.decoder.get_outputs()[0]
        if logits.name != "logits":
            raise ConfigError(f"decoder graph: first output is {logits.name!r}, not 'logits'")
        if logits.type != "tensor(float)":
            # The decode loop binds a float32 logits buffer (int8 graphs keep fp32 outputs).
            raise ConfigError(
                f"decoder graph of {self.manifest.name!r}: logits are {logits.type}, but this "
                f"runtime decodes float32 logits; {REEXPORT}"
            )
        if isinstance(logits.shape[-1], int):
            self.vocab_size = logits.shape[-1]
        if self.vocab_size <= 0:
            raise ConfigError(f"cannot tell the vocabulary size of {self.manifest.name!r}")

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.encoder.run(
            ["last_hidden_state"], {"input_ids": input_ids, "attention_mask": attention_mask}
        )[0]

    def _pick(self, logits: np.ndarray, forced: bool) -> np.ndarray:
        if self.suppressed.size:
            logits[:, self.suppressed] = -np.inf
        if forced:
            logits[:, self.eos_id] = -np.inf
        return logits.argmax(axis=-1)

    def greedy(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        max_new_tokens: int,
        forced: bool = False,
    ) -> np.ndarray:
        """Generated ids, shape (batch, steps), steps <= max_new_tokens.

        Unforced, decoding stops once every sequence has produced ``</s>`` (kept in the output,
        followed by ``<pad>`` for sequences that finished earlier); forced, it runs exactly
        ``max_new_tokens`` steps and never produces ``</s>``.
        """
        return self._decode(input_ids, attention_mask, max_new_tokens, forced, None, None)

    def teacher_forced_logits(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, decoder_input_ids: np.ndarray
    ) -> np.ndarray:
        """Raw logits (batch, steps, vocab) when the decoder is fed ``decoder_input_ids``
        (starting with the decoder start token) one step at a time, as in decoding."""
        collected: list[np.ndarray] = []
        steps = decoder_input_ids.shape[1]
        self._decode(input_ids, attention_mask, steps, False, decoder_input_ids, collected)
        return np.stack(collected, axis=1)

    def _decode(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        max_new_tokens: int,
        forced: bool,
        teacher: np.ndarray | None,
        collected: list[np.ndarray] | None,
    ) -> np.ndarray:
        batch = input_ids.shape[0]
        hidden = self.encode(input_ids, attention_mask)
        out = np.full((batch, max_new_tokens), self.pad_id, dtype=np.int64)
        finished = np.zeros(batch, dtype=bool)
        # One bound array holds the token fed at each step; it is rewritten in place.
        step_ids = np.full((batch, 1), self.start_id, dtype=np.int64)
        if teacher is not None:
            step_ids[:, 0] = teacher[:, 0]
        logits = np.empty((batch, 1, self.vocab_size), dtype=np.float32)

        first = self.decoder.io_binding()
        first.bind_cpu_input("input_ids", step_ids)
        first.bind_cpu_input("encoder_hidden_states", hidden)
        first.bind_cpu_input("encoder_attention_mask", attention_mask)
        self._bind_logits(first, logits)
        for name in self._present_names:
            first.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(first)
        present = dict(zip(self._present_names, first.get_outputs()[1:], strict=True))

        step = self.decoder_with_past.io_binding()
        step.bind_cpu_input("input_ids", step_ids)
        step.bind_cpu_input("encoder_attention_mask", attention_mask)
        for name in self._cross_attention:
            step.bind_ortvalue_input(_past_name(name), present[name])
        steps = max_new_tokens
        for t in range(max_new_tokens):
            if collected is not None:
                collected.append(logits[:, -1, :].copy())
            next_ids = self._pick(logits[:, -1, :], forced)
            next_ids[finished] = self.pad_id
            out[:, t] = next_ids
            if not forced:
                finished |= next_ids == self.eos_id
                if finished.all() and teacher is None:
                    steps = t + 1
                    break
            if t + 1 == max_new_tokens:
                break
            step_ids[:, 0] = next_ids if teacher is None else teacher[:, t + 1]
            for name in self._self_attention:
                step.bind_ortvalue_input(_past_name(name), present[name])
            step.clear_binding_outputs()
            self._bind_logits(step, logits)
            for name in self._self_attention:
                step.bind_output(name, "cpu")
            self.decoder_with_past.run_with_iobinding(step)
            present.update(zip(self._self_attention, step.get_outputs()[1:], strict=True))
        return out[:, :steps]

    @staticmethod
    def _bind_logits(binding: Any, logits: np.ndarray) -> None:
        binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)


def _past_name(present_name: str) -> str:
    return "past_key_values." + present_name.removeprefix("present.")


class MarianTranslator(Translator):
    """MarianMT (e.g. opus-mt-en-zh): greedy translation on ONNX Runtime.

    N counts the source sentencepiece tokens without ``</s>``; M the generated tokens without
    ``</s>``. Inputs longer than ``max_source_tokens`` (the positional table minus ``</s>``)
    raise a ConfigError: they are never silently truncated.
    """

    family: ClassVar[str] = FAMILY
    name: ClassVar[str] = FAMILY

    def __init__(
        self,
        model_dir: str | Path,
        manifest: Manifest,
        session_config: SessionConfig | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        files = manifest.files
        self.tokenizer = MarianTokenizer(
            source_spm=file_path(self.model_dir, manifest, "source_spm"),
            target_spm=file_path(self.model_dir, manifest, "target_spm"),
            vocab=file_path(self.model_dir, manifest, "vocab"),
            target_vocab=(
                file_path(self.model_dir, manifest, "target_vocab")
                if "target_vocab" in files
                else None
            ),
            tokenizer_config=(
                file_path(self.model_dir, manifest, "tokenizer_config")
                if "tokenizer_config" in files
                else None
            ),
        )
        self.decoder = MarianDecoder(self.model_dir, manifest, session_config or SessionConfig())
        self.encoder = self.decoder.encoder  # its providers are what `cnmt translate -v` shows
        self._check_special_ids()
        limit = manifest.max_output_tokens
        if max_output_tokens is not None:
            if not 1 <= max_output_tokens <= limit:
                raise ConfigError(
                    f"max_output_tokens={max_output_tokens}: must be between 1 and {limit} "
                    f"(the decoder's positional table of {manifest.name!r})"
                )
            limit = max_output_tokens
        self.max_output_tokens = limit
        # Synthetic inputs of run_forced cycle through the first 1000 ordinary piece ids.
        specials = {self.tokenizer.eos_id, self.tokenizer.unk_id, self.tokenizer.pad_id}
        ordinary = sorted(i for i in self.tokenizer.vocab.values() if i not in specials)
        self._filler_ids = np.asarray(ordinary[:1000], dtype=np.int64)

    def _check_special_ids(self) -> None:
        """The manifest's special ids inside the decoder's output and equal to the vocabulary's
        own: a bad manifest fails at load time, not with ONNX Runtime errors on each request."""
        size = self.decoder.vocab_size
        vocab_ids = {"eos": self.tokenizer.eos_id, "pad": self.tokenizer.pad_id}
        for token in ("eos", "pad", "decoder_start"):
            value = self.manifest.special(token)
            if not 0 <= value < size or vocab_ids.get(token, value) != value:
                raise ConfigError(
                    f"model {self.manifest.name!r}: manifest.json special_tokens.{token} is "
                    f"{value}, but the decoder scores ids 0..{size - 1} and the vocabulary's "
                    f"{token} is {vocab_ids.get(token, '(none)')}; {REEXPORT}"
                )

    @classmethod
    def load(
        cls, model_dir: Path, manifest: Manifest, session_config: SessionConfig
    ) -> MarianTranslator:
        return cls(model_dir, manifest, session_config)

    @property
    def max_source_tokens(self) -> int:
        return self.manifest.max_source_tokens

    def count_source_tokens(self, text: str) -> int:
        ids = self.tokenizer.tokenize(text)
        self._check_known(text, ids)
        return len(ids)

    def count_target_tokens(self, text: str) -> int | None:
        return len(self.tokenizer._target.encode(text))

    def _check_known(self, text: str, ids: Sequence[int]) -> None:
        """ConfigError naming the pieces when every token of ``text`` is ``<unk>``: a
        "translation" of it would be invented."""
        if ids and all(i == self.tokenizer.unk_id for i in ids):
            raise ConfigError(no_known_token(self.manifest.name, self.tokenizer.unknown(text)))

    def _source_ids(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"cannot translate an empty text ({text!r}); give at least one word")
        ids = self.tokenizer.encode(text)
        self._check_known(text, ids[:-1])  # ids end with </s>
        if len(ids) - 1 > self.max_source_tokens:
            raise ConfigError(
                f"input of {len(ids) - 1} tokens is longer than the {self.max_source_tokens} "
                f"tokens {self.manifest.name!r} accepts; split the text into shorter sentences"
            )
        return ids

    def translate(self, text: str) -> Translation:
        return self.translate_batch([text])[0]

    def translate_batch(self, texts: Sequence[str]) -> list[Translation]:
        """Translate ``texts`` in one batch (right-padded with an attention mask).

        ``seconds`` of each result is the wall time of the whole batch.
        """
        if isinstance(texts, str):
            raise ConfigError("translate_batch takes a list of texts, not one string")
        if not texts:
            return []
        start = time.perf_counter()
        sources = [self._source_ids(t) for t in texts]
        input_ids, attention_mask = self._pad(sources)
        generated = self.decoder.greedy(input_ids, attention_mask, self.max_output_tokens)
        seconds = time.perf_counter() - start
        results = []
        for ids, row in zip(sources, generated, strict=True):
            tokens = _until_eos(row, self.decoder.eos_id)
            results.append(
                Translation(
                    text=self.tokenizer.decode(tokens),
                    source_tokens=len(ids) - 1,
                    output_tokens=len(tokens),
                    seconds=seconds,
                )
            )
        return results

    def generate_ids(
        self, texts: Sequence[str], max_new_tokens: int, forced: bool = False
    ) -> list[list[int]]:
        """Generated ids per text (through ``</s>`` when produced): for validation and tests."""
        sources = [self._source_ids(t) for t in texts]
        input_ids, attention_mask = self._pad(sources)
        generated = self.decoder.greedy(input_ids, attention_mask, max_new_tokens, forced)
        eos = self.decoder.eos_id
        return [[*_until_eos(row, eos), eos] if eos in row else row.tolist() for row in generated]

    def greedy_outputs(self, texts: Sequence[str], max_new_tokens: int) -> list[GreedyOutput]:
        eos = self.decoder.eos_id
        rows = self.generate_ids(texts, max_new_tokens)
        ids = [row[:-1] if row and row[-1] == eos else row for row in rows]
        return [GreedyOutput(row, self.tokenizer.decode(row)) for row in ids]

    def teacher_forced_picks(
        self, texts: Sequence[str], outputs: Sequence[Sequence[int]]
    ) -> list[list[int]]:
        picks = []
        for text, output in zip(texts, outputs, strict=True):
            source = np.asarray([self._source_ids(text)], dtype=np.int64)
            fed = np.asarray([[self.decoder.start_id, *output]], dtype=np.int64)
            logits = self.decoder.teacher_forced_logits(source, np.ones_like(source), fed)[0]
            if self.decoder.suppressed.size:
                logits[:, self.decoder.suppressed] = -np.inf
            picks.append(logits.argmax(axis=-1).tolist())
        return picks

    def _pad(self, sources: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        longest = max(len(s) for s in sources)
        input_ids = np.full((len(sources), longest), self.tokenizer.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(sources), longest), dtype=np.int64)
        for row, ids in enumerate(sources):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def forced_input(self, n_tokens: int) -> np.ndarray:
        """A (1, n_tokens + 1) input of ordinary tokens followed by ``</s>``."""
        if not 1 <= n_tokens <= self.max_source_tokens:
            raise ConfigError(
                f"n_tokens={n_tokens}: must be between 1 and {self.max_source_tokens}"
            )
        filler = np.resize(self._filler_ids, n_tokens)
        return np.append(filler, self.tokenizer.eos_id).astype(np.int64)[None, :]

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        if not 1 <= m_tokens <= self.manifest.max_output_tokens:
            raise ConfigError(
                f"m_tokens={m_tokens}: must be between 1 and {self.manifest.max_output_tokens}"
            )
        input_ids = self.forced_input(n_tokens)
        self.decoder.greedy(input_ids, np.ones_like(input_ids), m_tokens, forced=True)


def _until_eos(row: np.ndarray, eos: int) -> list[int]:
    hits = np.flatnonzero(row == eos)
    return row[: hits[0]].tolist() if hits.size else row.tolist()
