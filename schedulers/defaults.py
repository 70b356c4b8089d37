"""The scheduler components a gateway or a replay uses when its config leaves a section out.

One table for both, so that a live gateway and its replay decide and learn with the same
components from the same YAML.
"""

from __future__ import annotations

from cnmt.registry import ComponentSpec
from cnmt.schedulers.rtt_estimators import WindowedMedian

DEFAULT_COMPONENTS: dict[str, ComponentSpec] = {
    "rtt_estimator": ComponentSpec("rtt_estimator", "last", None),
    # Starts at no wait; once stale, the estimate decays toward the lowest wait seen, so one
    # burst does not keep every request off the cloud.
    "cloud_wait_estimator": ComponentSpec(
        "rtt_estimator", "median", WindowedMedian.Params(initial_s=0.0)
    ),
    "edge_latency": ComponentSpec("latency_model", "profile", None),
    "cloud_latency": ComponentSpec("latency_model", "profile", None),
}
