"""`cnmt translate`: translate sentences with an exported or built-in model on ONNX Runtime."""

from __future__ import annotations

import argparse
import sys
import warnings

from cnmt.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "translate",
        help="translate sentences with a model on ONNX Runtime",
        description=(
            "Translate each TEXT (or each line of standard input when no TEXT is given) with "
            "greedy decoding and print one translation per line. --model is a directory written "
            "by `cnmt export` or a built-in model name (cn2en: exported into the cache on first "
            "use, which needs cnmt[export])."
        ),
        epilog=(
            "examples:\n"
            '  cnmt translate --model cn2en "我们走吧。"\n'
            '  cnmt translate --model models/bilstm-de-en --threads 1 --verbose "das ist gut ."\n'
            "  cnmt translate --model cn2en \\\n"
            "      --provider CUDAExecutionProvider,CPUExecutionProvider < zh.txt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help=(
            "model directory or built-in name (cn2en, gru-fr-en, bilstm-de-en, bergamot-en-pt, "
            "bergamot-pt-en)"
        ),
    )
    parser.add_argument(
        "--provider",
        action="append",
        metavar="PROVIDER",
        help="ONNX Runtime execution provider, by preference; repeat or comma-separate "
        "(default CPUExecutionProvider); unavailable ones fall back with a warning",
    )
    parser.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--batch", action="store_true", help="decode all texts as one batch")
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="after each translation print N (source tokens), M (output tokens) and the time",
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="sentences (default: stdin lines)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.runtime import ProviderFallbackWarning, load_translator

    if args.threads is not None and args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: must be 0 (default) or positive")
    providers = [p.strip() for group in args.provider or [] for p in group.split(",") if p.strip()]
    texts = list(args.texts) if args.texts else [line.rstrip("\n") for line in sys.stdin]
    if not texts:
        raise ConfigError("nothing to translate: give TEXT arguments or lines on standard input")
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise ConfigError(f"text {number} is empty: give a sentence to translate")
    ensure_exported(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProviderFallbackWarning)
        translator = load_translator(args.model, providers=providers or None, threads=args.threads)
    for warning in caught:
        print(f"cnmt: warning: {warning.message}", file=sys.stderr)
    if args.verbose:
        providers_used = getattr(
            getattr(translator, "encoder", None), "get_providers", lambda: []
        )()
        if providers_used:
            print(f"# providers: {', '.join(providers_used)}", file=sys.stderr)
    results = translator.translate_batch(texts) if args.batch else map(translator.translate, texts)
    for result in results:  # lazily without --batch: each line prints as soon as it is done
        print(result.text, flush=True)
        if args.verbose:
            print(
                f"# N={result.source_tokens} M={result.output_tokens} "
                f"time={result.seconds * 1000:.1f} ms",
                file=sys.stderr,
            )
    return 0
