"""Recurrent cells: PyTorch's LSTM and GRU, and the design document's own LSTM ("paper").

Every cell is used the same way by the model (see `build_rnn`, `run_rnn`, `make_step`):

- the window forward takes inputs (batch, time, in) and a state, and returns the top layer's
  outputs (batch, time, H) and the new state;
- the **state is always a tuple** of tensors of shape (layers, batch, H), named by
  `STATE_NAMES[cell]`: `(h, c)` for `lstm`, `(h,)` for `gru` and `(h,)` for `paper` (the paper
  cell's only recurrent quantity is its cell state, which the design document calls h).

The paper cell (docs/cells.md, docs/bundle-format.md §3–4)::

    i_t  = σ(W_xi x_t + W_hi h_{t-1} + b_i)
    f_t  = σ(W_xf x_t + W_hf h_{t-1} + b_f)
    h~_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)
    h_t  = f_t ⊙ h_{t-1} + i_t ⊙ h~_t
    o_t  = σ(W_xo x_t + W_ho h_t + b_o)          (reads the NEW state)
    y_t  = o_t ⊙ tanh(h_t)                        (the layer's output; never fed back)

Only h is recurrent, and o_t/y_t depend on h_t but never feed the recurrence. So a window costs:
one GEMM for every input projection of the window, then per step one GEMM (the [i, f, h~] rows
from h_{t-1}) and a few elementwise operations, and after the loop one GEMM for the output gate of
the whole window. The loop runs inside a custom autograd function whose backward is written by
hand (one GEMM per step, the weight gradient as one GEMM over the window), so autograd records no
per-step graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

#: The cells `ModelConfig.cell` accepts (config.CELLS is this tuple).
CELL_NAMES = ("lstm", "gru", "paper")
#: The names of the state tensors of each cell, in tuple order (checkpoints store `carry.NAME`).
STATE_NAMES: dict[str, tuple[str, ...]] = {"lstm": ("h", "c"), "gru": ("h",), "paper": ("h",)}

#: The paper cell's W_hh starts at this fraction of PyTorch's default bound (PaperLSTM.reset_parameters).
RECURRENT_INIT_SCALE = 0.5

State = tuple[torch.Tensor, ...]
Step = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


# -- the paper cell -----------------------------------------------------------------------------


def _paper_forward_loop(projected: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States h_1..h_T (T, B, H) and the activated gates [i, f, h~] (T, B, 3H).

    projected (T, B, 4H) holds W_x· x_t + b; its first 3H columns are the i, f, h~ rows.
    weight_hh is (3H, H). Per step: one GEMM and four elementwise operations.
    """
    steps, batch, _ = projected.shape
    hidden = weight_hh.shape[1]
    gates = torch.empty((steps, batch, 3 * hidden), dtype=projected.dtype, device=projected.device)
    states = torch.empty((steps, batch, hidden), dtype=projected.dtype, device=projected.device)
    weight_t = weight_hh.t()
    h = h0
    for t in range(steps):
        g = gates[t]
        torch.addmm(projected[t, :, : 3 * hidden], h, weight_t, out=g)
        g[:, : 2 * hidden].sigmoid_()
        g[:, 2 * hidden :].tanh_()
        h_new = states[t]
        torch.mul(g[:, hidden : 2 * hidden], h, out=h_new)
        h_new.addcmul_(g[:, :hidden], g[:, 2 * hidden :])
        h = h_new
    return states, gates


def _paper_backward_loop(
    grad_states: torch.Tensor, factors: torch.Tensor, gates: torch.Tensor, weight_hh: torch.Tensor, grad_projected: torch.Tensor
) -> torch.Tensor:
    """Write d(loss)/d(pre-activations of i, f, h~) into grad_projected[..., :3H]; return d/dh0.

    grad_states (T, B, H): the gradient reaching each h_t from outside the recurrence (the
    output path, and the final state at T). factors (T, B, 3H): ∂h_t/∂(pre-activation) per gate,
    [σ'(a_i) ⊙ h~, σ'(a_f) ⊙ h_{t−1}, i ⊙ tanh'(a_h)], computed for the whole window beforehand,
    so that a step is one multiply, one fused multiply-add and one GEMM.
    """
    steps, batch, hidden = grad_states.shape
    dh = grad_states[steps - 1]
    for t in range(steps - 1, -1, -1):
        d = grad_projected[t, :, : 3 * hidden]
        torch.mul(factors[t].view(batch, 3, hidden), dh.unsqueeze(1), out=d.view(batch, 3, hidden))
        f = gates[t, :, hidden : 2 * hidden]
        carried = torch.addcmul(grad_states[t - 1], dh, f) if t > 0 else dh * f
        dh = torch.addmm(carried, d, weight_hh)
    return dh


class _PaperLayer(torch.autograd.Function):
    """One paper layer over a window, after the input projection: (projected, h0) → (y, h_T).

    projected (T, B, 4H) = W_ih x_t + b for the rows [i, f, h~, o]; h0 (B, H); weight_hh (3H, H);
    weight_ho (H, H). The gradient is written by hand, so autograd records no per-step graph.
    """

    @staticmethod
    def forward(ctx, projected: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor, weight_ho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        projected = projected.contiguous()
        hidden = weight_hh.shape[1]
        states, gates = _paper_forward_loop(projected, h0, weight_hh)
        # The output gate reads the new state but never feeds the recurrence: one GEMM per window.
        out_gate = torch.matmul(states, weight_ho.t()).add_(projected[..., 3 * hidden :]).sigmoid_()
        tanh_states = torch.tanh(states)
        ctx.save_for_backward(gates, states, tanh_states, out_gate, h0, weight_hh, weight_ho)
        return out_gate * tanh_states, states[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor | None, grad_last: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gates, states, tanh_states, out_gate, h0, weight_hh, weight_ho = ctx.saved_tensors
        steps, batch, hidden = states.shape
        grad_projected = torch.empty((steps, batch, 4 * hidden), dtype=states.dtype, device=states.device)
        grad_out_pre = grad_projected[..., 3 * hidden :]
        if grad_y is None:
            grad_out_pre.zero_()
            grad_states = torch.zeros_like(states)
        else:
            # y = o ⊙ tanh(h): d(pre o) = dy ⊙ tanh(h) ⊙ o(1 − o); dh = dy ⊙ o ⊙ (1 − tanh²h) + d(pre o) · W_ho
            torch.mul(grad_y, tanh_states, out=grad_out_pre)
            grad_out_pre.mul_(out_gate - out_gate * out_gate)
            through_output = grad_y * out_gate
            grad_states = torch.addcmul(through_output, through_output * tanh_states, tanh_states, value=-1.0)
            grad_states += torch.matmul(grad_out_pre, weight_ho)
        if grad_last is not None:
            grad_states[-1] += grad_last
        previous = torch.cat([h0.unsqueeze(0), states[:-1]], dim=0)
        sig = gates[..., : 2 * hidden]
        factors = torch.empty_like(gates)
        torch.addcmul(sig, sig, sig, value=-1.0, out=factors[..., : 2 * hidden])  # σ' = σ − σ²
        factors[..., :hidden].mul_(gates[..., 2 * hidden :])
        factors[..., hidden : 2 * hidden].mul_(previous)
        candidate = gates[..., 2 * hidden :]
        torch.addcmul(gates[..., :hidden], gates[..., :hidden] * candidate, candidate, value=-1.0, out=factors[..., 2 * hidden :])  # i ⊙ (1 − h~²)
        grad_h0 = _paper_backward_loop(grad_states, factors, gates, weight_hh, grad_projected)
        flat = grad_projected.view(steps * batch, 4 * hidden)
        grad_weight_hh = flat[:, : 3 * hidden].t().mm(previous.view(steps * batch, hidden)) if ctx.needs_input_grad[2] else None
        grad_weight_ho = flat[:, 3 * hidden :].t().mm(states.view(steps * batch, hidden)) if ctx.needs_input_grad[3] else None
        return grad_projected, grad_h0 if ctx.needs_input_grad[1] else None, grad_weight_hh, grad_weight_ho


def paper_layer(projected: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor, weight_ho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One paper layer after its input projection: (T, B, 4H), (B, H) → outputs y (T, B, H), h_T (B, H).

    The recurrence runs in the weights' dtype with autocast off: under mixed precision the
    projections arrive in float16/bfloat16 and are widened, so the state accumulates in float32.
    torch.compile leaves it alone (a graph break, as at nn.LSTM) instead of unrolling the loop.
    """
    dtype = weight_hh.dtype
    with torch.autocast(projected.device.type, enabled=False):
        return _PaperLayer.apply(projected.to(dtype), h0.to(dtype), weight_hh, weight_ho.to(dtype))


#: The paper layer as the model calls it. `prepare_for_compile` swaps in a version torch.compile
#: leaves alone; doing that lazily keeps torch._dynamo (seconds to import) out of every start-up.
_PAPER_LAYER = [paper_layer]


def prepare_for_compile() -> None:
    """Make torch.compile treat the paper layer as opaque (a graph break, as at nn.LSTM)."""
    _PAPER_LAYER[0] = torch.compiler.disable(paper_layer)


class PaperLSTM(nn.Module):
    """Multi-layer paper cell; layer k reads layer k−1's outputs y, with dropout between layers.

    Parameters per layer k (bundle names `rnn.NAME`):
        weight_ih_l{k}  (4H, in)  rows [i, f, h~, o] applied to x_t
        weight_hh_l{k}  (3H, H)   rows [i, f, h~] applied to h_{t-1}
        weight_ho_l{k}  (H, H)    output gate applied to the new h_t
        bias_l{k}       (4H)      [b_i, b_f, b_h, b_o]
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        for layer in range(num_layers):
            inputs = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * hidden_size, inputs)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(3 * hidden_size, hidden_size)))
            self.register_parameter(f"weight_ho_l{layer}", nn.Parameter(torch.empty(hidden_size, hidden_size)))
            self.register_parameter(f"bias_l{layer}", nn.Parameter(torch.empty(4 * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's RNN initialisation, U(−1/√H, 1/√H), except W_hh (the [i, f, h~] rows that read
        h_{t−1}) at half that bound.

        The gates of nn.LSTM read o ⊙ tanh(c), about c/2 at initialisation; these gates read the
        state itself. Halving W_hh gives the same loop gain at initialisation (≈ 0.73 + 0.5·0.58·0.5
        with the forget bias 1); at the full bound the gain is above 1, the state grows until the
        gates saturate, and the first hundred steps are lost to it (docs/cells.md).
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, parameter in self.named_parameters():
            nn.init.uniform_(parameter, -bound, bound)
            if name.startswith("weight_hh"):
                parameter.data.mul_(RECURRENT_INIT_SCALE)

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}"), getattr(self, f"weight_ho_l{layer}"), getattr(self, f"bias_l{layer}"))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, time, in), h0 (layers, batch, H) → outputs y (batch, time, H), h_T (layers, batch, H)."""
        batch = x.shape[0]
        hidden = self.hidden_size
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, batch, hidden)
        layer_input = x.transpose(0, 1).contiguous()  # time-major: each step's slice is contiguous
        finals = []
        for layer in range(self.num_layers):
            w_ih, w_hh, w_ho, bias = self.layer_weights(layer)
            projected = F.linear(layer_input, w_ih, bias)  # (T, B, 4H): one GEMM for the window
            layer_input, last = _PAPER_LAYER[0](projected, h0[layer], w_hh, w_ho)
            finals.append(last)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input.transpose(0, 1), torch.stack(finals)


# -- building and running any cell --------------------------------------------------------------


def build_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    dropout = dropout if num_layers > 1 else 0.0
    if cell == "lstm":
        return nn.LSTM(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True)
    if cell == "gru":
        return nn.GRU(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True)
    if cell == "paper":
        return PaperLSTM(input_size, hidden_size, num_layers, dropout)
    raise ValueError(f"unknown cell {cell!r}")


def init_rnn(rnn: nn.Module, cell: str, hidden_size: int) -> None:
    """Framework-default weights; biases zero except the 'keep the state' gate at 1.

    lstm: forget gate (rows H…2H−1 of bias_ih); gru: update gate z (rows H…2H−1 of bias_ih: z near 1
    keeps h); paper: forget gate (rows H…2H−1 of bias).
    """
    with torch.no_grad():
        for name, parameter in rnn.named_parameters():
            if name.startswith(("bias_ih", "bias_l")):
                parameter.zero_()
                parameter[hidden_size : 2 * hidden_size] = 1.0
            elif name.startswith("bias_hh"):
                parameter.zero_()


def rnn_shapes(cell: str, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
    """Parameter names (without the `rnn.` prefix) and shapes of a cell stack."""
    shapes: dict[str, tuple[int, ...]] = {}
    h = hidden_size
    for layer in range(num_layers):
        inputs = input_size if layer == 0 else h
        if cell in ("lstm", "gru"):
            gates = 4 if cell == "lstm" else 3
            shapes[f"weight_ih_l{layer}"] = (gates * h, inputs)
            shapes[f"weight_hh_l{layer}"] = (gates * h, h)
            shapes[f"bias_ih_l{layer}"] = (gates * h,)
            shapes[f"bias_hh_l{layer}"] = (gates * h,)
        elif cell == "paper":
            shapes[f"weight_ih_l{layer}"] = (4 * h, inputs)
            shapes[f"weight_hh_l{layer}"] = (3 * h, h)
            shapes[f"weight_ho_l{layer}"] = (h, h)
            shapes[f"bias_l{layer}"] = (4 * h,)
        else:
            raise ValueError(f"unknown cell {cell!r}")
    return shapes


def initial_state(cell: str, num_layers: int, batch_size: int, hidden_size: int, device: torch.device | str | None, dtype: torch.dtype) -> State:
    shape = (num_layers, batch_size, hidden_size)
    return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in STATE_NAMES[cell])


def run_rnn(rnn: nn.Module, cell: str, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """Window forward of any cell with the uniform tuple state."""
    if state is not None:
        state = tuple(state)
        if len(state) != len(STATE_NAMES[cell]):
            raise ValueError(f"a {cell} state has {len(STATE_NAMES[cell])} tensors, not {len(state)}")
    if cell == "lstm":
        output, (h, c) = rnn(x, state)
        return output, (h, c)
    output, h = rnn(x, state[0] if state is not None else None)
    return output, (h,)


def detach_state(state: State) -> State:
    return tuple(s.detach() for s in state)


# -- one-token steps (sampling) -----------------------------------------------------------------


def make_step(rnn: nn.Module, cell: str, num_layers: int) -> Step:
    """A function (x (B, in), state) → (top output (B, H), new state) with weights prepared once.

    Weights are read from `rnn` now: build a new step after changing them.
    """
    with torch.no_grad():
        if cell == "lstm":
            return _lstm_step(rnn, num_layers)
        if cell == "gru":
            return _gru_step(rnn, num_layers)
        if cell == "paper":
            return _paper_step(rnn, num_layers)
    raise ValueError(f"unknown cell {cell!r}")


def _lstm_step(rnn: nn.Module, num_layers: int) -> Step:
    # One fused GEMM per layer: gates = [x, h] · [W_ih; W_hh]ᵀ + (b_ih + b_hh).
    layers = []
    for k in range(num_layers):
        weight = torch.cat([getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")], dim=1).t().contiguous()
        layers.append((weight, (getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}")).contiguous()))

    def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_all, c_all = state
        new_h, new_c = [], []
        for k, (weight, bias) in enumerate(layers):
            i, f, g, o = torch.addmm(bias, torch.cat([x, h_all[k]], dim=1), weight).chunk(4, dim=1)
            c = torch.sigmoid(f) * c_all[k] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            new_h.append(x)
            new_c.append(c)
        return x, (torch.stack(new_h), torch.stack(new_c))

    return step


def _gru_step(rnn: nn.Module, num_layers: int) -> Step:
    # Two GEMMs per layer (r gates only the hidden-side part of the candidate, so they cannot fuse).
    layers = []
    for k in range(num_layers):
        layers.append(tuple(getattr(rnn, f"{name}_l{k}").t().contiguous() if name.startswith("weight") else getattr(rnn, f"{name}_l{k}").contiguous()
                            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))

    def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h_all,) = state
        new_h = []
        for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
            h = h_all[k]
            ir, iz, in_ = torch.addmm(b_ih, x, w_ih).chunk(3, dim=1)
            hr, hz, hn = torch.addmm(b_hh, h, w_hh).chunk(3, dim=1)
            r = torch.sigmoid(ir + hr)
            z = torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            x = n + z * (h - n)  # (1 − z) ⊙ n + z ⊙ h
            new_h.append(x)
        return x, (torch.stack(new_h),)

    return step


def _paper_step(rnn: nn.Module, num_layers: int) -> Step:
    # Three GEMVs per layer and no wasted weight reads: x·W_ihᵀ (4H), h·W_hhᵀ (3H), h_new·W_hoᵀ (H).
    layers = []
    for k in range(num_layers):
        w_ih, w_hh, w_ho, bias = rnn.layer_weights(k)
        layers.append((w_ih.t().contiguous(), w_hh.t().contiguous(), w_ho.t().contiguous(), bias.contiguous()))

    def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h_all,) = state
        new_h = []
        for k, (w_ih, w_hh, w_ho, bias) in enumerate(layers):
            hidden = w_hh.shape[0]
            projected = torch.addmm(bias, x, w_ih)
            a = torch.addmm(projected[:, : 3 * hidden], h_all[k], w_hh)
            i, f, c = torch.sigmoid(a[:, :hidden]), torch.sigmoid(a[:, hidden : 2 * hidden]), torch.tanh(a[:, 2 * hidden :])
            h = torch.addcmul(f * h_all[k], i, c)
            o = torch.sigmoid(torch.addmm(projected[:, 3 * hidden :], h, w_ho))
            x = o * torch.tanh(h)
            new_h.append(h)
        return x, (torch.stack(new_h),)

    return step
