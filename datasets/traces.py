"""Round-trip-time traces: loaders for the formats C-NMT replays, and the RIPE Atlas download.

Three formats, detected from content (``format="auto"``) or named explicitly:

``ripe-csv``
    ``epoch;rtt;cp`` with a header line, as in the RIPE Atlas 2016 traces: ``epoch`` is
    ``YYYY-MM-DD HH:MM:SS`` or ``DD/MM/YYYY HH:MM`` (UTC), ``rtt`` in milliseconds, negative
    when the ping was lost, ``cp`` a hand-labelled change point (0/1, ignored here).
``ripe-json``
    The RIPE Atlas API's ping results: a JSON list of objects with ``timestamp`` (Unix
    seconds), ``prb_id``, ``result`` (a list of ``{"rtt": ms}`` or ``{"x": "*"}`` for a lost
    packet), ``avg``, ``sent`` and ``rcvd``. One result is one sample: its RTT is the mean of
    its answered packets, and it is lost when none was answered. JSON Lines (one object per
    line, the API's ``format=txt``) is read too.
``plain``
    One RTT in milliseconds per line, in measurement order, no timestamps (the tyrell traces).

A lost ping is kept as lost (``lost[i]`` True, ``rtt_ms[i]`` NaN) and counted; it is never
turned into an RTT here. What a loss costs an exchange is the replay's decision (see
:mod:`cnmt.experiments.replay`). A line that is none of the above raises ConfigError naming
the file and line.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnmt.errors import CnmtRuntimeError, ConfigError
from cnmt.files import read_lines

FORMATS = ("ripe-csv", "ripe-json", "plain")
RIPE_API = "https://atlas.ripe.net/api/v2/measurements/{id}/results/"


@dataclass(frozen=True)
class RttTrace:
    """A measured RTT series.

    ``times_s`` are seconds since the first sample (None for a trace without timestamps);
    ``rtt_ms`` is NaN where ``lost`` is True. ``start_epoch`` is the first sample's Unix time
    when the trace has one.
    """

    source: str
    format: str
    rtt_ms: np.ndarray
    lost: np.ndarray
    times_s: np.ndarray | None
    start_epoch: float | None = None

    def __len__(self) -> int:
        return len(self.rtt_ms)

    @property
    def lost_count(self) -> int:
        return int(self.lost.sum())

    def summary(self) -> dict[str, Any]:
        """Count, losses and the distribution of the answered pings (ms)."""
        ok = self.rtt_ms[~self.lost]
        out: dict[str, Any] = {"samples": len(self), "lost": self.lost_count}
        if len(ok):
            p5, p25, p50, p75, p95 = np.percentile(ok, [5, 25, 50, 75, 95])
            out.update(
                median_ms=float(p50),
                p5_ms=float(p5),
                p25_ms=float(p25),
                p75_ms=float(p75),
                p95_ms=float(p95),
                mean_ms=float(ok.mean()),
                std_ms=float(ok.std()),
            )
        if self.times_s is not None and len(self) > 1:
            out["duration_s"] = float(self.times_s[-1] - self.times_s[0])
            out["median_interval_s"] = float(np.median(np.diff(self.times_s)))
        return out

    def window(self, start: int, samples: int | None) -> RttTrace:
        """Samples ``start .. start+samples-1`` (to the end when ``samples`` is None)."""
        if start < 0 or start >= len(self):
            raise ConfigError(
                f"{self.source}: window start {start} is outside the trace (0..{len(self) - 1})"
            )
        stop = len(self) if samples is None else start + samples
        if samples is not None and (samples < 1 or stop > len(self)):
            raise ConfigError(
                f"{self.source}: window of {samples} samples from {start} does not fit the "
                f"trace's {len(self)} samples; choose a start and length within it"
            )
        times = None if self.times_s is None else self.times_s[start:stop] - self.times_s[start]
        epoch = None
        if self.start_epoch is not None and self.times_s is not None:
            epoch = self.start_epoch + float(self.times_s[start])
        return RttTrace(
            source=self.source,
            format=self.format,
            rtt_ms=self.rtt_ms[start:stop],
            lost=self.lost[start:stop],
            times_s=times,
            start_epoch=epoch,
        )


def _bad(path: Path, line: int, message: str) -> ConfigError:
    return ConfigError(f"{path}:{line}: {message}")


def _parse_ripe_time(text: str, path: Path, line: int) -> float:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M", "%Y-%m-%d %H:%M"):
        try:
            stamp = dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        return stamp.replace(tzinfo=dt.UTC).timestamp()
    raise _bad(
        path, line, f"bad epoch {text!r}; expected 'YYYY-MM-DD HH:MM:SS' or 'DD/MM/YYYY HH:MM'"
    )


def _parse_ms(text: str, path: Path, line: int, what: str = "rtt") -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(path, line, f"bad {what} {text!r}; expected a number of milliseconds") from None
    if not math.isfinite(value):
        raise _bad(path, line, f"bad {what} {text!r}; expected a finite number of milliseconds")
    return value


def _finish(
    path: Path, fmt: str, epochs: list[float] | None, rtts: list[float], lost: list[bool]
) -> RttTrace:
    if not rtts:
        raise ConfigError(f"{path}: the trace has no samples")
    rtt = np.asarray(rtts, dtype=float)
    lost_arr = np.asarray(lost, dtype=bool)
    rtt[lost_arr] = np.nan
    if lost_arr.all():
        raise ConfigError(f"{path}: every ping in the trace was lost; there is no RTT to replay")
    times = start = None
    if epochs is not None:
        stamps = np.asarray(epochs, dtype=float)
        order = np.argsort(stamps, kind="stable")
        if (np.diff(stamps) < 0).any():
            # Results downloaded in pages may come out of order; time order is what we replay.
            stamps, rtt, lost_arr = stamps[order], rtt[order], lost_arr[order]
        start = float(stamps[0])
        times = stamps - start
    return RttTrace(str(path), fmt, rtt, lost_arr, times, start)


def load_ripe_csv(path: str | Path) -> RttTrace:
    """``epoch;rtt;cp`` (header first); negative rtt = lost ping."""
    path = Path(path)
    epochs: list[float] = []
    rtts: list[float] = []
    lost: list[bool] = []
    lines = read_lines(path, what="RTT trace file")
    if not lines or lines[0].strip().replace(" ", "").lower().split(";")[:2] != ["epoch", "rtt"]:
        raise _bad(path, 1, "expected the header 'epoch;rtt;cp' of a RIPE Atlas CSV trace")
    for number, raw in enumerate(lines[1:], start=2):
        text = raw.strip()
        if not text:
            continue
        fields = text.split(";")
        if len(fields) not in (2, 3):
            raise _bad(path, number, f"expected 'epoch;rtt;cp', got {text!r}")
        epochs.append(_parse_ripe_time(fields[0].strip(), path, number))
        value = _parse_ms(fields[1].strip(), path, number)
        rtts.append(value)
        lost.append(value < 0)
    return _finish(path, "ripe-csv", epochs, rtts, lost)


def _ripe_result(obj: Any, path: Path, where: int) -> tuple[float, float, bool]:
    """(timestamp, rtt ms, lost) of one RIPE Atlas ping result object."""
    if not isinstance(obj, dict):
        raise _bad(path, where, f"expected a ping result object, got {type(obj).__name__}")
    if "timestamp" not in obj or "result" not in obj:
        raise _bad(path, where, "a ping result needs `timestamp` and `result`")
    try:
        stamp = float(obj["timestamp"])
    except (TypeError, ValueError):
        raise _bad(path, where, f"bad timestamp {obj['timestamp']!r}") from None
    packets = obj["result"]
    if not isinstance(packets, list):
        raise _bad(path, where, "`result` must be a list of packets")
    answered = []
    for packet in packets:
        if not isinstance(packet, dict):
            raise _bad(path, where, f"bad packet {packet!r} in `result`")
        if "rtt" in packet:
            answered.append(_parse_ms(str(packet["rtt"]), path, where))
        elif not ("x" in packet or "error" in packet or "timeout" in packet):
            raise _bad(path, where, f"packet {packet!r} has neither `rtt` nor `x`")
    if answered:
        return stamp, sum(answered) / len(answered), False
    return stamp, math.nan, True


def load_ripe_json(path: str | Path) -> RttTrace:
    """RIPE Atlas API ping results: a JSON list, or JSON Lines (one result per line)."""
    path = Path(path)
    text = "\n".join(read_lines(path, what="RTT trace file"))
    items: list[tuple[int, Any]]
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _bad(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        # A list has no per-item line numbers; report the item's position instead.
        items = [(i + 1, obj) for i, obj in enumerate(data)]
        label = "result #"
    else:
        items = []
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                items.append((number, json.loads(raw)))
            except json.JSONDecodeError as exc:
                raise _bad(path, number, f"invalid JSON: {exc.msg}") from None
        label = ""
    epochs, rtts, lost = [], [], []
    for where, obj in items:
        try:
            stamp, rtt, was_lost = _ripe_result(obj, path, where)
        except ConfigError as exc:
            if label:
                raise ConfigError(
                    str(exc).replace(f"{path}:{where}:", f"{path}: {label}{where}:")
                ) from None
            raise
        epochs.append(stamp)
        rtts.append(rtt)
        lost.append(was_lost)
    return _finish(path, "ripe-json", epochs, rtts, lost)


def load_plain(path: str | Path) -> RttTrace:
    """One RTT in ms per line; a negative value is a lost ping; no timestamps."""
    path = Path(path)
    rtts: list[float] = []
    lost: list[bool] = []
    for number, raw in enumerate(read_lines(path, what="RTT trace file"), start=1):
        text = raw.strip()
        if not text:
            continue
        value = _parse_ms(text, path, number)
        rtts.append(value)
        lost.append(value < 0)
    return _finish(path, "plain", None, rtts, lost)


def detect_format(path: str | Path) -> str:
    """Which loader fits ``path``: from its first non-empty line, then its extension."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            first = next((line.strip() for line in handle if line.strip()), "")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such RTT trace file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the trace: {exc}") from None
    if first.startswith(("[", "{")):
        return "ripe-json"
    if first.replace(" ", "").lower().startswith("epoch;rtt"):
        return "ripe-csv"
    if path.suffix.lower() in (".json", ".jsonl"):
        return "ripe-json"
    try:
        float(first)
    except ValueError:
        raise ConfigError(
            f"{path}:1: cannot tell the trace format from {first[:60]!r}; expected a RIPE CSV "
            f"header 'epoch;rtt;cp', RIPE JSON results, or one RTT (ms) per line; "
            f"or name it with format: {', '.join(FORMATS)}"
        ) from None
    return "plain"


LOADERS = {"ripe-csv": load_ripe_csv, "ripe-json": load_ripe_json, "plain": load_plain}


def load_trace(path: str | Path, format: str = "auto") -> RttTrace:
    """Load an RTT trace in any supported format (``auto`` detects it)."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in LOADERS:
        raise ConfigError(f"unknown trace format {format!r}; valid: auto, {', '.join(FORMATS)}")
    return LOADERS[fmt](path)


def ripe_results_url(
    measurement_id: int, probe_ids: list[int], start: int | None = None, stop: int | None = None
) -> str:
    """The RIPE Atlas API URL of a measurement's results for some probes (Unix times)."""
    query: dict[str, str] = {"format": "json"}
    if probe_ids:
        query["probe_ids"] = ",".join(str(p) for p in probe_ids)
    if start is not None:
        query["start"] = str(start)
    if stop is not None:
        query["stop"] = str(stop)
    return RIPE_API.format(id=int(measurement_id)) + "?" + urllib.parse.urlencode(query)


def download_ripe_atlas(
    measurement_id: int,
    probe_ids: list[int],
    out: str | Path,
    start: int | None = None,
    stop: int | None = None,
    timeout_s: float = 60.0,
) -> RttTrace:
    """Download ping results (e.g. measurement 1437285, probe 6222, as in the paper) and load them.

    Needs network access to atlas.ripe.net. The file written is the API's JSON as received,
    which :func:`load_ripe_json` reads.
    """
    url = ripe_results_url(measurement_id, probe_ids, start, stop)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (fixed https host)
            body = response.read()
    except OSError as exc:
        raise CnmtRuntimeError(f"cannot download {url}: {exc}") from None
    Path(out).write_bytes(body)
    return load_ripe_json(out)
