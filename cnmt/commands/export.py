"""`cnmt export`: build or load a model family in torch and export it to ONNX + manifest."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cnmt.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model family to ONNX graphs + manifest (needs cnmt[export])",
        description=(
            "Export a model to a directory of ONNX graphs, vocabulary files and manifest.json, "
            "then validate it: ONNX Runtime must match torch within the family's tolerance and "
            "give the same greedy tokens, or the export fails and writes nothing. Sources: "
            "--config (a `model` YAML, random weights), --checkpoint (trained weights), "
            "--pretrained (a hub id or local directory); cn2en needs none (the installed package). "
            "--precision int8 then quantizes the graphs (ONNX Runtime dynamic quantization) and "
            "checks them against the fp32 export: token agreement and chrF on check sentences, "
            "or the export fails."
        ),
        epilog=(
            "examples:\n"
            "  cnmt export --builtin cn2en     (into the cache, where --model cn2en looks)\n"
            "  cnmt export --builtin cn2en --precision int8   (the cache's cn2en-int8)\n"
            "  cnmt export --family cn2en --precision int8 --out models/cn2en-int8\n"
            "  cnmt export --family cn2en --out models/cn2en\n"
            "  cnmt export --family bilstm --config models/bilstm-de-en --out models/bilstm-de-en\n"
            "  cnmt export --family gru --config models/gru-fr-en --out models/gru-fr-en\n"
            "  cnmt export --family bilstm --checkpoint averaged.pt --out models/my-bilstm\n"
            "  cnmt export --family marian --pretrained Helsinki-NLP/opus-mt-en-zh \\\n"
            "      --out models/marian"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--family",
        help="model family: bilstm, gru, cn2en, marian, bergamot (any registered exporter; "
        "`cnmt plugins`)",
    )
    target.add_argument(
        "--builtin",
        metavar="NAME",
        help="export a built-in model (cn2en, gru-fr-en, bilstm-de-en, bergamot-en-pt, "
        "bergamot-pt-en; with --precision int8 or as NAME-int8, its int8 twin) into the model "
        "cache ($CNMT_CACHE), replacing it",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        type=Path,
        help="a config file with a `model` section, or a built-in "
        "config name (models/bilstm-de-en, models/gru-fr-en, models/marian-en-zh-small, ...)",
    )
    source.add_argument("--checkpoint", type=Path, help="trained weights (e.g. OpenNMT-py .pt)")
    source.add_argument("--pretrained", help="a hub model id or a local model directory")
    parser.add_argument("--out", type=Path, help="output directory (required with --family)")
    parser.add_argument("--name", help="model name in the manifest (default: from the source)")
    parser.add_argument(
        "--opset", type=int, help="ONNX opset (default: the family's, 17 for RNNs, 18 for marian)"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="weights of the exported graphs (default fp32); int8 is checked against fp32",
    )
    parser.add_argument(
        "--check-texts",
        type=Path,
        metavar="FILE",
        help="int8: source sentences (one a line) to compare int8 with fp32 on (default: the "
        "family's built-in ones, or lines of the config's source corpus)",
    )
    parser.add_argument(
        "--check-references",
        type=Path,
        metavar="FILE",
        help="int8: reference translations of --check-texts, line by line; the int8 chrF "
        "against them may fall at most 2 points below the fp32 one",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip the torch-vs-ONNX Runtime check (not recommended)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnmt.exporters.base import ExportRequest
    from cnmt.registry import get_components

    if args.builtin is not None:
        return _export_builtin(args)
    if args.out is None:
        raise ConfigError("--out DIR is required with --family (where to write the model)")
    components = get_components()
    try:
        exporter = components.create("exporter", args.family, label="model family")
    except ConfigError as exc:
        raise ConfigError(f"--family: {exc}") from None
    if args.precision == "fp32" and (args.check_texts or args.check_references):
        raise ConfigError("--check-texts and --check-references go with --precision int8")
    exporter.check_precision(args.precision)
    if args.opset is not None and args.opset < 14:
        raise ConfigError(f"--opset {args.opset}: too old; use 14 or later")
    request = ExportRequest(
        out_dir=args.out,
        config=args.config,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        name=args.name,
        opset=args.opset,
        seed=args.seed,
        validate=args.validate,
        overwrite=args.overwrite,
        precision=args.precision,
        check_texts=args.check_texts,
        check_references=args.check_references,
    )
    print(f"exporting {args.family} to {args.out} ...", file=sys.stderr)
    start = time.perf_counter()
    manifest = exporter.export(request)
    seconds = time.perf_counter() - start
    graphs = ", ".join(f"{role}={name}" for role, name in manifest.graphs.items())
    print(f"exported {manifest.family} model {manifest.name!r} to {args.out} in {seconds:.1f} s")
    print(f"  graphs: {graphs} (opset {manifest.opset})")
    print(f"  files: {', '.join(manifest.files.values())}")
    print(
        f"  limits: {manifest.max_source_tokens} source tokens, "
        f"{manifest.max_output_tokens} output tokens"
    )
    print(f"  source sha256: {manifest.source_checksum}")
    print("  validated against torch: " + ("yes" if args.validate else "NO (--no-validate)"))
    if manifest.precision != "fp32":
        print("  " + describe_quantization(manifest.extra.get("quantization", {})))
    return 0


def describe_quantization(quantization: dict[str, Any]) -> str:
    """One line: the int8 graphs' size and what their check against fp32 measured."""
    sizes = quantization.get("graph_bytes", {})
    fp32 = sum(s["fp32"] for s in sizes.values()) / 1e6
    int8 = sum(s["int8"] for s in sizes.values()) / 1e6
    check = quantization.get("check", {})
    line = (
        f"int8: graphs {fp32:.1f} MB -> {int8:.1f} MB; against fp32 on {check.get('sentences')} "
        f"sentences: same token on {check.get('step_agreement', 0):.1%} of the steps, chrF "
        f"{check.get('chrf_vs_fp32', 0):.1f}"
    )
    if "chrf_int8" in check:
        line += f"; chrF vs references {check['chrf_fp32']:.1f} (fp32) -> {check['chrf_int8']:.1f}"
    return line


def _export_builtin(args: argparse.Namespace) -> int:
    from cnmt.exporters.builtins import export_builtin
    from cnmt.runtime.manifest import load_manifest
    from cnmt.runtime.models import builtin_variant

    flags = ("config", "checkpoint", "pretrained", "out", "name", "opset", "check_texts")
    for flag in (*flags, "check_references"):
        if getattr(args, flag) is not None:
            option = flag.replace("_", "-")
            raise ConfigError(f"--builtin takes no --{option}: a built-in model has a fixed source")
    name = builtin_variant(args.builtin, args.precision) if args.precision != "fp32" else None
    name = name or args.builtin
    start = time.perf_counter()
    path = export_builtin(name)
    print(f"exported built-in model {name!r} to {path} in {time.perf_counter() - start:.1f} s")
    manifest = load_manifest(path)
    if manifest.precision != "fp32":
        print("  " + describe_quantization(manifest.extra.get("quantization", {})))
    return 0
