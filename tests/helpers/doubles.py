"""Test doubles for the serving tests: translators whose timing and failures a test controls.

``ScriptedTranslator`` is a deterministic Translator: a fixed delay per translation, a word
that makes it refuse the text (a model error), and a word ``CRASH:<path>`` that kills the
process it runs in once (a crashed edge worker). It tokenizes on whitespace, so N is the number
of words, and "translates" by upper-casing each word and adding a final ``.`` token, so
M = N + 1. ``TimedTranslator`` sleeps as a known latency model says.

The gateway's edge worker is a spawned process that unpickles its translator factory by module
name (``helpers.doubles.TimedTranslator``): it finds this module because pytest's
``pythonpath`` puts ``tests/`` on ``sys.path`` and spawn hands the parent's ``sys.path`` to the
child. So a factory a worker runs must live in a helpers module, not in a test module.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from cnmt.errors import ConfigError
from cnmt.runtime.base import Translation, Translator
from cnmt.schedulers.base import LatencyModel

# Latency models for the `cnmt` policy in tests: a slow edge, a fast cloud (seconds).
EDGE_LATENCY = LatencyModel(a_n=0.002, a_m=0.02, b=0.01)
CLOUD_LATENCY = LatencyModel(a_n=0.0002, a_m=0.002, b=0.002)

REFUSE = "REFUSE"
CRASH = "CRASH"


class ScriptedTranslator(Translator):
    family = "scripted"
    name = "scripted"

    def __init__(self, delay_s: float = 0.0, max_tokens: int = 50, label: str = "") -> None:
        self.delay_s = delay_s
        self.max_tokens = max_tokens
        self.label = label
        self.calls = 0

    @property
    def max_source_tokens(self) -> int:
        return self.max_tokens

    def count_source_tokens(self, text: str) -> int:
        return len(text.split())

    def translate(self, text: str) -> Translation:
        started = time.perf_counter()
        self.calls += 1
        words = text.split()
        if not words:
            raise ConfigError("empty text")
        if REFUSE in words:
            raise ConfigError(f"the word {REFUSE} is not in the vocabulary")
        for word in words:
            # CRASH:<path> kills the process running this translation if <path> exists, and
            # removes it: the process dies once, and a retry of the same text succeeds.
            if word.startswith(CRASH + ":") and os.path.exists(word[len(CRASH) + 1 :]):
                os.unlink(word[len(CRASH) + 1 :])
                os._exit(3)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = [w.upper() for w in words] + ["."]
        text_out = " ".join(out) + (f" [{self.label}]" if self.label else "")
        return Translation(text_out, len(words), len(out), time.perf_counter() - started)

    def translate_batch(self, texts: Sequence[str]) -> list[Translation]:
        return [self.translate(t) for t in texts]

    def run_forced(self, n_tokens: int, m_tokens: int) -> None:
        time.sleep(self.delay_s)


class TimedTranslator(ScriptedTranslator):
    """A ScriptedTranslator that takes ``b + a_n*N + a_m*M`` seconds (sleeping), M = N + 1: a
    device whose true latency model is known."""

    def __init__(self, model: LatencyModel, label: str = "") -> None:
        super().__init__(0.0, label=label)
        self.model = model

    def translate(self, text: str) -> Translation:
        started = time.perf_counter()
        n = len(text.split())
        time.sleep(max(0.0, self.model.predict(n, n + 1)))
        result = super().translate(text)
        return Translation(result.text, n, n + 1, time.perf_counter() - started)


class EchoingTranslator(ScriptedTranslator):
    """A ScriptedTranslator that logs each text it translates at WARNING, raw, as cn2en logs the
    tokens it drops."""

    def translate(self, text: str) -> Translation:
        logging.getLogger("cnmt.runtime.echo").warning("translating %s", text)
        return super().translate(text)


def model_unless(marker: str) -> Translator:
    """A translator factory that fails, as a corrupted model cache does, while ``marker``
    exists (so a restarted worker cannot load what the first one did)."""
    if os.path.exists(marker):
        raise ConfigError(f"{marker}/encoder.onnx: onnxruntime cannot load this graph")
    return ScriptedTranslator(label="edge")


def broken_model() -> Translator:
    """A translator factory whose model cannot be opened, as with a missing model directory."""
    raise ConfigError("/models/zh-en: no such model directory")


def sentence(n: int) -> str:
    """A text of ``n`` distinct words: N = n for the scripted translators."""
    return " ".join(f"w{i}" for i in range(n))
