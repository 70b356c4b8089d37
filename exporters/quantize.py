"""The int8 step of every export: quantize the fp32 graphs, check them against fp32, or fail.

`cnmt export --precision int8` runs a family's usual export (build, write into the staging
folder, validate against torch) and then this step, before the manifest is written and the
folder published:

1. every graph of the manifest is quantized with ONNX Runtime's dynamic quantization
   (``quantize_dynamic``: int8 weights, QInt8, one scale per tensor; activations are quantized
   on the fly per call, so no calibration data is needed and the graphs keep fp32 inputs and
   outputs). The int8 graphs are written to a scratch folder beside the staging one;
2. the fp32 graphs (still in staging) and the int8 ones are opened with the family's runtime
   translator and decode the same check sentences greedily. The int8 export must agree with
   the fp32 one: the mean token agreement (the share of each output up to the first token that
   differs) and the chrF of the int8 outputs with the fp32 outputs as references must reach
   :class:`QuantizeCheck`'s thresholds; with reference translations, the int8 chrF against them
   may also fall at most ``max_chrf_drop`` points below the fp32 one. A logits tolerance would
   be the wrong test: int8 changes every logit a little, and what a user sees is the tokens;
3. the int8 graphs replace the fp32 ones; the manifest says ``precision: int8`` and records in
   ``extra.quantization`` how the graphs were quantized and what the check measured.

Any failure raises and the export leaves nothing at ``--out`` (the family's exporter removes
its staging folder). Per-channel scales and static (calibrated) quantization were measured on
cn2en (benchmarks/int8_variants.py) and rejected: see docs/models.md#int8-models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.runtime.base import GreedyOutput, Translator
from cnmt.runtime.manifest import Manifest, replace
from cnmt.runtime.models import translator_class
from cnmt.runtime.session import SessionConfig

FP32, INT8 = "fp32", "int8"


class QuantizationError(CnmtRuntimeError):
    """Quantizing a graph failed, or the int8 graphs do not reproduce the fp32 export."""


@dataclass(frozen=True)
class QuantizeCheck:
    """What the int8 graphs must reproduce of the fp32 ones, on ``texts``.

    ``max_new_tokens`` caps each decode (random-weight models never stop on their own). The
    thresholds (docs/models.md#int8-models): ``min_step_agreement`` on the share of decoder
    steps where int8 picks fp32's token when both are fed fp32's output; ``min_chrf`` (None:
    reported, not required) on the chrF of the int8 outputs with the fp32 outputs as
    references; with ``references`` (one per text), ``max_chrf_drop`` on chrF(fp32) -
    chrF(int8) against them.
    """

    texts: tuple[str, ...]
    references: tuple[str, ...] | None = None
    max_new_tokens: int = 64
    min_step_agreement: float = 0.9
    min_chrf: float | None = 75.0
    max_chrf_drop: float = 2.0
    source: str = "built-in check sentences"

    def __post_init__(self) -> None:
        if not self.texts:
            raise ConfigError("the int8 check needs at least one sentence")
        if self.references is not None and len(self.references) != len(self.texts):
            raise ConfigError(
                f"the int8 check has {len(self.texts)} sentences but {len(self.references)} "
                "references; give one reference line per sentence"
            )


# A random-weight model (built from a config, to measure latency) scores its candidates within
# a hair of each other: int8 flips many of its picks (the BiLSTM test config: 54% of the steps)
# and its free-running outputs, noise at either precision, part after a few tokens. Its check
# only catches a broken quantization (random int8 weights agree on ~1/vocabulary of the steps).
RANDOM_WEIGHTS_CHECK = {"min_step_agreement": 0.25, "min_chrf": None}


def has_random_weights(manifest: Manifest) -> bool:
    """Whether the exporter built the weights at random (``extra.weights`` says so)."""
    return str(manifest.extra.get("weights", "")).startswith("random")


def read_check(
    texts: Path | None,
    references: Path | None,
    default: Sequence[str],
    default_source: str = "built-in check sentences",
    limit: int = 200,
) -> QuantizeCheck:
    """The check of an export: ``texts`` (a file, one sentence a line) or ``default``, and
    optional ``references``; blank lines are skipped with their reference, at most ``limit``.
    A family reads it before exporting, so that a bad file fails before the slow part."""
    if texts is None:
        if references is not None:
            raise ConfigError(
                "--check-references needs --check-texts (the sentences they translate)"
            )
        if not default:
            raise ConfigError(
                "this source has no built-in check sentences for the int8 check: give "
                "--check-texts FILE (sentences in the source language, one per line)"
            )
        return QuantizeCheck(texts=tuple(default), source=default_source)
    lines = _lines(texts, "--check-texts")
    refs = _lines(references, "--check-references") if references is not None else None
    if refs is not None and len(refs) != len(lines):
        raise ConfigError(
            f"--check-references {references} has {len(refs)} lines but --check-texts {texts} "
            f"has {len(lines)}; give one reference per sentence"
        )
    keep = [i for i, line in enumerate(lines) if line.strip()][:limit]
    if not keep:
        raise ConfigError(f"--check-texts {texts}: no sentences (every line is blank)")
    return QuantizeCheck(
        texts=tuple(lines[i] for i in keep),
        references=tuple(refs[i] for i in keep) if refs is not None else None,
        source=str(texts),
    )


def _lines(path: Path, flag: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc})") from None


def apply_precision(
    staging: Path,
    manifest: Manifest,
    precision: str,
    check: QuantizeCheck | None,
    per_channel: bool = False,
) -> Manifest:
    """The export's precision step: ``manifest`` itself for fp32; for int8, quantize the graphs
    in ``staging`` in place after checking them against fp32 (module doc), and the manifest
    that says so. Raises :class:`QuantizationError` and leaves ``staging`` as it was."""
    if precision == FP32:
        return manifest
    if precision != INT8:
        raise ConfigError(f"--precision {precision!r}: choose fp32 or int8")
    if check is None:
        raise ConfigError("an int8 export needs check sentences (QuantizeCheck)")
    if has_random_weights(manifest):
        check = dataclasses.replace(check, **RANDOM_WEIGHTS_CHECK)
    scratch = Path(tempfile.mkdtemp(prefix=f".{staging.name}.int8.", dir=staging.parent))
    try:
        sizes = {}
        for role, relative in manifest.graphs.items():
            target = scratch / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                quantize_graph(staging / relative, target, per_channel)
            except Exception as exc:  # onnxruntime.quantization raises many types
                raise QuantizationError(
                    f"quantizing the {role} graph ({relative}) of {manifest.name!r} to int8 "
                    f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
                ) from exc
            sizes[role] = [(staging / relative).stat().st_size, target.stat().st_size]
        for relative in manifest.files.values():
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / relative, scratch / relative)
        int8 = replace(manifest, precision=INT8)
        report = compare(staging, manifest, scratch, int8, check)
        for relative in manifest.graphs.values():
            os.replace(scratch / relative, staging / relative)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    quantization = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "per_channel": per_channel,
        "graph_bytes": {role: {"fp32": a, "int8": b} for role, (a, b) in sizes.items()},
        "check": report,
    }
    return replace(int8, extra={**manifest.extra, "quantization": quantization})


def quantize_graph(source: Path, target: Path, per_channel: bool) -> None:
    """Dynamic int8 quantization of one ONNX file (weights QInt8, activations per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel
        )
    if not target.is_file() or target.stat().st_size == 0:
        raise QuantizationError(f"quantize_dynamic wrote no graph to {target}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs advice on the root logger and prints; keep an export's output clean
    (a failure still raises with its message)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def compare(
    fp32_dir: Path, fp32: Manifest, int8_dir: Path, int8: Manifest, check: QuantizeCheck
) -> dict[str, Any]:
    """Decode ``check.texts`` with both exports; the measures, or QuantizationError."""
    steps = min(check.max_new_tokens, fp32.max_output_tokens)
    config = SessionConfig(intra_op_threads=1)
    cls = translator_class(fp32.family)
    reference_model = cls.load(fp32_dir, fp32, config)
    quantized_model = cls.load(int8_dir, int8, config)
    measures: dict[str, Any] = {
        "sentences": len(check.texts),
        "sentences_from": check.source,
        "max_new_tokens": steps,
    }
    agreement, reference, quantized = measure_agreement(
        reference_model, quantized_model, check.texts, steps
    )
    measures.update(agreement)
    measures["thresholds"] = {
        "min_step_agreement": check.min_step_agreement,
        "min_chrf_vs_fp32": check.min_chrf,
    }
    if check.references is not None:
        measures["chrf_fp32"] = chrf([a.text for a in reference], list(check.references))
        measures["chrf_int8"] = chrf([b.text for b in quantized], list(check.references))
        measures["thresholds"]["max_chrf_drop"] = check.max_chrf_drop
    failures = []
    if measures["step_agreement"] < check.min_step_agreement:
        failures.append(
            f"int8 picks fp32's token on {measures['step_agreement']:.3f} of the steps < "
            f"{check.min_step_agreement}"
        )
    if check.min_chrf is not None and measures["chrf_vs_fp32"] < check.min_chrf:
        failures.append(
            f"chrF against the fp32 outputs {measures['chrf_vs_fp32']:.1f} < {check.min_chrf}"
        )
    if check.references is not None:
        drop = measures["chrf_fp32"] - measures["chrf_int8"]
        if drop > check.max_chrf_drop:
            failures.append(
                f"chrF against the references fell {drop:.1f} points "
                f"({measures['chrf_fp32']:.1f} -> {measures['chrf_int8']:.1f}) > "
                f"{check.max_chrf_drop}"
            )
    if failures:
        prefix = [token_agreement(a.ids, b.ids) for a, b in zip(reference, quantized, strict=True)]
        worst = min(range(len(prefix)), key=prefix.__getitem__)
        raise QuantizationError(
            f"int8 export of {fp32.name!r} rejected: {'; '.join(failures)} on "
            f"{len(check.texts)} sentences ({check.source}). Worst: {check.texts[worst]!r} -> "
            f"fp32 {reference[worst].text[:80]!r}, int8 {quantized[worst].text[:80]!r}. Export "
            "fp32 instead (--precision fp32), or check with your own sentences and references "
            "(--check-texts, --check-references)"
        )
    return measures


def measure_agreement(
    reference_model: Translator, candidate_model: Translator, texts: Sequence[str], steps: int
) -> tuple[dict[str, float], list[GreedyOutput], list[GreedyOutput]]:
    """How closely ``candidate_model`` (int8, another provider, fp16) follows
    ``reference_model`` on ``texts``: the measures, and both models' greedy outputs.

    ``step_agreement``: the share of decoder steps where the candidate picks the reference's
    token when both are fed the reference's output (one differing pick does not send the rest
    down another path); ``prefix_agreement``: the mean of :func:`token_agreement` of the
    free-running outputs; ``identical_outputs``: the share of equal outputs; ``chrf_vs_fp32``:
    the candidate's chrF with the reference's outputs as references.
    """
    reference = reference_model.greedy_outputs(texts, steps)
    candidate = candidate_model.greedy_outputs(texts, steps)
    fed = [r.ids for r in reference]
    expected = reference_model.teacher_forced_picks(texts, fed)
    picked = candidate_model.teacher_forced_picks(texts, fed)
    total = sum(len(row) for row in expected)
    pairs = zip(expected, picked, strict=True)
    same = sum(a == b for x, y in pairs for a, b in zip(x, y, strict=True))
    prefix = [token_agreement(a.ids, b.ids) for a, b in zip(reference, candidate, strict=True)]
    measures = {
        "step_agreement": same / total,
        "prefix_agreement": sum(prefix) / len(prefix),
        "identical_outputs": sum(a == 1.0 for a in prefix) / len(prefix),
        "chrf_vs_fp32": chrf([b.text for b in candidate], [a.text for a in reference]),
    }
    return measures, reference, candidate


def token_agreement(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """The common prefix of two greedy outputs over the longer one (1.0 when both are empty):
    after the first differing token a greedy decode follows another path, so later positions
    say nothing more."""
    longest = max(len(reference), len(candidate))
    if longest == 0:
        return 1.0
    same = 0
    for a, b in zip(reference, candidate, strict=False):
        if a != b:
            break
        same += 1
    return same / longest


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2) of ``hypotheses``."""
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(
            "the int8 check computes chrF with sacrebleu, which is not installed; install the "
            "export tools with: pip install 'cnmt[export]'"
        ) from None
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)
