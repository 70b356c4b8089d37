"""An example third-party C-NMT plugin: the `safety_margin` device policy."""

from __future__ import annotations

from dataclasses import dataclass

import cnmt
from cnmt.schedulers import Device, DevicePolicy, Request, SchedulerState


class SafetyMargin(DevicePolicy):
    """Offloads only when the cloud is predicted faster by a clear margin.

    The C-NMT rule offloads as soon as ``T_tx + T_cloud < T_edge``. Predictions err, and an
    offload that loses is costlier than it looks (the network is shared and the RTT estimate
    may be stale), so this policy asks the cloud side to win by ``margin_s`` seconds plus
    ``margin_ratio`` of its own predicted time before offloading. With both margins at zero it
    decides exactly as the `cnmt` policy does.
    """

    name = "safety_margin"

    @dataclass(frozen=True)
    class Params:
        margin_s: float = 0.0
        margin_ratio: float = 0.1

        def __post_init__(self) -> None:
            if self.margin_s < 0 or self.margin_ratio < 0:
                raise ValueError("margin_s and margin_ratio must not be negative")

    def choose(self, request: Request, m_estimate: float, state: SchedulerState) -> Device:
        n = request.n_tokens
        t_edge = state.edge.predict(n, m_estimate)
        t_cloud = state.cloud.predict(n, m_estimate) + state.link.transmission_s(
            request.payload_bytes
        )
        required = t_cloud * (1.0 + self.params.margin_ratio) + self.params.margin_s
        return Device.CLOUD if required < t_edge else Device.EDGE


@cnmt.hookimpl
def cnmt_register_device_policies(register):
    register(SafetyMargin)
