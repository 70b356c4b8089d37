"""Schedulers: output-length estimation and the edge/cloud decision.

Everything here is pure: no model, no socket, no clock reads, no randomness. A decision is a
function of the request, a snapshot of the scheduler's state and the time passed in by the
caller, so the same inputs always give the same device. May import the core and
``cnmt.datasets.link`` (the serialisation formula); never runtime, exporters, serving or
experiments.
"""

from __future__ import annotations

from cnmt.schedulers.base import (
    Device,
    DevicePolicy,
    GroundTruth,
    LatencyModel,
    LengthEstimator,
    LinearRule,
    LinkState,
    Request,
    RequestBatch,
    SchedulerState,
    TruthRule,
)
from cnmt.schedulers.latency_models import LatencyEstimator
from cnmt.schedulers.rtt_estimators import RttEstimator

__all__ = [
    "Device",
    "DevicePolicy",
    "GroundTruth",
    "LatencyModel",
    "LatencyEstimator",
    "LengthEstimator",
    "LinearRule",
    "LinkState",
    "Request",
    "RequestBatch",
    "RttEstimator",
    "SchedulerState",
    "TruthRule",
]
