"""The decision core: one object that owns a gateway's scheduling state, decides and learns.

The live gateway (:mod:`cnmt.serving.gateway`) and the replay (:mod:`cnmt.experiments.simulate`)
both drive a :class:`DecisionCore`; neither decides nor learns on its own. A decision core
holds the components a decision needs (:class:`DecisionComponents`, built once from a config's
sections by :class:`DecisionSpecs`): the length estimator, the device policy, and per target
its latency model, and for a cloud its RTT estimator and its wait estimator. Targets are the
edge and any number of clouds, each with its own link, device, workers and queue.

One request goes through it in three calls, each given the time by its caller (the gateway its
clock, the replay its simulated time; nothing here reads a clock):

1. :meth:`DecisionCore.decide` estimates M, takes the snapshot a policy sees (each target's
   current latency model, each cloud's link and expected wait, the edge's backlog), predicts
   every target's total and its parts, and asks the policy for the target: a
   :class:`Decision`, which the HTTP answer, the log line, the metrics and the replay all
   serialise (:meth:`Decision.as_dict`).
2. The caller runs it. A local request joins :attr:`DecisionCore.edge_backlog` with its
   predicted time (the live worker reports when it starts and ends, the replay knows both);
   an offload, once really sent, is :meth:`DecisionCore.offloaded`: it joins that cloud's own
   backlog (:mod:`cnmt.schedulers.cloud_backlog`).
3. :meth:`DecisionCore.observe` learns from what happened, once the request has finished and
   never before: the length estimator ``(N, M)``, the latency model of the target that ran it
   ``(N, M, seconds)``, and after an offload that cloud's wait estimator the reported wait less
   the own part predicted when it was sent, and its RTT estimator one sample (the round trip
   less the cloud's wait and execution and less the payload's serialisation,
   :class:`~cnmt.schedulers.base.PayloadModel`). Idle probes of a cloud's link are
   :meth:`DecisionCore.observe_probe`.

A policy that draws random numbers (``uses_rng``) gets the generator the core was given, seeded
by its caller, in the state; a policy that decides between two devices only works with one
cloud, and the core says so when it is built with more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnmt.errors import ConfigError
from cnmt.registry import ComponentSpec
from cnmt.schedulers.base import (
    EDGE,
    DevicePolicy,
    LatencyModel,
    LengthEstimator,
    LinkState,
    PayloadModel,
    Request,
    SchedulerState,
    TargetState,
)
from cnmt.schedulers.cloud_backlog import OwnCloudBacklog
from cnmt.schedulers.defaults import DEFAULT_COMPONENTS
from cnmt.schedulers.edge_backlog import EdgeBacklog
from cnmt.schedulers.latency_models import LatencyEstimator
from cnmt.schedulers.rtt_estimators import RttEstimator

# The config sections a decision is built from, in the order they are created.
SECTIONS = (
    "length_estimator",
    "device_policy",
    "rtt_estimator",
    "cloud_wait_estimator",
    "edge_latency",
    "cloud_latency",
)


@dataclass(frozen=True)
class DecisionSpecs:
    """The components a decision needs, as a config selects them (name and params each): one
    set per gateway or per replayed policy, created fresh by :meth:`create`."""

    length_estimator: ComponentSpec | None
    device_policy: ComponentSpec
    rtt_estimator: ComponentSpec
    cloud_wait_estimator: ComponentSpec
    edge_latency: ComponentSpec
    cloud_latency: ComponentSpec

    @classmethod
    def select(
        cls, *lookups: Callable[[str], ComponentSpec | None], source: str = "the config"
    ) -> DecisionSpecs:
        """Each section from the first lookup that has it (a replayed policy's own overrides,
        then the config's sections), else :data:`~cnmt.schedulers.defaults.DEFAULT_COMPONENTS`;
        ConfigError for a device policy that none has."""
        chosen: dict[str, ComponentSpec | None] = {}
        for key in SECTIONS:
            spec = next((s for s in (lookup(key) for lookup in lookups) if s is not None), None)
            chosen[key] = spec or DEFAULT_COMPONENTS.get(key)
        if chosen["device_policy"] is None:
            raise ConfigError(f"{source}: a gateway needs a `device_policy` section")
        return cls(**chosen)  # type: ignore[arg-type]

    def items(self) -> list[tuple[str, ComponentSpec | None]]:
        return [(key, getattr(self, key)) for key in SECTIONS]

    def create(
        self,
        edge: TargetSetup,
        clouds: Sequence[TargetSetup],
        policy: DevicePolicy | None = None,
    ) -> DecisionComponents:
        """Fresh instances: the policy (or the given one), the length estimator, and per
        target its latency model (with its profile's fit as the prior) and, for a cloud, its
        own RTT and wait estimators."""
        return DecisionComponents(
            policy=policy if policy is not None else self.device_policy.create(),
            length=self.length_estimator.create() if self.length_estimator else None,
            edge=TargetComponents(
                edge.name, self.edge_latency.create(prior=edge.prior), workers=edge.workers
            ),
            clouds=tuple(
                TargetComponents(
                    cloud.name,
                    self.cloud_latency.create(prior=cloud.prior),
                    rtt=self.rtt_estimator.create(),
                    wait=self.cloud_wait_estimator.create(),
                    workers=cloud.workers,
                    bandwidth_bps=cloud.bandwidth_bps,
                )
                for cloud in clouds
            ),
        )


@dataclass(frozen=True)
class TargetSetup:
    """What a target is apart from its learnt state: its name, its device profile's fit (the
    latency model's prior), its workers and, for a cloud, its link's bandwidth."""

    name: str
    prior: LatencyModel
    workers: int = 1
    bandwidth_bps: float = 100e6


@dataclass
class TargetComponents:
    """One target's components: its latency model and, for a cloud, its link's RTT estimator
    and its queue's wait estimator (what other clients add to its own offloads)."""

    name: str
    latency: LatencyEstimator
    rtt: RttEstimator | None = None
    wait: RttEstimator | None = None
    workers: int = 1
    bandwidth_bps: float = 100e6


@dataclass
class DecisionComponents:
    """Everything a decision core decides and learns with."""

    policy: DevicePolicy
    length: LengthEstimator | None
    edge: TargetComponents
    clouds: tuple[TargetComponents, ...]

    @property
    def targets(self) -> tuple[TargetComponents, ...]:
        return (self.edge, *self.clouds)


@dataclass(frozen=True, slots=True)
class Prediction:
    """One target's predicted latency for a request and its parts (seconds): the link's round
    trip plus the payload's serialisation (0 on the edge), the wait in its queue (the edge's
    backlog, a cloud's expected wait) and the execution. Which parts a policy weighs is its
    rule's (``cnmt`` leaves the waits out, as the paper does; ``cnmt_load`` counts them)."""

    transmission_s: float
    wait_s: float
    exec_s: float
    rtt_s: float = 0.0  # the round trip estimate within transmission_s (0 on the edge)

    @property
    def total_s(self) -> float:
        return self.transmission_s + self.wait_s + self.exec_s


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes and why: the target, the M estimate the decision used, and per
    target (the edge first) the predicted latency and its parts. ``key`` identifies it to
    :meth:`DecisionCore.observe`; ``at`` is when it was taken."""

    key: int
    target: str
    at: float
    n_tokens: int
    payload_bytes: int
    m_estimate: float
    predicted: Mapping[str, Prediction]

    def as_dict(self) -> dict[str, Any]:
        """The decision as JSON (milliseconds): what the gateway's answer, its log line, its
        metrics and the replay's per-request output show."""
        return decision_fields(self)


def _ms(seconds: float) -> float | None:
    return round(seconds * 1000.0, 3) if math.isfinite(seconds) else None


def decision_fields(decision: Decision) -> dict[str, Any]:
    """:meth:`Decision.as_dict`: ``decided``, ``m_estimated`` and ``predicted``, per target
    ``{total_ms, transmission_ms, wait_ms, exec_ms}``."""
    m = decision.m_estimate
    return {
        "decided": decision.target,
        "n_tokens": decision.n_tokens,
        "m_estimated": round(m, 3) if math.isfinite(m) else None,
        "predicted": {
            name: {
                "total_ms": _ms(p.total_s),
                "transmission_ms": _ms(p.transmission_s),
                "wait_ms": _ms(p.wait_s),
                "exec_ms": _ms(p.exec_s),
            }
            for name, p in decision.predicted.items()
        },
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a decided request, once it finished: the target that really ran it
    (another than decided after a fault), when it finished, its output length and execution
    time, and for an offload the cloud's reported wait (None if not reported) and the RTT
    sample taken from the exchange (None if none)."""

    target: str
    at: float
    m_tokens: int
    exec_s: float
    wait_s: float | None = None
    rtt_sample_s: float | None = None


class DecisionCore:
    """Decides and learns for one gateway (see the module docstring)."""

    def __init__(
        self,
        components: DecisionComponents,
        payload: PayloadModel | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        policy = components.policy
        if len(components.clouds) > 1 and not policy.decides_among_many():
            raise ConfigError(
                f"device policy {policy.name!r} decides between the edge and one cloud; with "
                f"{len(components.clouds)} clouds choose one that decides among several "
                "(cnmt, cnmt_load, naive, edge, cloud, oracle)"
            )
        if policy.uses_rng and rng is None:
            raise ConfigError(
                f"device policy {policy.name!r} draws random numbers: give the decision core "
                "a seeded generator"
            )
        self.components = components
        self.policy = policy
        self.length = components.length
        self.payload = payload or PayloadModel()
        self.rng = rng
        self.edge_backlog = EdgeBacklog(components.edge.workers)
        self.own_backlog = {c.name: OwnCloudBacklog(c.workers) for c in components.clouds}
        self.latency = {t.name: t.latency for t in components.targets}
        self.clouds = {c.name: c for c in components.clouds}
        names = [t.name for t in components.targets]
        if names[0] != EDGE or len(set(names)) != len(names):
            raise ConfigError(f"targets must be the edge and uniquely named clouds, got {names}")
        rule = policy.linear_rule()
        self._fixed_m = rule.m_tokens if rule is not None else None
        self._estimates = self.length is not None
        self._own_wait: dict[int, float] = {}
        self._next_key = 0
        self._elapses = [
            f for f in (getattr(t.latency, "elapse", None) for t in components.targets) if f
        ]

    def use_latency(self, target: str, model: LatencyEstimator) -> None:
        """Decide and learn with ``model`` as ``target``'s latency model from now on."""
        for components in self.components.targets:
            if components.name == target:
                components.latency = model
                self.latency[target] = model
                self._elapses = [
                    f
                    for f in (getattr(t.latency, "elapse", None) for t in self.components.targets)
                    if f
                ]
                return
        raise KeyError(target)

    def use_policy(self, policy: DevicePolicy) -> None:
        """Decide with ``policy`` from now on (the learnt state stays)."""
        if len(self.components.clouds) > 1 and not policy.decides_among_many():
            raise ConfigError(
                f"device policy {policy.name!r} decides between the edge and one cloud"
            )
        if policy.uses_rng and self.rng is None:
            raise ConfigError(f"device policy {policy.name!r} draws: the core has no generator")
        self.components.policy = self.policy = policy
        rule = policy.linear_rule()
        self._fixed_m = rule.m_tokens if rule is not None else None

    # --- deciding ------------------------------------------------------------------------------

    def estimate_m(self, request: Request) -> float:
        """The M a decision for ``request`` uses: the policy's own fixed M (``naive``), else
        the length estimate, else (no length estimator: a replayed policy that ignores M) NaN."""
        if self._fixed_m is not None:
            return float(self._fixed_m)
        if self._estimates:
            return float(self.length.estimate(request))  # type: ignore[union-attr]
        return math.nan

    def cloud_wait_s(self, name: str, now: float) -> float:
        """A cloud's expected wait for a request sent at ``now``: the own offloads still ahead
        (predicted) plus the estimate of what other clients add."""
        cloud = self.clouds[name]
        return self.own_backlog[name].at(now) + cloud.wait.estimate(now)  # type: ignore[union-attr]

    def link(self, name: str, now: float) -> LinkState:
        cloud = self.clouds[name]
        return LinkState(cloud.rtt.estimate(now), cloud.bandwidth_bps)  # type: ignore[union-attr]

    def state(self, now: float) -> SchedulerState:
        """The snapshot a policy sees at ``now``."""
        edge = self.components.edge
        targets = [
            TargetState(EDGE, edge.latency.current(), None, self.edge_backlog.at(now), edge.latency)
        ]
        for cloud in self.components.clouds:
            targets.append(
                TargetState(
                    cloud.name,
                    cloud.latency.current(),
                    self.link(cloud.name, now),
                    self.cloud_wait_s(cloud.name, now),
                    cloud.latency,
                )
            )
        first = targets[1] if len(targets) > 1 else None
        return SchedulerState(
            edge=targets[0].latency,
            cloud=first.latency if first is not None else targets[0].latency,
            link=first.link if first is not None else LinkState(math.inf),  # type: ignore[arg-type]
            now=now,
            edge_backlog_s=targets[0].wait_s,
            cloud_wait_s=first.wait_s if first is not None else 0.0,
            targets=tuple(targets),
            rng=self.rng if self.policy.uses_rng else None,
        )

    def decide(self, request: Request, now: float, m_estimate: float | None = None) -> Decision:
        """The decision for ``request`` at ``now`` (``m_estimate``: an estimate the caller
        already has, e.g. a replay's computed up front for an estimator that does not learn)."""
        m = self.estimate_m(request) if m_estimate is None else float(m_estimate)
        for elapse in self._elapses:  # a posterior widens while its target goes unobserved
            elapse(now)
        state = self.state(now)
        target = self.policy.choose_target(request, m, state)
        n, payload = request.n_tokens, request.payload_bytes
        predicted = {
            t.name: Prediction(
                t.transmission_s(payload),
                t.wait_s,
                t.latency.predict(n, m),
                t.link.rtt_s if t.link is not None else 0.0,
            )
            for t in state.targets
        }
        if target not in predicted:
            raise ConfigError(
                f"device policy {self.policy.name!r} chose {target!r}, which is not a target; "
                f"the targets: {', '.join(predicted)}"
            )
        key = self._next_key
        self._next_key += 1
        return Decision(key, target, now, n, payload, m, predicted)

    # --- running -------------------------------------------------------------------------------

    def queued_locally(
        self, decision: Decision, start: float | None = None, done: float | None = None
    ) -> int:
        """The request joins the edge's backlog at its predicted time; returns the backlog's
        job key (the live worker reports its start and end with it)."""
        return self.edge_backlog.add(_finite(decision.predicted[EDGE].exec_s), start, done)

    def offloaded(self, decision: Decision, target: str, now: float) -> float:
        """The request was sent to cloud ``target`` at ``now``: it joins that cloud's own
        backlog at its predicted time. Returns its predicted wait behind the own offloads."""
        own = self.own_backlog[target].add(now, _finite(decision.predicted[target].exec_s))
        self._own_wait[decision.key] = own
        return own

    def forget(self, decision: Decision) -> None:
        """A request that never finished (refused): nothing to learn from it."""
        self._own_wait.pop(decision.key, None)

    # --- learning ------------------------------------------------------------------------------

    def observe(self, decision: Decision, outcome: Outcome) -> None:
        """Learn from a finished request (see the module docstring)."""
        own_wait = self._own_wait.pop(decision.key, 0.0)
        n = decision.n_tokens
        if self.length is not None:
            self.length.observe(n, outcome.m_tokens)
        self.latency[outcome.target].observe(n, outcome.m_tokens, outcome.exec_s)
        cloud = self.clouds.get(outcome.target)
        if cloud is None:
            return
        if outcome.wait_s is not None:  # the part of it the other clients caused
            cloud.wait.observe(max(0.0, outcome.wait_s - own_wait), outcome.at)  # type: ignore[union-attr]
        if outcome.rtt_sample_s is not None:
            cloud.rtt.observe(outcome.rtt_sample_s, outcome.at)  # type: ignore[union-attr]

    def observe_probe(self, target: str, rtt_s: float, at: float, cloud_empty: bool) -> None:
        """An idle probe of cloud ``target`` came back at ``at`` after ``rtt_s`` (the link's
        round trip: a probe costs the cloud nothing); a cloud that reported nothing pending is
        a wait sample of 0."""
        cloud = self.clouds[target]
        cloud.rtt.observe(rtt_s, at)  # type: ignore[union-attr]
        if cloud_empty:
            cloud.wait.observe(0.0, at)  # type: ignore[union-attr]


def _finite(seconds: float) -> float:
    """A prediction to queue: a policy without an M estimate predicts NaN, which queues as 0."""
    return seconds if math.isfinite(seconds) else 0.0
