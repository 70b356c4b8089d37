#!/usr/bin/env python3
"""What an int8 edge changes in C-NMT's decisions: the cn2en replay with the fp32 edge beside
the same replay with the int8 edge (``benchmarks/int8-edge.yaml``: cn2en-int8 on the edge, the
fp32 cn2en on the cloud), on the same requests and RTT trace; per policy the edge share and the
mean latency of both.

The replay takes each device's latencies (the policies' predictions and the requests' true
times) from that device's profile, so an int8 edge needs its own measured profile (``cnmt
profile --model cn2en-int8 --device edge-cpu-q06 --requests benchmarks/int8-edge.yaml``). None
ships; give the one you measured with ``--edge-int8`` and, to compare like with like, an fp32
profile measured on the same machine the same way with ``--edge-fp32`` (default: the shipped
cn2en edge profile).

    python benchmarks/int8_edge_replay.py --edge-int8 P.json [--edge-fp32 Q.json] [--connection lan]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edge-int8", type=Path, required=True, help="cn2en-int8 edge profile")
    parser.add_argument("--edge-fp32", type=Path, help="cn2en edge profile (default: shipped)")
    parser.add_argument(
        "--connection", action="append", help="connection profiles (default: all three)"
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests (20000)")
    return parser.parse_args(argv)


def with_edge(config, profile: Path | None):  # noqa: ANN001, ANN201 (cnmt.config.Config)
    if profile is None:
        return config
    spec = config["replay"]
    spec = dataclasses.replace(spec, devices=dataclasses.replace(spec.devices, edge=str(profile)))
    return dataclasses.replace(config, sections={**config.sections, "replay": spec})


def main(argv: list[str] | None = None) -> int:
    from cnmt.config import load_config
    from cnmt.experiments.replay import replay

    args = parse_args(argv)
    fp32 = with_edge(load_config("experiments/cn2en-zh-en"), args.edge_fp32)
    int8 = with_edge(load_config(HERE / "int8-edge.yaml"), args.edge_int8)
    print(
        f"cn2en replay, {args.requests} requests, the paper's method (no queues): edge fp32 "
        f"({fp32['replay'].devices.edge}) vs edge int8 ({int8['replay'].devices.edge}); "
        "cloud fp32 in both"
    )
    for connection in args.connection or list(fp32["replay"].connections):
        runs = {
            name: replay(config, connection, requests=args.requests, queues=False).result
            for name, config in (("fp32", fp32), ("int8", int8))
        }
        print(f"\n{connection}")
        print("policy              edge share fp32 -> int8    mean ms fp32 -> int8   int8/fp32")
        for label, a in runs["fp32"]["policies"].items():
            b = runs["int8"]["policies"][label]
            print(
                f"{label:18} {a['share_edge']:13.1%} -> {b['share_edge']:6.1%}"
                f"  {a['mean_s'] * 1000:10.2f} -> {b['mean_s'] * 1000:7.2f}"
                f"  {b['mean_s'] / a['mean_s']:9.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
