"""How a gateway shows the latency models it decides with (``GET /v1/models``, the demo): the
core's models as a mapping by target that writes through (:class:`LatencyModels`), their
coefficients, and what is unphysical about one (:func:`model_warnings`); each model's and each
cloud's entry of ``/v1/models`` (:func:`latency_report`, :func:`cloud_report`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

from cnmt.schedulers.base import LatencyModel
from cnmt.schedulers.core import DecisionCore
from cnmt.schedulers.latency_models import LatencyEstimator

# A predicted execution time above this is absurd for one sentence (an hour).
ABSURD_PREDICTION_S = 3600.0


def model_warnings(device: str, model: LatencyModel, max_tokens: int) -> list[str]:
    """What is unphysical about a learnt latency model: a negative slope, or a predicted time
    that is negative or absurd for a request of 1 or ``max_tokens`` tokens each way. Such a
    model still decides; ``/v1/models`` and the demo's summary say so."""
    found = []
    for name, slope in (("a_n", model.a_n), ("a_m", model.a_m)):
        if slope < 0:
            found.append(
                f"{device}: {name} = {slope * 1e3:.4f} ms/token is negative: longer requests "
                "are predicted to run faster"
            )
    for n in sorted({1, max_tokens}):
        predicted = model.predict(n, n)
        if not 0.0 <= predicted <= ABSURD_PREDICTION_S:
            found.append(
                f"{device}: predicts {predicted * 1e3:.1f} ms for N = M = {n}, which no device "
                f"can take (b = {model.b * 1e3:.1f} ms)"
            )
    return found


def coefficients(model: LatencyModel) -> dict[str, float]:
    """A latency model's coefficients: seconds per input token, per output token, and fixed."""
    return {"a_n": model.a_n, "a_m": model.a_m, "b": model.b}


class LatencyModels(MutableMapping[str, LatencyEstimator]):
    """The core's latency models as a mapping that writes through (``gateway.latency[...] =``)."""

    def __init__(self, core: DecisionCore) -> None:
        self.core = core

    def __getitem__(self, target: str) -> LatencyEstimator:
        return self.core.latency[target]

    def __setitem__(self, target: str, model: LatencyEstimator) -> None:
        self.core.use_latency(target, model)

    def __delitem__(self, target: str) -> None:
        raise TypeError("every target keeps a latency model")

    def __iter__(self) -> Iterator[str]:
        return iter(self.core.latency)

    def __len__(self) -> int:
        return len(self.core.latency)


def _ms(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000.0, 3)


def latency_report(
    estimator: LatencyEstimator, device: str, errors: Iterable[float]
) -> dict[str, Any]:
    """One target's latency model in ``/v1/models``: what it is, what it learnt, and the
    median |predicted - observed| / observed of its last requests (``errors``)."""
    errors = list(errors)
    return {
        "device": device,
        "component": estimator.name,
        "learns": estimator.learns,
        "observations": estimator.observations,
        "dropped": estimator.dropped,
        "current": coefficients(estimator.current()),
        "prior": coefficients(estimator.prior),
        "recent_requests": len(errors),
        "median_abs_relative_error": round(statistics.median(errors), 4) if errors else None,
        # a posterior's: observations refused as impossible, and its speed's spread
        "speed_sd": round(estimator.scale_sd(), 4) if hasattr(estimator, "scale_sd") else None,
    }


def cloud_report(
    core: DecisionCore, name: str, now: float, device: str, healthy: bool, client: object
) -> dict[str, Any]:
    """One cloud in ``/v1/models``: its device, whether a client is attached and healthy, and
    its link and wait as the core sees them at ``now``."""
    return {
        "device": device,
        "attached": client is not None,
        "healthy": client is not None and healthy,
        "rtt_estimate_ms": _ms(core.link(name, now).rtt_s),
        "cloud_wait_estimate_ms": _ms(core.cloud_wait_s(name, now)),
    }
