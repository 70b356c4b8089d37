"""`cnmt fit-length`: fit the output-length regression M = gamma*N + delta on a parallel corpus."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-length",
        help="fit the output-length model M = gamma*N + delta on a parallel corpus",
        description=(
            "Count N and M in the running model's tokens, drop outlier pairs (empty sides, "
            "identical sides, over-long sentences, extreme length ratios; counted per rule), "
            "fit M = gamma*N + delta by least squares and write the model that the `linear` "
            "and `naive` length estimators load."
        ),
    )
    parser.add_argument(
        "--src",
        action="append",
        required=True,
        metavar="FILE",
        help="source side, one sentence per line (repeat for several corpora)",
    )
    parser.add_argument(
        "--tgt",
        action="append",
        required=True,
        metavar="FILE",
        help="target side, line-aligned with --src (repeat in the same order)",
    )
    parser.add_argument(
        "--tokenizer",
        default="words",
        metavar="SPEC",
        help="token counter for both sides: words, chars, moses:LANG, "
        "sentencepiece:PATH, bpe:CODES, moses:LANG+bpe:CODES (default: words)",
    )
    parser.add_argument(
        "--src-tokenizer",
        metavar="SPEC",
        help="source counter (default: --tokenizer); also model:NAME_OR_DIR",
    )
    parser.add_argument(
        "--tgt-tokenizer", metavar="SPEC", help="target counter (default: --tokenizer)"
    )
    parser.add_argument(
        "--tgt-lengths",
        action="append",
        metavar="FILE",
        help="fit on a model's real output lengths (a cache from `cnmt replay "
        "--cache-outputs`, one per --src) instead of the target side's counts",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=150,
        help="drop pairs with a side longer than this (default 150; 0 = no limit)",
    )
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=3.0,
        help="drop pairs whose longer side has more than this many times the "
        "tokens of the shorter (default 3.0; 0 = no limit)",
    )
    parser.add_argument(
        "--keep-identical",
        action="store_true",
        help="keep pairs whose source and target are the same text",
    )
    parser.add_argument(
        "--heldout-every",
        type=int,
        metavar="K",
        help="leave every K-th line out of the fit (the replay draws requests "
        "from those lines when its corpus has the same heldout_every)",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="write the fitted length model here"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the fit summary (dropped per rule, per-N stats)"
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="write the Fig. 3 style plot (mean and std of M per N)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from cnmt.datasets.corpora import read_parallel
    from cnmt.errors import ConfigError
    from cnmt.experiments.lengthfit import FilterRules, fit_length, plot_length_fit
    from cnmt.experiments.outputs import load_output_lengths
    from cnmt.schedulers.length_models import save_length_model

    if len(args.src) != len(args.tgt):
        raise ConfigError(
            f"give one --tgt per --src (got {len(args.src)} --src and {len(args.tgt)} --tgt)"
        )
    if args.tgt_lengths and len(args.tgt_lengths) != len(args.src):
        raise ConfigError("give one --tgt-lengths per --src, in the same order")
    try:
        rules = FilterRules(
            max_tokens=args.max_tokens or None,
            max_ratio=args.max_ratio or None,
            drop_identical=not args.keep_identical,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    corpora = [read_parallel(s, t) for s, t in zip(args.src, args.tgt, strict=True)]
    override = None
    if args.tgt_lengths:
        override = [
            np.asarray(load_output_lengths(path, c.src_path, len(c))[1])
            for path, c in zip(args.tgt_lengths, corpora, strict=True)
        ]
    fit = fit_length(
        corpora,
        src_tokenizer=args.src_tokenizer or args.tokenizer,
        tgt_tokenizer=args.tgt_tokenizer or args.tokenizer,
        rules=rules,
        heldout_every=args.heldout_every,
        m_override=override,
        m_source=f"model outputs ({', '.join(args.tgt_lengths)})" if args.tgt_lengths else None,
    )
    summary = fit.summary()
    save_length_model(fit.model, args.out, extra={"dropped": fit.dropped, "per_n": fit.per_n})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
    if args.plot:
        plot_length_fit(fit, args.plot)
    m = fit.model
    dropped = ", ".join(f"{rule} {count}" for rule, count in fit.dropped.items())
    print(f"pairs: {m.pairs_total} total, {m.pairs_kept} kept; dropped: {dropped}")
    print(
        f"M = {m.gamma:.4f} * N + {m.delta:.4f}   R^2 = {m.r2:.4f}   MSE = {m.mse:.3f}   "
        f"mean M = {m.mean_m:.3f}"
    )
    print(
        f"wrote {args.out}"
        + (f", {args.json}" if args.json else "")
        + (f", {args.plot}" if args.plot else "")
    )
    return 0
