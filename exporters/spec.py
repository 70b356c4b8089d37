"""Declarative export specs: per family, its graphs' inputs, outputs, dynamic axes, tolerance.

The tensor names come from :mod:`cnmt.runtime.rnn`, the runtime being the side that must find
them; a spec adds what only the exporter needs (which axes are dynamic, how close ONNX Runtime
must come to torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from cnmt.runtime import bergamot, rnn


@dataclass(frozen=True)
class GraphSpec:
    """One graph's boundary: tensor names in order, and each tensor's dynamic axes."""

    role: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]

    def __post_init__(self) -> None:
        unknown = set(self.dynamic_axes) - set(self.inputs) - set(self.outputs)
        if unknown:
            raise ValueError(
                f"graph {self.role}: dynamic axes for unknown tensors {sorted(unknown)}"
            )


@dataclass(frozen=True)
class ExportSpec:
    """A family's graphs and the largest |torch - onnxruntime| accepted on its log-probs."""

    family: str
    graphs: tuple[GraphSpec, ...]
    tolerance: float

    def graph(self, role: str) -> GraphSpec:
        for graph in self.graphs:
            if graph.role == role:
                return graph
        raise KeyError(role)

    def file_name(self, role: str) -> str:
        return f"{role}.onnx"


_B = "batch"
_T = "src_len"

_RNN_ENCODER_AXES = {"src_ids": {0: _B, 1: _T}, "src_lengths": {0: _B}}

GRU = ExportSpec(
    family="gru",
    graphs=(
        GraphSpec(
            "encoder",
            rnn.ENCODER_INPUTS,
            rnn.GRU_ENCODER_OUTPUTS,
            {**_RNN_ENCODER_AXES, "hidden": {1: _B}},
        ),
        GraphSpec(
            "decoder",
            rnn.GRU_DECODER_INPUTS,
            rnn.GRU_DECODER_OUTPUTS,
            {"input_ids": {0: _B}, "hidden": {1: _B}, "log_probs": {0: _B}, "hidden_out": {1: _B}},
        ),
    ),
    tolerance=1e-4,
)

CN2EN = ExportSpec(family="cn2en", graphs=GRU.graphs, tolerance=GRU.tolerance)

BILSTM = ExportSpec(
    family="bilstm",
    graphs=(
        GraphSpec(
            "encoder",
            rnn.ENCODER_INPUTS,
            rnn.BILSTM_ENCODER_OUTPUTS,
            {**_RNN_ENCODER_AXES, "memory_bank": {0: _B, 1: _T}, "h": {1: _B}, "c": {1: _B}},
        ),
        GraphSpec(
            "decoder",
            rnn.BILSTM_DECODER_INPUTS,
            rnn.BILSTM_DECODER_OUTPUTS,
            {
                "input_ids": {0: _B},
                "h": {1: _B},
                "c": {1: _B},
                "input_feed": {0: _B},
                "memory_bank": {0: _B, 1: _T},
                "src_lengths": {0: _B},
                "log_probs": {0: _B},
                "h_out": {1: _B},
                "c_out": {1: _B},
                "input_feed_out": {0: _B},
            },
        ),
    ),
    tolerance=1e-4,
)


def _bergamot(layers: int = 2) -> ExportSpec:
    memory = bergamot.encoder_outputs(layers)
    memory_axes = {name: {0: _B, 2: _T} for name in memory}
    state_axes = {name: {0: _B} for name in bergamot.state_names(layers)}
    out_state_axes = {f"{name}_out": {0: _B} for name in bergamot.state_names(layers)}
    step_axes = {
        "input_ids": {0: _B},
        "src_lengths": {0: _B},
        **state_axes,
        **memory_axes,
        **out_state_axes,
    }
    return ExportSpec(
        family="bergamot",
        graphs=(
            GraphSpec(
                "encoder",
                bergamot.ENCODER_INPUTS,
                memory,
                {"src_ids": {0: _B, 1: _T}, "src_lengths": {0: _B}, **memory_axes},
            ),
            GraphSpec(
                "decoder",
                bergamot.decoder_inputs(layers, shortlist=False),
                bergamot.decoder_outputs(layers),
                {**step_axes, "logits": {0: _B}},
            ),
            GraphSpec(
                "decoder_shortlist",
                bergamot.decoder_inputs(layers, shortlist=True),
                bergamot.decoder_outputs(layers),
                {**step_axes, "candidates": {0: "candidates"}, "logits": {0: _B, 1: "candidates"}},
            ),
        ),
        # Logits, not log-probs: tens in magnitude, float32 rounding of 6+2 layers.
        tolerance=2e-3,
    )


BERGAMOT = _bergamot()
