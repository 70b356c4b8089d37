"""Registers the built-in schedulers: length estimators, device policies, RTT estimators, and
the top-level config sections that select one of each."""

from __future__ import annotations

from cnmt import hookimpl
from cnmt.hookspecs import Register


@hookimpl
def cnmt_register_length_estimators(register: Register) -> None:
    from cnmt.schedulers import features, length_estimators

    register(length_estimators.LinearLength)
    register(length_estimators.OnlineLinearLength)
    register(length_estimators.OnlineMeanByLength)
    register(length_estimators.NaiveLength)
    register(length_estimators.OracleLength)
    register(features.FeaturesLength)


@hookimpl
def cnmt_register_device_policies(register: Register) -> None:
    from cnmt.schedulers import device_policies

    register(device_policies.CnmtPolicy)
    register(device_policies.CnmtLoadPolicy)
    register(device_policies.NaivePolicy)
    register(device_policies.EdgeOnly)
    register(device_policies.CloudOnly)
    register(device_policies.OraclePolicy)
    register(device_policies.ExpectedOraclePolicy)

    from cnmt.schedulers import exploration

    register(exploration.ExploringPolicy)


@hookimpl
def cnmt_register_rtt_estimators(register: Register) -> None:
    from cnmt.schedulers import rtt_estimators

    register(rtt_estimators.LastSample)
    register(rtt_estimators.Ewma)
    register(rtt_estimators.WindowedMedian)


@hookimpl
def cnmt_register_latency_models(register: Register) -> None:
    from cnmt.schedulers import latency_models

    register(latency_models.ProfileLatency)
    register(latency_models.OnlineLatency)

    from cnmt.schedulers import posterior

    register(posterior.PosteriorLatency)


# Top-level sections that select a scheduler component: key -> component kind.
SCHEDULER_SECTIONS = {
    "length_estimator": "length_estimator",
    "device_policy": "device_policy",
    "rtt_estimator": "rtt_estimator",
    "cloud_wait_estimator": "rtt_estimator",
    "edge_latency": "latency_model",
    "cloud_latency": "latency_model",
}


@hookimpl
def cnmt_register_config_sections(register: Register) -> None:
    from cnmt.registry import component

    for key, kind in SCHEDULER_SECTIONS.items():
        register(key, lambda kind=kind: component(kind))
