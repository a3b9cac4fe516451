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

Two kernels compute the same integer sums, and each product shape uses the faster one here:
`torch._int_mm`, and a float32 GEMM over the int8 values (every product of two int8 values and
every partial sum of at most EXACT_FLOAT_DEPTH of them is an integer below 2^24, so float32 holds
them exactly, in any order; deeper products are cut into such slices summed in float64). Both give
bit-identical results, so the choice never changes a number. It matters: torch's CPU `_int_mm`
runs oneDNN's int8 GEMM only on CPUs with AVX512-VNNI (and oneDNN enabled); elsewhere it is a
scalar reference loop, measured 4× slower than float32 at one row and 10-50× at 64-256 rows. There
the float kernel is used without measuring; with VNNI each product shape (by row count) is
measured once per process (`choose_kernel`).

Where the int8 model, on its best kernels, is still slower than the float32 one for a use
(generation, evaluation), the caller runs float32 instead and says so in one warning
(`int8_is_faster`); $LSTMGEN_INT8=always keeps int8 (its exact numbers, or to measure its cost).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from time import perf_counter, thread_time
from typing import Any

import torch

from .cells import lstm_update, reorder_gates
from .config import InferenceOptions
from .errors import LstmgenError
from .options import ref

_TINY = 1e-30
log = logging.getLogger("lstmgen")

#: The kernels of an int8 product, in order of preference on a tie: they give identical numbers.
KERNELS = ("int8", "float")
#: The most int8 terms a float32 GEMM sums exactly: 127² · 1040 < 2^24.
EXACT_FLOAT_DEPTH = 1040
#: Products are timed at these row counts; a product of n rows uses the choice of the first one ≥ n
#: (of the last one for more: per row, larger products cost about what 256 rows do).
ROW_BUCKETS = (1, 4, 16, 64, 256)
#: `LSTMGEN_INT8=always`: run int8 even where float32 measures faster (no fallback).
INT8_ENV = "LSTMGEN_INT8"
#: Kernel choices of this process: (in, out, row bucket, threads) → kernel.
_KERNEL_CHOICES: dict[tuple[int, int, int, int], str] = {}


def int8_gemm_is_native() -> bool:
    """Whether `torch._int_mm` runs oneDNN's int8 GEMM on this CPU: torch takes it only with AVX512-VNNI and
    oneDNN enabled, and otherwise runs a scalar reference loop (one int32 dot product per output element)."""
    vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    if vnni is None:  # this torch cannot tell: measure
        return True
    return bool(vnni()) and torch.backends.mkldnn.is_available() and bool(torch.backends.mkldnn.enabled)


def int8_forced() -> bool:
    """$LSTMGEN_INT8=always: int8 runs even where float32 measures faster."""
    return os.environ.get(INT8_ENV, "").strip().lower() == "always"


def measure(
    candidates: dict[str, Callable[[], object]], rounds: int = 5, budget: float = 0.1, warmup: bool = True
) -> dict[str, list[float]]:
    """Seconds per call of each candidate: one warm-up call each (unless `warmup` is False), then rounds that call
    each once in turn (interleaved, so a busy machine slows them alike), until `rounds` rounds or `budget` seconds
    of wall time (at least one round). A candidate whose first timed call is 4× slower than another's is not called
    again. On one thread the clock is the thread's CPU time, which other programs taking the core do not inflate."""
    clock = thread_time if torch.get_num_threads() == 1 else perf_counter
    for run in candidates.values() if warmup else ():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    started = perf_counter()
    for index in range(rounds):
        for name, run in candidates.items():
            if index and min(times[name]) > 4 * min(min(t) for t in times.values()):
                continue
            begin = clock()
            run()
            times[name].append(clock() - begin)
        if perf_counter() - started > budget:
            break
    return times


def fastest(times: dict[str, list[float]], margin: float = 1.0) -> str:
    """The candidate with the least minimum time; a later one must beat the first by `margin` (0.9: by 10 %)."""
    first, *others = times
    best = min(others, key=lambda name: min(times[name]), default=first)
    return best if min(times[best]) < margin * min(times[first]) else first


def _bucket(rows: int) -> int:
    return next((bucket for bucket in ROW_BUCKETS if rows <= bucket), ROW_BUCKETS[-1])


def choose_kernel(linear: Int8Linear, bucket: int) -> str:
    """The kernel for products of `linear`'s shape with about `bucket` rows: measured once per process and
    shape where both can win; the float one where `_int_mm` is torch's reference loop; int8 where float32
    matrix products may round (torch.set_float32_matmul_precision below "highest")."""
    key = (linear.in_features, linear.out_features, bucket, torch.get_num_threads())
    if key not in _KERNEL_CHOICES:
        if not int8_gemm_is_native():
            _KERNEL_CHOICES[key] = "float"
        elif torch.get_float32_matmul_precision() != "highest":
            _KERNEL_CHOICES[key] = "int8"
        else:
            generator = torch.Generator().manual_seed(bucket)
            values, _ = quantize_activations(torch.randn(bucket, linear.in_features, generator=generator))
            times = measure({kernel: _runner(linear, values, kernel) for kernel in KERNELS})
            # Timed alone, a product finds its weights in cache; in a model the int8 ones (4× smaller) stay
            # there more often, so the float kernel must win by 10 %.
            _KERNEL_CHOICES[key] = fastest(times, margin=0.9)
    return _KERNEL_CHOICES[key]


def _runner(linear: Int8Linear, values: torch.Tensor, kernel: str) -> Callable[[], object]:
    return lambda: linear.sums(values, kernel)


def int8_is_faster(
    use: str,
    int8_run: Callable[[], object],
    float_run: Callable[[], object],
    rounds: int = 5,
    budget: float = 0.3,
    warmup: bool = True,
) -> bool:
    """Whether `use` ("generation", "evaluation") should run int8: at least as fast as float32 by interleaved
    timing (the best of each; see `measure`). Otherwise one warning says float32 runs instead."""
    times = measure({"int8": int8_run, "float32": float_run}, rounds=rounds, budget=budget, warmup=warmup)
    ratio = min(times["int8"]) / min(times["float32"])
    if ratio <= 1.0:
        return True
    where = "" if int8_gemm_is_native() else " (this CPU has no AVX512-VNNI int8 GEMM)"
    log.warning(
        f"int8 {use} measured {ratio:.2f}x slower than float32 here{where}; running float32 instead "
        f"({INT8_ENV}=always keeps int8)"
    )
    return False


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
        #: The kernel of each row bucket, once chosen (`choose_kernel`).
        self.kernels: dict[int, str] = {}
        self._float_slices: list[tuple[int, torch.Tensor]] | None = None

    @property
    def nbytes(self) -> int:
        return self.weight_t.numel() + 4 * self.scale.numel() + (4 * self.bias.numel() if self.bias is not None else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (rows, in) float → (rows, out) float."""
        return self.matmul(*quantize_activations(x))

    def kernel(self, rows: int) -> str:
        bucket = _bucket(rows)
        if bucket not in self.kernels:
            self.kernels[bucket] = choose_kernel(self, bucket)
        return self.kernels[bucket]

    def matmul(self, quantized: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
        """The product for rows already quantized: their int8 values (rows, in), as int8 or as whole floats, and
        their scales (rows, 1)."""
        # In place, one element-wise operation at a time (no fused multiply-add: the same rounding in every
        # code path), and no new (rows, out) tensor: for a vocabulary-sized head that halves the time here.
        sums = self.sums(quantized, self.kernel(quantized.shape[0])).mul_(row_scale).mul_(self.scale)
        return sums.add_(self.bias) if self.bias is not None else sums

    def sums(self, values: torch.Tensor, kernel: str) -> torch.Tensor:
        """The exact integer sums Σ_k x[r, k] · W[o, k] as float32 (rows, out) of rows of int8 values (as int8 or
        as whole floats), by `kernel`: the same numbers either way."""
        if kernel == "int8":
            return torch._int_mm(values.to(torch.int8), self.weight_t).float()
        if values.dtype != torch.float32:
            values = values.float()
        slices = self.float_slices()
        if len(slices) == 1:
            return torch.mm(values, slices[0][1])
        total = torch.zeros(values.shape[0], self.out_features, dtype=torch.float64)
        for start, weight in slices:  # each slice exact in float32, their sum exact in float64
            total += torch.mm(values[:, start : start + weight.shape[0]], weight)
        return total.float()

    def float_slices(self) -> list[tuple[int, torch.Tensor]]:
        """The int8 weights as float32 (in, out), cut along `in` into slices float32 sums exactly (made on first use)."""
        if self._float_slices is None:
            self._float_slices = [
                (start, self.weight_t[start : start + EXACT_FLOAT_DEPTH].float().contiguous())
                for start in range(0, self.in_features, EXACT_FLOAT_DEPTH)
            ]
        return self._float_slices


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (the int8 values as whole float32 numbers (rows, in), float scale (rows, 1))."""
    row_scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY).div_(127.0)
    return x.div(row_scale).round_(), row_scale


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

    def choose_kernels(self, batch: int, time: int = 1) -> None:
        """Choose every product's kernel for steps of `batch` rows and windows of `batch` × `time` tokens now
        (otherwise each is chosen at its first use)."""
        for rows in {batch, batch * time}:
            for linear in [*(linear for pair in self.layers for linear in pair), self.projection, self.head]:
                if linear is not None:
                    linear.kernel(rows)

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
