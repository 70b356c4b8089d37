"""How a gateway shows the latency models it decides with (``GET /v1/models``, the demo): the
core's models as a mapping by target that writes through (:class:`LatencyModels`), their
coefficients, and what is unphysical about one (:func:`model_warnings`).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

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
