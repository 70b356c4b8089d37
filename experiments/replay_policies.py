"""The policies a replay runs: each with the specs of the components its gateway decides and
learns with (:class:`PolicyRun`, built from a config by :func:`build_policies`), and the checks
that its length model counts tokens as the replayed corpus does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnmt.config import Config
from cnmt.errors import ConfigError
from cnmt.experiments.config import CorpusSpec, ReplayConfig
from cnmt.registry import ComponentSpec, get_components
from cnmt.schedulers.base import DevicePolicy
from cnmt.schedulers.core import DecisionComponents, DecisionSpecs, TargetSetup


@dataclass
class PolicyRun:
    """One policy to replay and the components its gateway decides and learns with (specs:
    every simulation of it starts from fresh instances)."""

    label: str
    policy: DevicePolicy
    specs: DecisionSpecs
    rtt_probe_s: float | None = None

    @property
    def length(self) -> ComponentSpec | None:
        return self.specs.length_estimator

    @property
    def rtt(self) -> ComponentSpec:
        return self.specs.rtt_estimator

    def components(self, edge: TargetSetup, clouds: list[TargetSetup]) -> DecisionComponents:
        """Fresh components (the policy instance is kept: it does not learn); a policy that
        ignores the length estimate decides without one."""
        made = self.specs.create(edge, clouds, policy=self.policy)
        if not self.policy.uses_length_estimate:
            made.length = None
        return made

    @property
    def closed_loop(self) -> bool:
        """Whether anything it decides with learns from what it observes."""
        classes = [
            get_components().get(spec.kind, spec.name).cls
            for spec in (
                self.specs.length_estimator,
                self.specs.edge_latency,
                self.specs.cloud_latency,
            )
            if spec is not None
        ]
        if self.policy.needs_truth:
            return False  # an Oracle decides from the truth, whatever its models learn
        return any(getattr(cls, "learns", False) for cls in classes)


def build_policies(config: Config, replay: ReplayConfig) -> list[PolicyRun]:
    """Every policy with its components: the policy's own overrides, else the config's
    top-level sections, else the defaults (validated when the config was loaded)."""
    runs = []
    for spec in replay.policy_specs():
        specs = DecisionSpecs.select(
            lambda key, spec=spec: spec.policy if key == "device_policy" else getattr(spec, key),
            config.get,
            source=config.source,
        )
        runs.append(
            PolicyRun(
                label=spec.label,
                policy=spec.policy.create(),
                specs=specs,
                rtt_probe_s=spec.rtt_probe_s,
            )
        )
    return runs


def describe_length(run: PolicyRun) -> str:
    """The estimator's name, with the fitted file's name when it has one (``linear:iwslt14``);
    empty for a policy that ignores the length estimate."""
    if run.length is None or not run.policy.uses_length_estimate:
        return ""
    model = getattr(run.length.params, "model", None)
    return f"{run.length.name}:{Path(model).stem}" if model else run.length.name


def check_length_units(runs: list[PolicyRun], spec: CorpusSpec, source: str) -> None:
    """A fitted length model must count tokens like the corpus the replay draws from."""
    for run in runs:
        length = run.length.create() if run.length is not None else None
        for fitted in (getattr(length, "fitted", None), getattr(run.policy, "fitted", None)):
            if fitted is not None:
                _same_units(fitted, spec, source, run.label)


def _same_units(fitted: Any, spec: CorpusSpec, source: str, label: str) -> None:
    from cnmt.experiments.tokens import same_tokenizer

    pairs = ((fitted.src_tokenizer, spec.src_tokenizer), (fitted.tgt_tokenizer, spec.tgt_tokenizer))
    hashes = fitted.source.get("tokenizer_files", {})
    for theirs, ours in pairs:
        if not same_tokenizer(theirs, ours, hashes):
            raise ConfigError(
                f"{source}: policy {label!r}: its length model counts tokens with "
                f"{theirs!r} but replay.corpus uses {ours!r}; fit the length model with the "
                "corpus' tokenizers (N and M must be in the running model's tokens)"
            )
