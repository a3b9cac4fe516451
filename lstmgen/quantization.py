"""Dynamic int8 inference on the CPU: int8 weights, int8 activations, exact int32 accumulation.

Every weight matrix is quantized once, symmetrically per output row (scale = max|row| / 127).
Every activation row is quantized when it is used, symmetrically per row, and the product runs as
a real int8 GEMM (`torch._int_mm`, oneDNN/VNNI on x86) with exact int32 accumulation before it is
scaled back to float. Because each row has its own scale and integer sums are exact, a row's
result does not depend on the other rows of the batch: a batch of n samples gives exactly the
numbers of n single runs, and evaluating a whole sequence gives exactly the numbers of stepping
through it one token at a time. The element-wise gate functions avoid `torch.sigmoid`, whose
vectorised and scalar code paths can differ in the last bit (sigmoid(x) = (1 + tanh(x/2)) / 2).

The input and recurrent products of each LSTM layer are quantized separately: embedding rows and
hidden states have different ranges, and one shared scale would crush the smaller one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .cells import lstm_update, reorder_gates
from .config import InferenceOptions
from .errors import LstmgenError
from .options import ref

_TINY = 1e-30


def check_quantize(quantize: str | None, device: torch.device | str = "cpu") -> str | None:
    """Normalise and validate a `quantize` argument (None, "none" or "int8")."""
    if quantize is None or quantize == "none":
        return None
    InferenceOptions(quantize=quantize).validate()
    if torch.device(device).type != "cpu":
        raise LstmgenError(
            f"{ref(InferenceOptions, 'quantize')} int8 runs on the CPU; drop {ref(InferenceOptions, 'device')} or use the CPU"
        )
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (AttributeError, RuntimeError, NotImplementedError):
        raise LstmgenError(
            f"{ref(InferenceOptions, 'quantize')} int8 needs a torch build with CPU int8 matrix products (torch ≥ 2.3); "
            f"this is torch {torch.__version__}"
        ) from None
    return quantize


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization: (int8 values, float32 scale per row)."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(_TINY) / 127.0
    values = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return values, scale


class Int8Linear:
    """y = x · Wᵀ (+ b) with W in int8 per row and each row of x quantized to int8 on the fly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        values, self.scale = quantize_rows(weight)
        self.weight_t = values.t()  # (in, out), column-major: the layout _int_mm reads fastest
        self.bias = bias.detach().float().contiguous() if bias is not None else None
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]

    @property
    def nbytes(self) -> int:
        return self.weight_t.numel() + 4 * self.scale.numel() + (4 * self.bias.numel() if self.bias is not None else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (rows, in) float → (rows, out) float."""
        return self.matmul(*quantize_activations(x))

    def matmul(self, quantized: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
        """The product for rows already quantized: int8 (rows, in) and their scales (rows, 1)."""
        accumulated = torch._int_mm(quantized, self.weight_t)
        if self.bias is not None:
            return torch.addcmul(self.bias, accumulated, row_scale * self.scale)
        return accumulated * (row_scale * self.scale)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 (rows, in), float scale (rows, 1))."""
    row_scale = torch.linalg.vector_norm(x, ord=math.inf, dim=1, keepdim=True).clamp_min_(_TINY).div_(127.0)
    return torch.round(x / row_scale).to(torch.int8), row_scale


def halved_sigmoid_(tensor: torch.Tensor) -> torch.Tensor:
    """σ(2x) = (1 + tanh(x)) / 2 in place: the sigmoid gates arrive halved (their weights were, exactly:
    a power of two leaves the int8 values unchanged), and tanh rounds the same whatever the batch,
    where torch.sigmoid's vectorised and scalar code paths may differ in the last bit."""
    return tensor.tanh_().mul_(0.5).add_(0.5)


class Int8LSTMLanguageModel:
    """An int8 copy of an LSTMLanguageModel for CPU inference: the same forward and state layout.

    `step` advances every row by one token; `__call__` reads whole sequences (prompts, evaluation)
    with the same arithmetic, so both give bit-identical logits and states.
    """

    def __init__(self, model: Any) -> None:
        config = model.config
        if getattr(config, "cell", "lstm") != "lstm":
            raise LstmgenError(
                f"{ref(InferenceOptions, 'quantize')} int8 supports LSTM models only, not {config.cell!r} models"
            )
        self.config = config
        rnn = model.rnn
        with torch.no_grad():
            # Embedding rows are layer 0's only input: quantized once (the start id reads as zeros).
            from .model import START_ID

            embedding = model.embedding.weight.detach().float().clone()
            embedding[START_ID] = 0.0
            self.embedding_q, scale = quantize_rows(embedding)
            self.embedding_scale = scale.unsqueeze(1)
            self.embedding_size = embedding.shape[1]
            self.layers: list[tuple[Int8Linear, Int8Linear]] = []
            for layer in range(config.num_layers):
                w_ih = reorder_gates(getattr(rnn, f"weight_ih_l{layer}"), 0.5)
                w_hh = reorder_gates(getattr(rnn, f"weight_hh_l{layer}"), 0.5)
                bias = reorder_gates(getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}"), 0.5)
                self.layers.append((Int8Linear(w_ih, bias), Int8Linear(w_hh)))
            self.projection = Int8Linear(model.projection.weight) if model.projection is not None else None
            self.head = Int8Linear(model.head.weight, model.head.bias)
        self.hidden = config.hidden_size
        # Each new h feeds the next layer now and its own layer at the next step: quantized once,
        # kept with the state `step` returned (numbers are the same as quantizing it twice).
        self._quantized_state: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def eval(self) -> Int8LSTMLanguageModel:
        return self

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read to produce one token (embedding: one row)."""
        total = sum(ih.nbytes + hh.nbytes for ih, hh in self.layers) + self.head.nbytes
        total += self.projection.nbytes if self.projection is not None else 0
        return total + self.embedding_size + 4

    def initial_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.config.num_layers, batch_size, self.hidden)
        return torch.zeros(shape), torch.zeros(shape)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            x = self.projection(x)
        return self.head(x)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens (batch,) → logits (batch, vocab) and the new state."""
        h_all, c_all = state
        cached = self._quantized_state
        previous = cached[1] if cached is not None and cached[0] is h_all else None
        new_h, new_c, quantized = [], [], []
        x_q: tuple[torch.Tensor, torch.Tensor] | None = None
        for layer, (ih, hh) in enumerate(self.layers):
            if x_q is None:  # layer 0 reads the embedding rows, quantized at load
                inputs = ih.matmul(self.embedding_q[tokens], self.embedding_scale[tokens])
            else:
                inputs = ih.matmul(*x_q)
            h_q = previous[layer] if previous is not None else quantize_activations(h_all[layer])
            gates = inputs.add_(hh.matmul(*h_q))
            x, c = lstm_update(gates, c_all[layer], halved_sigmoid_)
            x_q = quantize_activations(x)
            new_h.append(x)
            new_c.append(c)
            quantized.append(x_q)
        assert x_q is not None
        if self.projection is not None:
            logits = self.head(self.projection(new_h[-1]))
        else:
            logits = self.head.matmul(*x_q)
        new_state = (torch.stack(new_h), torch.stack(new_c))
        self._quantized_state = (new_state[0], quantized)
        return logits, new_state

    @torch.inference_mode()
    def __call__(
        self, tokens: torch.Tensor, state: Any = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """tokens (batch, time) → logits (batch, time, vocab) and the state after the last token."""
        batch, time = tokens.shape
        h_all, c_all = state if state is not None else self.initial_state(batch)
        flat = tokens.reshape(-1)
        new_h, new_c = [], []
        x: torch.Tensor | None = None
        for layer, (ih, hh) in enumerate(self.layers):
            if x is None:  # layer 0 reads the embedding rows, quantized at load
                inputs = ih.matmul(self.embedding_q[flat], self.embedding_scale[flat]).view(batch, time, -1)
            else:
                inputs = ih(x.reshape(batch * time, -1)).view(batch, time, -1)
            h, c = h_all[layer], c_all[layer]
            outputs = []
            for t in range(time):
                h, c = lstm_update(inputs[:, t] + hh(h), c, halved_sigmoid_)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
            new_h.append(h)
            new_c.append(c)
        assert x is not None
        logits = self._head(x.reshape(batch * time, -1)).view(batch, time, -1)
        return logits, (torch.stack(new_h), torch.stack(new_c))
