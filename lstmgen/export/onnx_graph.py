"""One generation step as an ONNX graph, built node by node from the bundle's tensors.

Why not `torch.onnx.export`: torch 2.13 exports through dynamo by default, which needs the
`onnxscript` package and traces whatever the Python code does (the fused, reordered gates of the
sampler's step); the TorchScript exporter (`dynamo=False`) is deprecated. Building the graph with
`onnx.helper` needs only `onnx`, and the graph is the specification itself: the equations of
docs/bundle-format.md §4 for the bundle's cell, on the bundle's tensors in their stored layout.

The graph (docs/export.md):

    inputs   tokens int64 [batch]; h float32 [layers, batch, hidden] (and c for the lstm cell)
    outputs  logits float32 [batch, vocab]; h_out (and c_out): the state after reading the tokens

The start id reads as an all-zero input vector, as in lstmgen. Weights are float32 (float16 and
bfloat16 bundles are widened exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LstmgenError

#: ONNX operator set and IR version: opset 17 runs in onnxruntime ≥ 1.12 and every current runtime.
OPSET = 17
IR_VERSION = 8
#: One protobuf message may not exceed 2 GiB.
PROTOBUF_LIMIT = (1 << 31) - (1 << 20)


class _Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, name: str | None = None, **attributes: Any) -> Any:
        from onnx import helper

        self.count += 1
        base = name or f"v{self.count}_{kind.lower()}"
        names = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), names, name=f"n{self.count}_{kind}", **attributes))
        return names[0] if outputs == 1 else names


def build_onnx(bundle: Any) -> Any:
    """The ONNX ModelProto of one step of the bundle's model (lstmgen.bundle.Bundle)."""
    import onnx
    from onnx import TensorProto, helper

    from ..data import start_ids
    from ..version import __version__

    config = bundle.model_config
    tensors = {name: tensor.float().numpy() for name, tensor in bundle.tensors.items()}
    cell, layers, hidden = config.cell, config.num_layers, config.hidden_size
    graph = _Graph()
    f32 = np.float32

    embedding = graph.constant("embedding.weight", tensors["embedding.weight"])
    start_id = graph.constant("start_id", np.array(1, dtype=np.int64))
    zero = graph.constant("zero", np.array(0.0, dtype=f32))
    one = graph.constant("one_axis", np.array([1], dtype=np.int64))
    axis0 = graph.constant("axis0", np.array([0], dtype=np.int64))
    splits: dict[int, str] = {}
    for count in {"lstm": (4,), "gru": (3,)}.get(cell, (3, 4)):  # gate blocks; an unused initializer draws a warning
        splits[count] = graph.constant(f"split_{count}", np.array([hidden] * count, dtype=np.int64))

    # x_0 = embedding.weight[t], or zeros for the start id (docs/bundle-format.md §4).
    rows = graph.op("Gather", embedding, "tokens", axis=0)
    is_start = graph.op("Unsqueeze", graph.op("Equal", "tokens", start_id), one)
    x = graph.op("Where", is_start, zero, rows)

    state_names = ("h", "c") if cell == "lstm" else ("h",)
    new_states: dict[str, list[str]] = {name: [] for name in state_names}
    for k in range(layers):
        index = graph.constant(f"layer_{k}", np.array(k, dtype=np.int64))
        h = graph.op("Gather", "h", index, axis=0)
        if cell == "lstm":
            c = graph.op("Gather", "c", index, axis=0)
            weight = np.concatenate([tensors[f"rnn.weight_ih_l{k}"], tensors[f"rnn.weight_hh_l{k}"]], axis=1)
            bias = (tensors[f"rnn.bias_ih_l{k}"] + tensors[f"rnn.bias_hh_l{k}"]).astype(f32)
            w = graph.constant(f"rnn.weight_l{k}", weight)
            b = graph.constant(f"rnn.bias_l{k}", bias)
            gates = graph.op("Gemm", graph.op("Concat", x, h, axis=1), w, b, transB=1)
            i, f, g, o = graph.op("Split", gates, splits[4], axis=1, outputs=4)
            c_new = graph.op(
                "Add",
                graph.op("Mul", graph.op("Sigmoid", f), c),
                graph.op("Mul", graph.op("Sigmoid", i), graph.op("Tanh", g)),
            )
            x = graph.op("Mul", graph.op("Sigmoid", o), graph.op("Tanh", c_new))
            new_states["h"].append(x)
            new_states["c"].append(c_new)
        elif cell == "gru":
            a = graph.op(
                "Gemm",
                x,
                graph.constant(f"rnn.weight_ih_l{k}", tensors[f"rnn.weight_ih_l{k}"]),
                graph.constant(f"rnn.bias_ih_l{k}", tensors[f"rnn.bias_ih_l{k}"]),
                transB=1,
            )
            b = graph.op(
                "Gemm",
                h,
                graph.constant(f"rnn.weight_hh_l{k}", tensors[f"rnn.weight_hh_l{k}"]),
                graph.constant(f"rnn.bias_hh_l{k}", tensors[f"rnn.bias_hh_l{k}"]),
                transB=1,
            )
            a_r, a_z, a_n = graph.op("Split", a, splits[3], axis=1, outputs=3)
            b_r, b_z, b_n = graph.op("Split", b, splits[3], axis=1, outputs=3)
            r = graph.op("Sigmoid", graph.op("Add", a_r, b_r))
            z = graph.op("Sigmoid", graph.op("Add", a_z, b_z))
            n = graph.op("Tanh", graph.op("Add", a_n, graph.op("Mul", r, b_n)))
            # h' = (1 − z) ⊙ n + z ⊙ h, written as n + z ⊙ (h − n) like lstmgen's step.
            x = graph.op("Add", n, graph.op("Mul", z, graph.op("Sub", h, n)))
            new_states["h"].append(x)
        elif cell == "paper":
            a = graph.op(
                "Gemm",
                x,
                graph.constant(f"rnn.weight_ih_l{k}", tensors[f"rnn.weight_ih_l{k}"]),
                graph.constant(f"rnn.bias_l{k}", tensors[f"rnn.bias_l{k}"]),
                transB=1,
            )
            u = graph.op("Gemm", h, graph.constant(f"rnn.weight_hh_l{k}", tensors[f"rnn.weight_hh_l{k}"]), transB=1)
            a_i, a_f, a_h, a_o = graph.op("Split", a, splits[4], axis=1, outputs=4)
            u_i, u_f, u_h = graph.op("Split", u, splits[3], axis=1, outputs=3)
            i = graph.op("Sigmoid", graph.op("Add", a_i, u_i))
            f = graph.op("Sigmoid", graph.op("Add", a_f, u_f))
            candidate = graph.op("Tanh", graph.op("Add", a_h, u_h))
            h_new = graph.op("Add", graph.op("Mul", f, h), graph.op("Mul", i, candidate))
            w_ho = graph.constant(f"rnn.weight_ho_l{k}", tensors[f"rnn.weight_ho_l{k}"])
            o = graph.op("Sigmoid", graph.op("Add", a_o, graph.op("Gemm", h_new, w_ho, transB=1)))
            x = graph.op("Mul", o, graph.op("Tanh", h_new))  # y: the next layer's input, never fed back
            new_states["h"].append(h_new)
        else:  # pragma: no cover - config validation allows only the three cells
            raise LstmgenError(f"cannot export cell {cell!r}")

    for name in state_names:
        stacked = [graph.op("Unsqueeze", part, axis0) for part in new_states[name]]
        graph.op("Concat", *stacked, axis=0, name=f"{name}_out")
    if "projection.weight" in tensors:
        x = graph.op("Gemm", x, graph.constant("projection.weight", tensors["projection.weight"]), transB=1)
    head = embedding if config.tie_weights else graph.constant("head.weight", tensors["head.weight"])
    graph.op("Gemm", x, head, graph.constant("head.bias", tensors["head.bias"]), transB=1, name="logits")

    state_shape = [layers, "batch", hidden]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch"])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in state_names]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", config.vocab_size])]
    outputs += [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, state_shape) for name in state_names]
    onnx_graph = helper.make_graph(graph.nodes, f"lstmgen_{cell}_step", inputs, outputs, initializer=graph.initializers)
    model = helper.make_model(
        onnx_graph,
        producer_name="lstmgen",
        producer_version=__version__,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=(
            "One generation step of an lstmgen model (docs/export.md): feed the start ids with a zero state, then "
            "the text's token ids; logits predict the next token."
        ),
    )
    model.ir_version = IR_VERSION
    settings = (bundle.meta.get("tokenizer") or {}).get("settings") or {}
    documents = settings.get("documents", "file")
    metadata = {
        "cell": cell,
        "num_layers": str(layers),
        "hidden_size": str(hidden),
        "vocab_size": str(config.vocab_size),
        "state": json.dumps(list(state_names)),
        "start_ids": json.dumps(start_ids(bundle.tokenizer, documents)),
        "end_of_text_id": str(bundle.tokenizer.eos_id),
        "never_sample_ids": json.dumps([i for i in bundle.tokenizer.special_ids if i != bundle.tokenizer.eos_id]),
        "documents": documents,
        "lstmgen_version": __version__,
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def write_onnx(source: Path, output: Path, tokenizer_output: Path) -> dict[str, Any]:
    """Build the graph of the bundle at `source`, write it and the tokenizer beside it (atomically, guarded)."""
    from ..bundle import load_bundle
    from ..fsutil import ONNX, SENTENCEPIECE, atomic_writer

    bundle = load_bundle(source)
    model = build_onnx(bundle)
    data = model.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise LstmgenError(
            f"the model is too large for one ONNX file ({len(data) / 1e9:.1f} GB of float32 weights; ONNX files hold "
            "at most 2 GB); export a smaller model"
        )
    with atomic_writer(output, ONNX, "ONNX graph") as handle:
        handle.write(data)
    with atomic_writer(tokenizer_output, SENTENCEPIECE, "tokenizer") as handle:
        handle.write(bundle.tokenizer.model_proto)
    return {
        "format": "onnx",
        "files": {str(output): len(data), str(tokenizer_output): len(bundle.tokenizer.model_proto)},
        "cell": bundle.model_config.cell,
    }
