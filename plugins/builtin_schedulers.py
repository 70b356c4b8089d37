"""Registers the built-in length estimators and device policies."""

from __future__ import annotations

from cnmt import hookimpl
from cnmt.hookspecs import Register
from cnmt.schedulers import device_policies, length_estimators, rtt_estimators


@hookimpl
def cnmt_register_length_estimators(register: Register) -> None:
    register(length_estimators.LinearLength)
    register(length_estimators.NaiveLength)
    register(length_estimators.OracleLength)


@hookimpl
def cnmt_register_device_policies(register: Register) -> None:
    register(device_policies.CnmtPolicy)
    register(device_policies.NaivePolicy)
    register(device_policies.EdgeOnly)
    register(device_policies.CloudOnly)
    register(device_policies.OraclePolicy)


@hookimpl
def cnmt_register_rtt_estimators(register: Register) -> None:
    register(rtt_estimators.LastSample)
    register(rtt_estimators.Ewma)
    register(rtt_estimators.WindowedMedian)
