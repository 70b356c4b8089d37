"""`cnmt profile`: characterize a model on a device; `cnmt profile show`: print, plot profiles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cnmt.config import builtin_config_names
from cnmt.errors import ConfigError

if TYPE_CHECKING:
    from cnmt.profiling.measure import RequestSet


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
            "the device has one), in interleaved rounds until every cell's mean is known, check "
            "that no cell is faster than its neighbour with fewer tokens (re-measuring those "
            "that are), fit T = a_n*N + a_m*M + b by least squares, and save every raw sample, "
            "the fit and a quality summary; with --requests, also time real requests as the "
            "replay's ground truth. `cnmt profile show` prints and plots saved profiles."
        ),
        epilog=(
            "examples:\n"
            "  cnmt profile --model cn2en --device edge-cpu-q25 --out edge.json --plot edge.png\n"
            "  cnmt profile --model cn2en --device cloud-cpu --out cloud.json "
            "--requests experiments/cn2en-zh-en\n"
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
        "--model",
        help="an exported model directory or a built-in model name (cn2en, bergamot-en-pt, ...)",
    )
    parser.add_argument(
        "--device",
        help="a config file with a `device` section, or a built-in device: "
        + ", ".join(Path(name).name for name in builtin_config_names("devices"))
        + " (see `cnmt profile devices`)",
    )
    parser.add_argument(
        "--n", type=_int_list, default=[8, 16, 32, 64], help="input lengths N (default 8,16,32,64)"
    )
    parser.add_argument(
        "--m", type=_int_list, default=[8, 16, 32, 64], help="output lengths M (default 8,16,32,64)"
    )
    method = parser.add_argument_group(
        "how it measures",
        "interleaved rounds: every round times each cell that still needs runs once, in a new "
        "shuffled order, until each cell's mean is known to --ci or --budget is spent",
    )
    method.add_argument(
        "--regime",
        choices=("isolated", "sustained"),
        default="isolated",
        help="isolated: a pause of one quota period (the device's cpu_period_us) before every "
        "timed run, each request finds an idle device (sporadic traffic, the replay's "
        "assumption); sustained: runs back to back (a saturated device). Default isolated",
    )
    method.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed runs of each cell before its first timed one (default 2)",
    )
    method.add_argument(
        "--ci",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="target half-width of each cell's 95%% confidence interval, relative to its mean "
        "(default 0.05); also the resolution of the sanity check",
    )
    method.add_argument(
        "--min-runs", type=int, default=5, help="timed runs per cell at least (default 5)"
    )
    method.add_argument(
        "--max-runs", type=int, default=2000, help="timed runs per cell at most (default 2000)"
    )
    method.add_argument(
        "--budget",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wall time of the grid's rounds (default 300); re-measuring cells out of order "
        "may take a quarter more",
    )
    method.add_argument(
        "--seed", type=int, default=0, help="seed of the rounds' shuffles and of --requests"
    )
    requests = parser.add_argument_group(
        "real requests (ground truth for the replay, never fitted)",
    )
    requests.add_argument(
        "--requests",
        metavar="CONFIG",
        help="after the grid, time real requests: (N, M) pairs drawn from this experiment "
        "config's corpus exactly as its replay draws requests (held-out lines, its shares, "
        "its token counts), each timed once",
    )
    requests.add_argument(
        "--requests-count",
        type=int,
        default=5000,
        metavar="K",
        help="requests to draw (default 5000); as many are timed as --requests-budget allows",
    )
    requests.add_argument(
        "--requests-budget",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wall time for timing requests (default 300)",
    )
    busy = parser.add_argument_group("a busy host")
    busy.add_argument(
        "--max-busy",
        type=float,
        default=0.2,
        metavar="CPUS",
        help="other processes' CPU use (in CPUs, from /proc/stat) above which the host is "
        "busy (default 0.2): refused before measuring, flagged in the profile after",
    )
    busy.add_argument(
        "--allow-busy",
        action="store_true",
        help="measure on a busy host anyway (the profile records the load and is flagged busy)",
    )
    busy.add_argument(
        "--probe",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long other processes' CPU use is measured before the run (default 2)",
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
        prog="cnmt profile show",
        usage="cnmt profile show PROFILE.json [PROFILE.json ...] [--plot PNG] [--plot-n N]",
        help="print the fit and timing table of saved profiles; plot them together",
        description=(
            "Print the quality summary, fit, R^2, MSE and mean times of saved profiles; with "
            "--plot, draw them on one figure."
        ),
    )
    show.add_argument("profiles", nargs="+", metavar="PROFILE", help="profile JSON files")
    _plot_options(show)
    show.set_defaults(func=run_show)
    devices = actions.add_parser(
        "devices", prog="cnmt profile devices", help="list the built-in device settings"
    )
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
    from cnmt.profiling.measure import HostCheck, Method, measure, resolve_model
    from cnmt.profiling.plots import summary

    device = load_device(args.device)
    method = Method(
        regime=args.regime,
        warmup=args.warmup,
        target_rel_ci=args.ci,
        min_runs=args.min_runs,
        max_runs=args.max_runs,
        budget_s=args.budget,
        seed=args.seed,
    )
    method.check()  # before a long export or measurement
    others = [profiles.load(p) for p in args.compare]  # bad files fail before a long measurement
    out_dir = Path(args.out).parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot create its folder: {exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"--out {args.out}: the folder {out_dir} is not writable")
    if device.cpu_quota:
        # A quota that cannot be applied fails here, not after a long export.
        from cnmt.profiling.cpu_quota import CgroupUnavailable, available

        reason = available()
        if reason is not None:
            raise CgroupUnavailable(f"device {device.name} needs a CPU quota: {reason}")
    ensure_exported(args.model)
    requests = None
    if args.requests:
        _, info = resolve_model(args.model)
        requests = request_set(
            args.requests, info.get("name"), args.requests_count, args.seed, args.requests_budget
        )
    profile = measure(
        args.model,
        device,
        args.n,
        args.m,
        method,
        requests=requests,
        host=HostCheck(max_busy=args.max_busy, allow_busy=args.allow_busy, probe_s=args.probe),
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


def request_set(
    config_ref: str, model: str | None, count: int, seed: int, budget_s: float
) -> RequestSet:
    """(N, M) of ``count`` requests drawn from an experiment config's corpus exactly as its
    replay draws requests (its held-out pool, its part shares, its token counters and output
    lengths), with a generator seeded by ``seed``: real requests to time as ground truth.

    The scheduler's model is fitted on the grid, so these are inputs it was not fitted on, as
    in the paper; and they come from the replay's own pool, so the ground truth describes the
    requests the replay grades policies on.
    """
    import numpy as np

    from cnmt.config import display_path, load_config
    from cnmt.experiments.replay_requests import draw_requests, load_corpus_lines
    from cnmt.profiling.measure import RequestSet

    if count < 1:
        raise ConfigError(f"--requests-count must be at least 1, got {count}")
    if not budget_s > 0:
        raise ConfigError(f"--requests-budget must be a positive number of seconds, got {budget_s}")
    config = load_config(config_ref)
    spec = config.get("replay")
    if spec is None:
        raise ConfigError(
            f"--requests {config_ref}: {config.source} has no `replay` section; give an "
            "experiment config (e.g. experiments/cn2en-zh-en)"
        )
    if model is not None and model not in spec.models.values():
        raise ConfigError(
            f"--requests {config_ref}: its replay runs {spec.models['edge']!r} on the edge and "
            f"{spec.models['cloud']!r} on the cloud, not the profiled model {model!r}"
        )
    lines = load_corpus_lines(spec.corpus)
    pick = draw_requests(lines, spec.corpus, count, np.random.default_rng(seed))
    source = {
        "config": display_path(config.source),
        "model": spec.model,
        "seed": seed,
        "corpus": lines.info,
    }
    return RequestSet(
        n=tuple(int(v) for v in lines.n[pick]),
        m=tuple(int(v) for v in lines.m[pick]),
        source=source,
        budget_s=budget_s,
    )


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
