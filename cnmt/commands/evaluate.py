"""`cnmt evaluate`: BLEU, chrF and output lengths of a model on a parallel test set."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cnmt.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model's translations of a test set (sacrebleu BLEU, chrF) and its lengths",
        description=(
            "Translate every line of --src with the model (greedy, one sentence at a time) and "
            "score the translations against --ref with sacrebleu (corpus BLEU and chrF, with "
            "the detokenization the model family needs). Also reports the output lengths: mean "
            "N and M, M against the reference's length in the model's tokens, and the fit "
            "M = gamma*N + delta on the model's own outputs. Needs cnmt[eval] (sacrebleu)."
        ),
        epilog=(
            "examples:\n"
            "  cnmt evaluate --model bergamot-en-pt --src newstest2019.en --ref newstest2019.pt\n"
            "  cnmt evaluate --model models/cn2en-int8 --src test.zh --ref test.en --json q.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model directory or built-in name")
    parser.add_argument(
        "--src", required=True, help="source sentences, one a line (may start with ${data}/)"
    )
    parser.add_argument("--ref", required=True, help="reference translations, line-aligned")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the full result here")
    parser.add_argument("--limit", type=int, metavar="K", help="only the first K sentences")
    parser.add_argument(
        "--provider",
        action="append",
        metavar="PROVIDER",
        help="ONNX Runtime execution provider, by preference (repeat or comma-separate)",
    )
    parser.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnmt.config import expand_data
    from cnmt.experiments.quality import _sacrebleu, evaluate, read_pairs, tqdm_progress
    from cnmt.experiments.tokens import quiet_runtime_logs
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.files import write_json
    from cnmt.runtime import ProviderFallbackWarning, load_translator

    if args.threads is not None and args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: must be 0 (default) or positive")
    _sacrebleu()  # fail before the model loads when sacrebleu is missing
    args.src = Path(expand_data(args.src, what="--src"))
    args.ref = Path(expand_data(args.ref, what="--ref"))
    sources, references = read_pairs(args.src, args.ref, args.limit)
    providers = [p.strip() for group in args.provider or [] for p in group.split(",") if p.strip()]
    ensure_exported(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        translator = load_translator(args.model, providers=providers or None, threads=args.threads)
    for warning in caught:
        print(f"cnmt: warning: {warning.message}", file=sys.stderr)
    with quiet_runtime_logs():
        result = evaluate(
            translator, sources, references, tqdm_progress(f"{args.model} on {args.src.name}")
        )
    result.update(src=str(args.src), ref=str(args.ref), threads=args.threads)
    lengths = result["lengths"]
    fit = lengths["fit_on_outputs"]
    print(
        f"{result['model']} ({result['family']}, {result['precision']}, {result['provider']}) "
        f"on {result['sentences']} sentences of {args.src.name}:"
    )
    print(f"  BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ({result['bleu_signature']})")
    line = f"  mean N {lengths['mean_n']}, mean M {lengths['mean_m']}"
    if "mean_reference_m" in lengths:
        line += (
            f", reference M {lengths['mean_reference_m']} "
            f"(M / reference {lengths['m_over_reference']})"
        )
    print(line)
    print(
        f"  fit on own outputs: M = {fit['gamma']} N + {fit['delta']} "
        f"(r2 {fit['r2']}, MAE {fit['mae']})"
    )
    if "fit_on_references" in lengths:
        ref_fit = lengths["fit_on_references"]
        print(f"  fit on references:  M = {ref_fit['gamma']} N + {ref_fit['delta']}")
    if result["refused"] or result["skipped_empty"]:
        print(
            f"  refused {sum(result['refused'].values())} (scored empty), "
            f"skipped {result['skipped_empty']} empty source lines"
        )
    print(f"  {result['seconds']} s")
    if args.json is not None:
        write_json(args.json, result)
    return 0
