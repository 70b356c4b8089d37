"""`cnmt profile`: characterize a model on a device; `cnmt profile show`: print, plot profiles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cnmt.errors import ConfigError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated integers, e.g. 8,16,32"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure a model's latency T(N, M) on a device and fit T = a_n*N + a_m*M + b",
        description=(
            "Characterize a model on a device setting: time run_forced(N, M) on a grid of input "
            "lengths N and output lengths M in a worker process (inside a cgroup CPU quota when "
            "the device has one), fit T = a_n*N + a_m*M + b by least squares, and save every "
            "raw sample with the fit. `cnmt profile show` prints and plots saved profiles."
        ),
        epilog=(
            "examples:\n"
            "  cnmt profile --model cn2en --device edge-cpu-q25 --out edge.json --plot edge.png\n"
            "  cnmt profile show edge.json cloud.json --plot edge-vs-cloud.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=(
            "cnmt profile --model MODEL --device DEVICE --out PROFILE.json [options]\n"
            "       cnmt profile show PROFILE.json [PROFILE.json ...] [--plot PNG] [--plot-n N]\n"
            "       cnmt profile devices"
        ),
    )
    parser.add_argument(
        "--model", help="an exported model directory or a built-in model name (cn2en)"
    )
    parser.add_argument(
        "--device",
        help="a config file with a `device` section, or a built-in device: "
        "edge-cpu-q25, cloud-cpu, cloud-cuda, cloud-tensorrt (see `cnmt profile devices`)",
    )
    parser.add_argument(
        "--n", type=_int_list, default=[8, 16, 32, 64], help="input lengths N (default 8,16,32,64)"
    )
    parser.add_argument(
        "--m", type=_int_list, default=[8, 16, 32, 64], help="output lengths M (default 8,16,32,64)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed runs before each cell (default 2)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (default 5)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the shuffled grid order (default 0)"
    )
    parser.add_argument("--out", help="where to write the profile (JSON)")
    _plot_options(parser)
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="PROFILE",
        help="saved profiles to draw beside this one",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_measure, parser=parser)

    actions = parser.add_subparsers(title="other actions", metavar="ACTION", dest="action")
    show = actions.add_parser(
        "show",
        help="print the fit and timing table of saved profiles; plot them together",
        description=(
            "Print the fit, R^2, MSE and mean times of saved profiles; with --plot, draw them "
            "on one figure."
        ),
    )
    show.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile JSON files")
    _plot_options(show)
    show.set_defaults(func=run_show)
    devices = actions.add_parser("devices", help="list the built-in device settings")
    devices.set_defaults(func=run_devices)


def _plot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plot", metavar="PNG", help="draw T against M (mean, +-1 sd band, dashed fit)"
    )
    parser.add_argument(
        "--plot-n",
        type=int,
        metavar="N",
        help="draw only this N (default: one line per N for one profile, the largest common N "
        "for several)",
    )


def run_measure(args: argparse.Namespace) -> int:
    missing = [flag for flag in ("model", "device", "out") if not getattr(args, flag)]
    if missing:
        args.parser.error(
            "measuring needs "
            + ", ".join(f"--{m}" for m in missing)
            + " (or use `cnmt profile show`)"
        )
    from cnmt.exporters.builtins import ensure_exported
    from cnmt.profiling import profiles
    from cnmt.profiling.devices import load_device
    from cnmt.profiling.measure import measure
    from cnmt.profiling.plots import summary

    device = load_device(args.device)
    others = [profiles.load(p) for p in args.compare]  # bad files fail before a long measurement
    out_dir = Path(args.out).parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot create its folder: {exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"--out {args.out}: the folder {out_dir} is not writable")
    ensure_exported(args.model)
    profile = measure(
        args.model,
        device,
        args.n,
        args.m,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
        progress=not args.no_progress,
    )
    try:
        profiles.save(profile, args.out)
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot write the profile: {exc}") from None
    print(summary(profile, args.out))
    print(f"wrote {args.out}")
    _print_ratios([profile, *others])
    if args.plot:
        _plot([profile, *others], args)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cnmt.profiling import profiles
    from cnmt.profiling.plots import summary

    loaded = [profiles.load(p) for p in args.profiles]
    for i, (profile, path) in enumerate(zip(loaded, args.profiles, strict=True)):
        if i:
            print()
        print(summary(profile, path))
    _print_ratios(loaded)
    if args.plot:
        _plot(loaded, args)
    return 0


def _print_ratios(loaded: list) -> None:
    """How much slower each profile is than the first (or the first than it), measured on the
    cells they share."""
    from cnmt.profiling.plots import mean_ratio

    reference = loaded[0]
    for profile in loaded[1:]:
        found = mean_ratio(profile, reference)
        if found is None:
            print(f"\n{profile.label} and {reference.label} share no (N, M) cell to compare")
            continue
        ratio, cells = found
        slow, fast = (profile, reference) if ratio >= 1 else (reference, profile)
        print(
            f"\n{slow.label} / {fast.label}: {max(ratio, 1 / ratio):.2f}x the mean time "
            f"(measured, over {cells} common cells)"
        )


def run_devices(args: argparse.Namespace) -> int:
    from cnmt.profiling.devices import builtin_device_names, load_device

    for name in builtin_device_names():
        device = load_device(name)
        quota = f"cpu_quota {device.cpu_quota:g}" if device.cpu_quota else "no quota"
        print(f"{name}: {', '.join(device.providers)}; threads {device.threads}; {quota}")
    return 0


def _plot(loaded: list, args: argparse.Namespace) -> None:
    from cnmt.profiling.plots import plot

    try:
        path = plot(loaded, args.plot, n=args.plot_n)
    except OSError as exc:
        raise ConfigError(f"--plot {args.plot}: cannot write the figure: {exc}") from None
    except ValueError as exc:  # matplotlib: unknown file format
        raise ConfigError(f"--plot {args.plot}: {exc}") from None
    print(f"wrote {path}")
