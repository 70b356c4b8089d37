"""Translation quality and output lengths of a model on a parallel test set (`cnmt evaluate`).

Scores are sacrebleu's corpus BLEU and chrF (its default settings and signatures) between the
model's detokenized output and the raw references. What "detokenized" needs depends on the
family: Bergamot, Marian and a GRU with SentencePiece models (the trained gru-fr-en) produce
text (sentencepiece decoding); the word-level families (cn2en, a GRU with word vocabularies,
BiLSTM) produce lowercased tokens joined by spaces, so their punctuation is attached back
(:func:`detokenize_words`) and both metrics run case-insensitively (``lowercase`` in the
result). Chinese targets use sacrebleu's ``zh`` tokenizer for BLEU.

The length statistics are those the scheduler cares about: mean N, mean M, M against the
reference's length in the same model tokens, and the least-squares fit ``M = gamma*N + delta``
on the model's own outputs beside the same fit on the references.

A sentence the model refuses (over-long, nothing known) is scored as an empty hypothesis and
counted in ``refused``: nothing is silently left out. Empty source lines are skipped and counted.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.errors import CnmtError, ConfigError
from cnmt.files import read_lines

EVAL_INSTALL_HINT = "install it with: pip install 'cnmt[eval]' (sacrebleu)"
WORD_FAMILIES = frozenset({"cn2en", "gru", "bilstm"})
_ATTACH_LEFT = re.compile(r" ([.,!?;:%)\]}]|'s|'re|'ve|'m|'ll|'d|n't)(?= |$)")
_ATTACH_RIGHT = re.compile(r"([(\[{$]) ")


def detokenize_words(text: str) -> str:
    """Join punctuation back onto words: ``let's go .`` -> ``let's go.`` (word families)."""
    return _ATTACH_RIGHT.sub(r"\1", _ATTACH_LEFT.sub(r"\1", text.strip()))


def writes_words(manifest: Any) -> bool:
    """Whether the model writes lowercased word tokens (scored detokenized, case-insensitively):
    the word-level families, except a GRU trained with SentencePiece (the built-in gru-fr-en),
    which writes cased, detokenized text."""
    return manifest.family in WORD_FAMILIES and "target_spm" not in manifest.files


def postprocess(manifest: Any, text: str) -> str:
    """A model's output as it is scored: word tokens get their punctuation attached back."""
    return detokenize_words(text) if writes_words(manifest) else text


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(f"scoring translations needs sacrebleu; {EVAL_INSTALL_HINT}") from None
    return sacrebleu


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str


def score(
    hypotheses: Sequence[str], references: Sequence[str], target_language: str, lowercase: bool
) -> Scores:
    """sacrebleu corpus BLEU and chrF of ``hypotheses`` against one reference each."""
    sacrebleu = _sacrebleu()
    tokenize = "zh" if target_language == "zh" else "13a"
    bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
    chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
    refs = [list(references)]
    bleu_score = bleu.corpus_score(list(hypotheses), refs)
    chrf_score = chrf.corpus_score(list(hypotheses), refs)
    return Scores(
        bleu=round(float(bleu_score.score), 2),
        chrf=round(float(chrf_score.score), 2),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
    )


def linear_fit(n: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """Least squares ``m = gamma*n + delta`` with its r2 and mean absolute error."""
    n = np.asarray(n, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    if len(n) < 2 or np.ptp(n) == 0:
        return {
            "gamma": float("nan"),
            "delta": float("nan"),
            "r2": float("nan"),
            "mae": float("nan"),
        }
    gamma, delta = np.polyfit(n, m, 1)
    predicted = gamma * n + delta
    total = float(((m - m.mean()) ** 2).sum())
    r2 = 1.0 - float(((m - predicted) ** 2).sum()) / total if total > 0 else float("nan")
    return {
        "gamma": round(float(gamma), 4),
        "delta": round(float(delta), 4),
        "r2": round(r2, 4),
        "mae": round(float(np.abs(m - predicted).mean()), 3),
    }


def read_pairs(src: Path, ref: Path, limit: int | None) -> tuple[list[str], list[str]]:
    """Line-aligned sources and references (the first ``limit`` pairs); ConfigError when the
    files differ in length."""
    sources = read_lines(src, what="source file")
    references = read_lines(ref, what="reference file")
    if len(sources) != len(references):
        raise ConfigError(
            f"--src {src} has {len(sources)} lines but --ref {ref} has {len(references)}; "
            "give line-aligned files (one sentence per line, same order)"
        )
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit {limit}: give a positive number of sentences")
        sources, references = sources[:limit], references[:limit]
    return sources, references


def evaluate(
    translator: Any,
    sources: Sequence[str],
    references: Sequence[str],
    progress: Callable[[Sequence[str]], Any] | None = None,
) -> dict[str, Any]:
    """Translate ``sources`` one by one and score them against ``references``."""
    manifest = translator.manifest
    family = manifest.family
    word_level = writes_words(manifest)
    target_language = str(manifest.extra.get("target_language", ""))
    hypotheses: list[str] = []
    kept_refs: list[str] = []
    n_tokens: list[int] = []
    m_tokens: list[int] = []
    ref_tokens: list[int | None] = []
    refused: dict[str, int] = {}
    skipped = 0
    began = time.perf_counter()
    pairs = list(zip(sources, references, strict=True))
    for source, reference in progress(pairs) if progress else pairs:
        if not source.strip():
            skipped += 1
            continue
        kept_refs.append(reference)
        try:
            result = translator.translate(source)
        except CnmtError as exc:
            reason = str(exc).split(";")[0][:80]
            refused[reason] = refused.get(reason, 0) + 1
            hypotheses.append("")
            continue
        hypotheses.append(postprocess(manifest, result.text))
        n_tokens.append(result.source_tokens)
        m_tokens.append(result.output_tokens)
        ref_tokens.append(translator.count_target_tokens(reference))
    seconds = time.perf_counter() - began
    if not hypotheses:
        raise ConfigError("no sentence to evaluate: every source line is empty")
    scores = score(hypotheses, kept_refs, target_language, lowercase=word_level)
    n = np.asarray(n_tokens, dtype=np.float64)
    m = np.asarray(m_tokens, dtype=np.float64)
    lengths: dict[str, Any] = {
        "mean_n": round(float(n.mean()), 3) if n.size else None,
        "mean_m": round(float(m.mean()), 3) if m.size else None,
        "fit_on_outputs": linear_fit(n, m),
    }
    if ref_tokens and all(r is not None for r in ref_tokens):
        r = np.asarray(ref_tokens, dtype=np.float64)
        lengths.update(
            mean_reference_m=round(float(r.mean()), 3),
            m_over_reference=round(float(m.sum() / r.sum()), 4) if r.sum() else None,
            mean_abs_m_minus_reference=round(float(np.abs(m - r).mean()), 3),
            fit_on_references=linear_fit(n, r),
        )
    providers = getattr(getattr(translator, "encoder", None), "get_providers", lambda: [])()
    return {
        "model": manifest.name,
        "family": family,
        # fp32 or int8 (cnmt export --precision); a manifest written before that says none
        "precision": str(getattr(manifest, "precision", None) or "fp32"),
        "provider": providers[0] if providers else None,
        "sentences": len(hypotheses),
        "skipped_empty": skipped,
        "refused": refused,
        "bleu": scores.bleu,
        "chrf": scores.chrf,
        "lowercase": word_level,
        "bleu_signature": scores.bleu_signature,
        "chrf_signature": scores.chrf_signature,
        "lengths": lengths,
        "seconds": round(seconds, 2),
        "hypotheses": hypotheses,
    }


def tqdm_progress(label: str) -> Callable[[Sequence[Any]], Any]:
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=label, unit="sent", file=sys.stderr)
