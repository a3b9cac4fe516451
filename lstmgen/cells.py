"""Recurrent cells: PyTorch's LSTM and GRU, and the design document's own LSTM ("paper").

Each cell's one-step equations are written once, here (`lstm_update`, `gru_update`,
`paper_update` and `paper_output`), and every part of lstmgen that steps a cell uses them: the
paper cell's training loop, the sampler's fused one-token steps (`Cell.make_step`), int8
inference (lstmgen.quantization) and inspection's per-position trace (`Cell.trace`). `CELLS`
maps each name of `config.CELLS` to its implementation.

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

from .config import CELLS as CELL_NAMES

#: The paper cell's W_hh starts at this fraction of PyTorch's default bound (PaperLSTM.reset_parameters).
RECURRENT_INIT_SCALE = 0.5

State = tuple[torch.Tensor, ...]
Step = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]
Sigmoid = Callable[[torch.Tensor], torch.Tensor]


# -- the equations of one time step -----------------------------------------------------------


def sigmoid_(tensor: torch.Tensor) -> torch.Tensor:
    """σ in place: the gates' activation in float inference."""
    return tensor.sigmoid_()


def lstm_update(gates: torch.Tensor, c: torch.Tensor, sigmoid: Sigmoid = sigmoid_) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step from its gate pre-activations, in the order (i, f, o, g) (`reorder_gates`):

        c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g),   h_t = σ(o) ⊙ tanh(c_t)

    `gates` (B, 4H) is overwritten. `sigmoid` activates the three sigmoid gates in place; int8
    inference passes one built from tanh, whose rounding does not depend on the batch. The sum is
    a multiply and an add, never a fused multiply-add, for the same reason.
    """
    hidden = c.shape[-1]
    sig = sigmoid(gates[:, : 3 * hidden])
    candidate = gates[:, 3 * hidden :].tanh()
    c = sig[:, hidden : 2 * hidden] * c
    c.add_(sig[:, :hidden] * candidate)
    return torch.tanh(c).mul_(sig[:, 2 * hidden :]), c


def reorder_gates(tensor: torch.Tensor, sigmoid_scale: float = 1.0) -> torch.Tensor:
    """PyTorch's LSTM gate order (i, f, g, o) → (i, f, o, g): the three sigmoid gates side by side,
    optionally multiplied by `sigmoid_scale`."""
    i, f, g, o = tensor.chunk(4, dim=0)
    return torch.cat([i * sigmoid_scale, f * sigmoid_scale, o * sigmoid_scale, g], dim=0)


def gru_update(from_input: torch.Tensor, from_state: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step (PyTorch's equations) from W_ih x + b_ih and W_hh h + b_hh, each (B, 3H) as [r, z, n]:

    r = σ(.r + .r),  z = σ(.z + .z),  n = tanh(x.n + r ⊙ h.n),  h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
    """
    ir, iz, in_ = from_input.chunk(3, dim=1)
    hr, hz, hn = from_state.chunk(3, dim=1)
    r = torch.sigmoid(ir + hr)
    z = torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return n + z * (h - n)


def paper_update(gates: torch.Tensor, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The paper cell's recurrence from the pre-activations [i, f, h~] (B, 3H), which become the gates in place:

        h_t = σ(f) ⊙ h_{t−1} + σ(i) ⊙ tanh(h~)

    `out` (B, H), when given, receives h_t (the training loop keeps every step's state).
    """
    hidden = h.shape[-1]
    gates[:, : 2 * hidden].sigmoid_()
    gates[:, 2 * hidden :].tanh_()
    h_new = (
        torch.mul(gates[:, hidden : 2 * hidden], h, out=out) if out is not None else gates[:, hidden : 2 * hidden] * h
    )
    return h_new.addcmul_(gates[:, :hidden], gates[:, 2 * hidden :])


def paper_output(pre_output: torch.Tensor, h: torch.Tensor, weight_ho_t: torch.Tensor) -> torch.Tensor:
    """The paper cell's output y_t = σ(W_xo x_t + b_o + W_ho h_t) ⊙ tanh(h_t); it reads the new state
    and never feeds the recurrence, so it may run for a whole window at once."""
    return torch.addmm(pre_output, h, weight_ho_t).sigmoid_().mul_(torch.tanh(h))


# -- the paper cell -----------------------------------------------------------------------------


def _paper_forward_loop(
    projected: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
        torch.addmm(projected[t, :, : 3 * hidden], h, weight_t, out=gates[t])
        h = paper_update(gates[t], h, out=states[t])
    return states, gates


def _paper_backward_loop(
    grad_states: torch.Tensor,
    factors: torch.Tensor,
    gates: torch.Tensor,
    weight_hh: torch.Tensor,
    grad_projected: torch.Tensor,
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
    def forward(
        ctx, projected: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor, weight_ho: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
    def backward(ctx, grad_y: torch.Tensor | None, grad_last: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
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
        torch.addcmul(
            gates[..., :hidden], gates[..., :hidden] * candidate, candidate, value=-1.0, out=factors[..., 2 * hidden :]
        )  # i ⊙ (1 − h~²)
        grad_h0 = _paper_backward_loop(grad_states, factors, gates, weight_hh, grad_projected)
        flat = grad_projected.view(steps * batch, 4 * hidden)
        grad_weight_hh = (
            flat[:, : 3 * hidden].t().mm(previous.view(steps * batch, hidden)) if ctx.needs_input_grad[2] else None
        )
        grad_weight_ho = (
            flat[:, 3 * hidden :].t().mm(states.view(steps * batch, hidden)) if ctx.needs_input_grad[3] else None
        )
        return grad_projected, grad_h0 if ctx.needs_input_grad[1] else None, grad_weight_hh, grad_weight_ho


def paper_layer(
    projected: torch.Tensor, h0: torch.Tensor, weight_hh: torch.Tensor, weight_ho: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
        return (
            getattr(self, f"weight_ih_l{layer}"),
            getattr(self, f"weight_hh_l{layer}"),
            getattr(self, f"weight_ho_l{layer}"),
            getattr(self, f"bias_l{layer}"),
        )

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


# -- the cells --------------------------------------------------------------------------------


class Cell:
    """What lstmgen needs of a recurrent cell: its module, tensors, state, window forward, one-token
    step (sampling) and per-position trace (inspection), the last two from the equations above."""

    #: The names of the state tensors, in tuple order (checkpoints store `carry.NAME`).
    state_names: tuple[str, ...] = ("h",)
    #: What inspection shows (lstmgen.inspection): "c" a cell state, "h" an output.
    inspect_kinds: tuple[str, ...] = ("h",)

    def build(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
        raise NotImplementedError

    def shapes(self, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
        """Parameter names (without the `rnn.` prefix) and shapes of a stack of this cell."""
        raise NotImplementedError

    def run(self, rnn: nn.Module, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """Window forward: x (batch, time, in) → top outputs (batch, time, H) and the new state."""
        output, h = rnn(x, state[0] if state is not None else None)
        return output, (h,)

    def make_step(self, rnn: nn.Module, num_layers: int) -> Step:
        """(x (B, in), state) → (top output (B, H), new state), with the weights prepared once."""
        raise NotImplementedError

    def trace(self, rnn: nn.Module, layer: int, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One layer over a whole sequence from the zero state, keeping every step: inputs (T, in) →
        {"out": (T, H) fed to the next layer, and each of `inspect_kinds`: (T, H)}. Float32, CPU."""
        raise NotImplementedError


def _paper_weights(rnn: nn.Module, layer: int) -> tuple[torch.Tensor, ...]:
    assert isinstance(rnn, PaperLSTM)
    return rnn.layer_weights(layer)


def _weight(rnn: nn.Module, name: str, layer: int) -> torch.Tensor:
    return getattr(rnn, f"{name}_l{layer}").detach().float()


def _torch_shapes(gates: int, input_size: int, hidden: int, num_layers: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        inputs = input_size if layer == 0 else hidden
        shapes[f"weight_ih_l{layer}"] = (gates * hidden, inputs)
        shapes[f"weight_hh_l{layer}"] = (gates * hidden, hidden)
        shapes[f"bias_ih_l{layer}"] = (gates * hidden,)
        shapes[f"bias_hh_l{layer}"] = (gates * hidden,)
    return shapes


class LSTMCell(Cell):
    """torch.nn.LSTM (cuDNN on GPUs); steps use `lstm_update` on gates reordered to (i, f, o, g)."""

    state_names = ("h", "c")
    inspect_kinds = ("c", "h")

    def build(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
        return nn.LSTM(
            input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True
        )

    def shapes(self, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
        return _torch_shapes(4, input_size, hidden_size, num_layers)

    def run(self, rnn: nn.Module, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        output, (h, c) = rnn(x, state)
        return output, (h, c)

    def make_step(self, rnn: nn.Module, num_layers: int) -> Step:
        # One fused GEMM per layer: gates = [x, h] · [W_ih; W_hh]ᵀ + (b_ih + b_hh). nn.LSTM called on a
        # single time step pays oneDNN's setup cost on every call; this is several times faster at batch 1.
        layers = []
        for k in range(num_layers):
            weight = torch.cat([_weight(rnn, "weight_ih", k), _weight(rnn, "weight_hh", k)], dim=1)
            bias = _weight(rnn, "bias_ih", k) + _weight(rnn, "bias_hh", k)
            layers.append((reorder_gates(weight).t().contiguous(), reorder_gates(bias).contiguous()))

        def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            h_all, c_all = state
            new_h, new_c = [], []
            for k, (weight, bias) in enumerate(layers):
                x, c = lstm_update(torch.addmm(bias, torch.cat([x, h_all[k]], dim=1), weight), c_all[k])
                new_h.append(x)
                new_c.append(c)
            return x, (torch.stack(new_h), torch.stack(new_c))

        return step

    def trace(self, rnn: nn.Module, layer: int, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        bias = reorder_gates(_weight(rnn, "bias_ih", layer) + _weight(rnn, "bias_hh", layer))
        projected = torch.addmm(bias, inputs, reorder_gates(_weight(rnn, "weight_ih", layer)).t())
        w_hh = reorder_gates(_weight(rnn, "weight_hh", layer)).t().contiguous()
        steps, hidden = inputs.shape[0], w_hh.shape[0]
        h = c = inputs.new_zeros(1, hidden)
        hs, cs = inputs.new_empty(steps, hidden), inputs.new_empty(steps, hidden)
        for t in range(steps):
            h, c = lstm_update(torch.addmm(projected[t : t + 1], h, w_hh), c)
            hs[t], cs[t] = h[0], c[0]
        return {"out": hs, "h": hs, "c": cs}


class GRUCell(Cell):
    """torch.nn.GRU; steps use `gru_update` (two GEMMs per layer: r gates only the state's part of n)."""

    def build(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
        return nn.GRU(
            input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, batch_first=True
        )

    def shapes(self, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
        return _torch_shapes(3, input_size, hidden_size, num_layers)

    def make_step(self, rnn: nn.Module, num_layers: int) -> Step:
        layers = [
            tuple(
                _weight(rnn, name, k).t().contiguous()
                if name.startswith("weight")
                else _weight(rnn, name, k).contiguous()
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            for k in range(num_layers)
        ]

        def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            (h_all,) = state
            new_h = []
            for k, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
                x = gru_update(torch.addmm(b_ih, x, w_ih), torch.addmm(b_hh, h_all[k], w_hh), h_all[k])
                new_h.append(x)
            return x, (torch.stack(new_h),)

        return step

    def trace(self, rnn: nn.Module, layer: int, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        projected = torch.addmm(_weight(rnn, "bias_ih", layer), inputs, _weight(rnn, "weight_ih", layer).t())
        w_hh, b_hh = _weight(rnn, "weight_hh", layer).t().contiguous(), _weight(rnn, "bias_hh", layer)
        steps, hidden = inputs.shape[0], w_hh.shape[0]
        h = inputs.new_zeros(1, hidden)
        hs = inputs.new_empty(steps, hidden)
        for t in range(steps):
            h = gru_update(projected[t : t + 1], torch.addmm(b_hh, h, w_hh), h)
            hs[t] = h[0]
        return {"out": hs, "h": hs}


class PaperCell(Cell):
    """The design document's LSTM (PaperLSTM); its only state is the cell state the document calls h,
    which inspection shows as "c" (its output y as "h")."""

    inspect_kinds = ("c", "h")

    def build(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
        return PaperLSTM(input_size, hidden_size, num_layers, dropout)

    def shapes(self, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        h = hidden_size
        for layer in range(num_layers):
            shapes[f"weight_ih_l{layer}"] = (4 * h, input_size if layer == 0 else h)
            shapes[f"weight_hh_l{layer}"] = (3 * h, h)
            shapes[f"weight_ho_l{layer}"] = (h, h)
            shapes[f"bias_l{layer}"] = (4 * h,)
        return shapes

    def make_step(self, rnn: nn.Module, num_layers: int) -> Step:
        # Three GEMVs per layer and no wasted weight reads: x·W_ihᵀ (4H), h·W_hhᵀ (3H), h_new·W_hoᵀ (H).
        layers = [
            tuple(
                w.detach().float().t().contiguous() if w.dim() == 2 else w.detach().float().contiguous()
                for w in _paper_weights(rnn, k)
            )
            for k in range(num_layers)
        ]

        def step(x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            (h_all,) = state
            new_h = []
            for k, (w_ih, w_hh, w_ho, bias) in enumerate(layers):
                hidden = w_hh.shape[0]
                projected = torch.addmm(bias, x, w_ih)
                h = paper_update(torch.addmm(projected[:, : 3 * hidden], h_all[k], w_hh), h_all[k])
                x = paper_output(projected[:, 3 * hidden :], h, w_ho)
                new_h.append(h)
            return x, (torch.stack(new_h),)

        return step

    def trace(self, rnn: nn.Module, layer: int, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        w_ih, w_hh, w_ho, bias = (w.detach().float() for w in _paper_weights(rnn, layer))
        projected = torch.addmm(bias, inputs, w_ih.t())
        w_hh_t = w_hh.t().contiguous()
        steps, hidden = inputs.shape[0], w_hh.shape[1]
        h = inputs.new_zeros(1, hidden)
        cs = inputs.new_empty(steps, hidden)
        for t in range(steps):
            h = paper_update(torch.addmm(projected[t : t + 1, : 3 * hidden], h, w_hh_t), h)
            cs[t] = h[0]
        ys = paper_output(projected[:, 3 * hidden :], cs, w_ho.t())  # one GEMM for every step: y never feeds back
        return {"out": ys, "h": ys, "c": cs}


#: Every cell of `config.CELLS`, by name.
CELLS: dict[str, Cell] = dict(zip(CELL_NAMES, (LSTMCell(), GRUCell(), PaperCell())))
#: The names of each cell's state tensors, in tuple order (checkpoints store `carry.NAME`).
STATE_NAMES: dict[str, tuple[str, ...]] = {name: cell.state_names for name, cell in CELLS.items()}


def cell(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}") from None


# -- building and running any cell --------------------------------------------------------------


def build_rnn(name: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    return cell(name).build(input_size, hidden_size, num_layers, dropout if num_layers > 1 else 0.0)


def init_rnn(rnn: nn.Module, name: str, hidden_size: int) -> None:
    """Framework-default weights; biases zero except the 'keep the state' gate at 1.

    lstm: forget gate (rows H…2H−1 of bias_ih); gru: update gate z (rows H…2H−1 of bias_ih: z near 1
    keeps h); paper: forget gate (rows H…2H−1 of bias).
    """
    with torch.no_grad():
        for parameter_name, parameter in rnn.named_parameters():
            if parameter_name.startswith(("bias_ih", "bias_l")):
                parameter.zero_()
                parameter[hidden_size : 2 * hidden_size] = 1.0
            elif parameter_name.startswith("bias_hh"):
                parameter.zero_()


def rnn_shapes(name: str, input_size: int, hidden_size: int, num_layers: int) -> dict[str, tuple[int, ...]]:
    """Parameter names (without the `rnn.` prefix) and shapes of a cell stack."""
    return cell(name).shapes(input_size, hidden_size, num_layers)


def initial_state(
    name: str, num_layers: int, batch_size: int, hidden_size: int, device: torch.device | str | None, dtype: torch.dtype
) -> State:
    shape = (num_layers, batch_size, hidden_size)
    return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in cell(name).state_names)


def run_rnn(rnn: nn.Module, name: str, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """Window forward of any cell with the uniform tuple state."""
    names = cell(name).state_names
    if state is not None:
        state = tuple(state)
        if len(state) != len(names):
            raise ValueError(f"a {name} state has {len(names)} tensors, not {len(state)}")
    return cell(name).run(rnn, x, state)


def detach_state(state: State) -> State:
    return tuple(s.detach() for s in state)


def make_step(rnn: nn.Module, name: str, num_layers: int) -> Step:
    """The cell's one-token step with weights prepared once: build a new one after changing them."""
    with torch.no_grad():
        return cell(name).make_step(rnn, num_layers)
