"""The RNN families in torch: modules, their ONNX graph boundaries and a reference greedy decode.

Imports torch at module level: only exporters' methods import this module.

Parameter names follow the reference implementations so that checkpoints map with few
renames: the GRU modules use the PyTorch seq2seq tutorial's (``embedding``, ``gru``, ``out``,
as in cn2en's ``model.pth``), the BiLSTM uses OpenNMT-py's (``encoder.rnn``,
``decoder.rnn.layers.N``, ``decoder.attn.linear_in``/``linear_out``), except that embeddings
are plain ``nn.Embedding`` modules and the generator a plain ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _packed(embedded: torch.Tensor, lengths: torch.Tensor) -> nn.utils.rnn.PackedSequence:
    # Packing makes each row's final state (and the backward direction's start) depend only
    # on its real tokens; exported, it becomes the ONNX RNN ops' sequence_lens input.
    return pack_padded_sequence(embedded, lengths, enforce_sorted=False)


# --------------------------------------------------------------------------------------------
# GRU (tutorial / cn2en)


class GruEncoder(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.gru = nn.GRU(embedding_size, hidden_size, num_layers=layers)

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(src_ids.t())  # [src_len, batch, emb]
        # An explicit zero state: without one, the ONNX exporter fails on a packed GRU.
        start = embedded.new_zeros(self.gru.num_layers, src_ids.size(0), self.gru.hidden_size)
        _, hidden = self.gru(_packed(embedded, src_lengths), start)
        return hidden  # [layers, batch, hidden]


class GruDecoder(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.gru = nn.GRU(embedding_size, hidden_size, num_layers=layers)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(
        self, input_ids: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = F.relu(self.embedding(input_ids)).unsqueeze(0)  # [1, batch, emb]
        output, hidden = self.gru(embedded, hidden)
        return F.log_softmax(self.out(output[0]), dim=1), hidden


class GruSeq2Seq(nn.Module):
    """Encoder GRU -> final hidden -> decoder GRU, no attention (the paper's FR-EN model)."""

    def __init__(
        self,
        source_vocab: int,
        target_vocab: int,
        embedding_size: int,
        hidden_size: int,
        layers: int,
    ) -> None:
        super().__init__()
        self.encoder = GruEncoder(source_vocab, embedding_size, hidden_size, layers)
        self.decoder = GruDecoder(target_vocab, embedding_size, hidden_size, layers)

    def graphs(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def example_inputs(
        self, batch: int = 2, length: int = 5
    ) -> dict[str, tuple[torch.Tensor, ...]]:
        src, lengths = _example_source(self.encoder.embedding.num_embeddings, batch, length)
        hidden = self.encoder(src, lengths)
        ids = torch.zeros(batch, dtype=torch.long)
        return {"encoder": (src, lengths), "decoder": (ids, hidden)}

    @torch.no_grad()
    def greedy(self, source: list[int], bos: int, eos: int, max_steps: int) -> list[int]:
        """Reference decode of one sentence, step by step in torch."""
        src = torch.tensor([source], dtype=torch.long)
        hidden = self.encoder(src, torch.tensor([len(source)], dtype=torch.long))
        token = torch.tensor([bos], dtype=torch.long)
        out: list[int] = []
        for _ in range(max_steps):
            log_probs, hidden = self.decoder(token, hidden)
            token = log_probs.argmax(dim=1)
            if int(token) == eos:
                break
            out.append(int(token))
        return out


# --------------------------------------------------------------------------------------------
# BiLSTM (OpenNMT-py RNNEncoder + InputFeedRNNDecoder + GlobalAttention "general")


class BiLstmEncoder(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_size)
        self.rnn = nn.LSTM(embedding_size, hidden_size // 2, num_layers=layers, bidirectional=True)

    def forward(
        self, src_ids: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embedded = self.embeddings(src_ids.t())
        packed_out, (h, c) = self.rnn(_packed(embedded, src_lengths))
        memory_bank, _ = pad_packed_sequence(packed_out)  # [src_len, batch, hidden]
        # As OpenNMT-py's _fix_enc_hidden: per layer, [forward; backward] becomes one state.
        h = torch.cat([h[0::2], h[1::2]], dim=2)
        c = torch.cat([c[0::2], c[1::2]], dim=2)
        return memory_bank.transpose(0, 1), h, c


class StackedLstm(nn.Module):
    """LSTM cells stacked by layer, one time step (OpenNMT-py's StackedLSTM)."""

    def __init__(self, layers: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.LSTMCell(input_size, hidden_size))
            input_size = hidden_size

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            h_i, c_i = layer(x, (h[i], c[i]))
            x = h_i
            hs.append(h_i)
            cs.append(c_i)
        return x, torch.stack(hs), torch.stack(cs)


class GlobalAttention(nn.Module):
    """Luong "general" attention: score(q, s) = s . (W_in q); out = tanh(W_out [context; q])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_in = nn.Linear(dim, dim, bias=False)
        self.linear_out = nn.Linear(2 * dim, dim, bias=False)

    def forward(
        self, query: torch.Tensor, memory_bank: torch.Tensor, src_lengths: torch.Tensor
    ) -> torch.Tensor:
        scores = torch.bmm(memory_bank, self.linear_in(query).unsqueeze(2)).squeeze(2)
        positions = torch.arange(memory_bank.size(1), device=memory_bank.device)
        padding = positions.unsqueeze(0) >= src_lengths.unsqueeze(1)
        align = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=1)
        context = torch.bmm(align.unsqueeze(1), memory_bank).squeeze(1)
        return torch.tanh(self.linear_out(torch.cat([context, query], dim=1)))


class BiLstmDecoder(nn.Module):
    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_size)
        self.rnn = StackedLstm(layers, embedding_size + hidden_size, hidden_size)
        self.attn = GlobalAttention(hidden_size)


class BiLstmDecoderStep(nn.Module):
    """The decoder graph: one step of the decoder plus the generator (log-softmax)."""

    def __init__(self, decoder: BiLstmDecoder, generator: nn.Linear) -> None:
        super().__init__()
        self.decoder = decoder
        self.generator = generator

    def forward(
        self,
        input_ids: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        input_feed: torch.Tensor,
        memory_bank: torch.Tensor,
        src_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.cat([self.decoder.embeddings(input_ids), input_feed], dim=1)
        top, h, c = self.decoder.rnn(x, h, c)
        output = self.decoder.attn(top, memory_bank, src_lengths)
        return F.log_softmax(self.generator(output), dim=1), h, c, output


class BiLstmSeq2Seq(nn.Module):
    """2-layer BiLSTM encoder, LSTM decoder with input feeding and global attention."""

    def __init__(
        self,
        source_vocab: int,
        target_vocab: int,
        embedding_size: int,
        hidden_size: int,
        layers: int,
    ) -> None:
        super().__init__()
        self.encoder = BiLstmEncoder(source_vocab, embedding_size, hidden_size, layers)
        self.decoder = BiLstmDecoder(target_vocab, embedding_size, hidden_size, layers)
        self.generator = nn.Linear(hidden_size, target_vocab)
        self.hidden_size = hidden_size

    def step(self) -> BiLstmDecoderStep:
        return BiLstmDecoderStep(self.decoder, self.generator)

    def graphs(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.step()}

    def example_inputs(
        self, batch: int = 2, length: int = 5
    ) -> dict[str, tuple[torch.Tensor, ...]]:
        src, lengths = _example_source(self.encoder.embeddings.num_embeddings, batch, length)
        memory_bank, h, c = self.encoder(src, lengths)
        ids = torch.zeros(batch, dtype=torch.long)
        feed = torch.zeros(batch, self.hidden_size)
        return {
            "encoder": (src, lengths),
            "decoder": (ids, h, c, feed, memory_bank, lengths),
        }

    @torch.no_grad()
    def greedy(self, source: list[int], bos: int, eos: int, max_steps: int) -> list[int]:
        src = torch.tensor([source], dtype=torch.long)
        lengths = torch.tensor([len(source)], dtype=torch.long)
        memory_bank, h, c = self.encoder(src, lengths)
        feed = torch.zeros(1, self.hidden_size)
        step = self.step()
        token = torch.tensor([bos], dtype=torch.long)
        out: list[int] = []
        for _ in range(max_steps):
            log_probs, h, c, feed = step(token, h, c, feed, memory_bank, lengths)
            token = log_probs.argmax(dim=1)
            if int(token) == eos:
                break
            out.append(int(token))
        return out


def _example_source(vocab: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(0, vocab, (batch, length), generator=generator)
    # Distinct lengths, the longest not first: the traced graph must not assume sorted rows.
    lengths = torch.tensor([max(1, length - 1 - i) for i in range(batch)], dtype=torch.long)
    lengths[-1] = length
    return src, lengths


def init_uniform(module: nn.Module, init_range: float, seed: int) -> None:
    """Every parameter ~ U(-init_range, init_range), as OpenNMT-py's param_init, seeded."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(
                torch.rand(parameter.shape, generator=generator) * 2 * init_range - init_range
            )
