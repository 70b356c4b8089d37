"""The Bergamot "tiny" architecture in torch: Marian's transformer encoder, SSRU decoder.

Rebuilt from Marian's definitions (``transformer-postprocess: dan``: every block is
``LayerNorm(x + block(x))``; no pre-norm; embeddings scaled by sqrt(d) plus Marian's
sinusoidal positions, sines in the first half and cosines in the second; layer norm epsilon
1e-6; attention masks add -99999999 at padded keys). The decoder's self-attention is an SSRU
(Kim et al. 2019): ``f = sigmoid(x Wf + bf)``, ``c = f * c_prev + (1 - f) * (x W)``, output
``relu(c)``; its state is ``c``, one 256-wide vector per decoder layer. The first decoder
input is a zero embedding (Marian feeds no start token); the step graph takes it as
``start_id`` = the vocabulary size. Output embeddings are tied to the input ones
(``tied-embeddings-all``) with a bias.

Only the exporter imports this module (torch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

EPS = 1e-6
MASK_VALUE = -99999999.0


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(array)), requires_grad=False)


class LayerNorm(nn.Module):
    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        super().__init__()
        self.scale = _param(weights[f"{prefix}_ln_scale"].reshape(-1))
        self.bias = _param(weights[f"{prefix}_ln_bias"].reshape(-1))
        self.dim = int(self.scale.shape[0])  # a Python int: traced shapes must be constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, (self.dim,), self.scale, self.bias, EPS)


class Affine(nn.Module):
    """``x W + b`` with Marian's [in, out] weight."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        super().__init__()
        self.weight = _param(weight)
        self.bias = _param(bias.reshape(-1)) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y


def positions(start: torch.Tensor, length: int | torch.Tensor, dim: int) -> torch.Tensor:
    """Marian's sinusoidal signal for positions ``start .. start + length - 1``: [length, dim]."""
    half = dim // 2
    increment = math.log(10000.0) / (half - 1)
    timescales = torch.exp(torch.arange(half, dtype=torch.float32) * -increment)
    steps = torch.arange(length, dtype=torch.float32) + start.to(torch.float32)
    angles = steps[:, None] * timescales[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention: Wq/Wk/Wv/Wo with biases, heads split contiguously."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = Affine(weights[f"{prefix}_Wq"], weights[f"{prefix}_bq"])
        self.k = Affine(weights[f"{prefix}_Wk"], weights[f"{prefix}_bk"])
        self.v = Affine(weights[f"{prefix}_Wv"], weights[f"{prefix}_bv"])
        self.o = Affine(weights[f"{prefix}_Wo"], weights[f"{prefix}_bo"])
        self.norm = LayerNorm(weights, f"{prefix}_Wo")

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, dim = x.shape
        return x.reshape(batch, steps, self.heads, dim // self.heads).transpose(1, 2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k(memory)), self.split(self.v(memory))

    def attend(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``LayerNorm(x + attention)``; ``mask`` is additive, [batch, 1, 1, src_len]."""
        q = self.split(self.q(x))
        scores = q @ keys.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1])) + mask
        context = torch.softmax(scores, dim=-1) @ values
        batch, _, steps, _ = context.shape
        joined = context.transpose(1, 2).reshape(batch, steps, -1)
        return self.norm(x + self.o(joined))


class FeedForward(nn.Module):
    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        super().__init__()
        self.w1 = Affine(weights[f"{prefix}_W1"], weights[f"{prefix}_b1"])
        self.w2 = Affine(weights[f"{prefix}_W2"], weights[f"{prefix}_b2"])
        self.norm = LayerNorm(weights, f"{prefix}_ffn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.w2(torch.relu(self.w1(x))))


class Ssru(nn.Module):
    """One SSRU step: (x, c_prev) -> (LayerNorm(x + relu(c)), c)."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        super().__init__()
        self.w = Affine(weights[f"{prefix}_W"], None)
        self.wf = Affine(weights[f"{prefix}_Wf"], weights[f"{prefix}_bf"])
        self.norm = LayerNorm(weights, f"{prefix}_ffn")

    def forward(self, x: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        forget = torch.sigmoid(self.wf(x))
        cell = forget * cell + (1.0 - forget) * self.w(x)
        return self.norm(x + torch.relu(cell)), cell


def source_mask(src_lengths: torch.Tensor, length: int | torch.Tensor) -> torch.Tensor:
    """Additive key mask [batch, 1, 1, length]: 0 on real tokens, MASK_VALUE on padding."""
    valid = torch.arange(length)[None, :] < src_lengths[:, None]
    return ((~valid).to(torch.float32) * MASK_VALUE)[:, None, None, :]


class BergamotModel(nn.Module):
    """Encoder layers, decoder layers and the tied embeddings of one Bergamot model."""

    def __init__(self, weights: dict[str, np.ndarray], options: dict[str, Any]) -> None:
        super().__init__()
        self.dim = int(options["dim-emb"])
        self.heads = int(options["transformer-heads"])
        self.embeddings = _param(weights["Wemb"])
        self.output_bias = _param(weights["decoder_ff_logit_out_b"].reshape(-1))
        self.vocab_size = self.embeddings.shape[0]
        self.encoder_self = nn.ModuleList()
        self.encoder_ffn = nn.ModuleList()
        for layer in range(1, int(options["enc-depth"]) + 1):
            prefix = f"encoder_l{layer}"
            self.encoder_self.append(Attention(weights, f"{prefix}_self", self.heads))
            self.encoder_ffn.append(FeedForward(weights, f"{prefix}_ffn"))
        self.decoder_rnn = nn.ModuleList()
        self.decoder_context = nn.ModuleList()
        self.decoder_ffn = nn.ModuleList()
        for layer in range(1, int(options["dec-depth"]) + 1):
            prefix = f"decoder_l{layer}"
            self.decoder_rnn.append(Ssru(weights, f"{prefix}_rnn"))
            self.decoder_context.append(Attention(weights, f"{prefix}_context", self.heads))
            self.decoder_ffn.append(FeedForward(weights, f"{prefix}_ffn"))

    @property
    def decoder_layers(self) -> int:
        return len(self.decoder_rnn)

    def encode(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> list[torch.Tensor]:
        """The cross-attention keys and values of every decoder layer, [batch, heads, T, dk]."""
        length = src_ids.shape[1]
        x = self.embeddings[src_ids] * math.sqrt(self.dim)
        x = x + positions(torch.zeros((), dtype=torch.int64), length, self.dim)[None]
        mask = source_mask(src_lengths, length)
        for attention, ffn in zip(self.encoder_self, self.encoder_ffn, strict=True):
            keys, values = attention.keys_values(x)
            x = ffn(attention.attend(x, keys, values, mask))
        memory: list[torch.Tensor] = []
        for context in self.decoder_context:
            memory.extend(context.keys_values(x))
        return memory

    def step(
        self,
        input_ids: torch.Tensor,
        position: torch.Tensor,
        states: list[torch.Tensor],
        memory: list[torch.Tensor],
        src_lengths: torch.Tensor,
        candidates: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [batch, vocab or candidates] of the next token, and the next SSRU states.

        ``input_ids`` equal to the vocabulary size is Marian's start: a zero embedding.
        """
        is_word = input_ids < self.vocab_size
        ids = torch.where(is_word, input_ids, torch.zeros_like(input_ids))
        x = self.embeddings[ids] * is_word.to(torch.float32)[:, None] * math.sqrt(self.dim)
        x = (x + positions(position.reshape(()), 1, self.dim))[:, None, :]
        mask = source_mask(src_lengths, memory[0].shape[2])
        next_states = []
        for layer in range(self.decoder_layers):
            x, cell = self.decoder_rnn[layer](x, states[layer][:, None, :])
            next_states.append(cell[:, 0, :])
            keys, values = memory[2 * layer], memory[2 * layer + 1]
            x = self.decoder_ffn[layer](self.decoder_context[layer].attend(x, keys, values, mask))
        hidden = x[:, 0, :]
        if candidates is None:
            return hidden @ self.embeddings.T + self.output_bias, next_states
        weight = self.embeddings[candidates]
        return hidden @ weight.T + self.output_bias[candidates], next_states

    # -- graphs for export -------------------------------------------------------------------

    def graphs(self) -> dict[str, nn.Module]:
        return {
            "encoder": _EncoderGraph(self),
            "decoder": _StepGraph(self, shortlist=False),
            "decoder_shortlist": _StepGraph(self, shortlist=True),
        }

    def example_inputs(self, batch: int = 2, length: int = 5) -> dict[str, tuple[Any, ...]]:
        src = torch.randint(2, self.vocab_size, (batch, length))
        lengths = torch.full((batch,), length, dtype=torch.int64)
        lengths[-1] = max(1, length - 2)
        memory = [
            torch.randn(batch, self.heads, length, self.dim // self.heads)
            for _ in range(2 * self.decoder_layers)
        ]
        states = [torch.randn(batch, self.dim) for _ in range(self.decoder_layers)]
        step = (
            torch.full((batch,), self.vocab_size, dtype=torch.int64),
            torch.tensor([3], dtype=torch.int64),
            *states,
            *memory,
            lengths,
        )
        candidates = torch.tensor([0, 5, 9, 17, 300], dtype=torch.int64)
        return {
            "encoder": (src, lengths),
            "decoder": step,
            "decoder_shortlist": (*step, candidates),
        }

    @torch.no_grad()
    def greedy(
        self,
        source: list[int],
        max_steps: int,
        eos: int,
        suppressed: list[int],
        candidates: list[int] | None = None,
    ) -> list[int]:
        """Greedy decode of one source (EOS included) in torch: the validation reference."""
        src = torch.tensor([source], dtype=torch.int64)
        lengths = torch.tensor([len(source)], dtype=torch.int64)
        memory = self.encode(src, lengths)
        states = [torch.zeros(1, self.dim) for _ in range(self.decoder_layers)]
        token = torch.tensor([self.vocab_size])
        chosen = torch.tensor(candidates) if candidates is not None else None
        out: list[int] = []
        for position in range(max_steps):
            logits, states = self.step(
                token, torch.tensor([position]), states, memory, lengths, chosen
            )
            ids = chosen if chosen is not None else torch.arange(self.vocab_size)
            for word in suppressed:
                logits[:, ids == word] = -math.inf
            best = int(ids[int(logits[0].argmax())])
            if best == eos:
                break
            out.append(best)
            token = torch.tensor([best])
        return out


class _EncoderGraph(nn.Module):
    def __init__(self, model: BergamotModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode(src_ids, src_lengths))


class _StepGraph(nn.Module):
    def __init__(self, model: BergamotModel, shortlist: bool) -> None:
        super().__init__()
        self.model = model
        self.shortlist = shortlist

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, *rest: torch.Tensor) -> Any:
        layers = self.model.decoder_layers
        states = list(rest[:layers])
        memory = list(rest[layers : 3 * layers])
        src_lengths = rest[3 * layers]
        candidates = rest[3 * layers + 1] if self.shortlist else None
        logits, next_states = self.model.step(
            input_ids, position, states, memory, src_lengths, candidates
        )
        return (logits, *next_states)
