"""docs/bundle-format.md is enough to run a bundle without lstmgen, PyTorch or SentencePiece.

The reader below uses only zipfile, json, struct and numpy on the bundle file: a minimal
safetensors parser, a minimal protobuf reader for the SentencePiece model's piece table, the
LSTM forward pass written from the equations in the document, and the document's decode rule.
Its results must match the PyTorch model and `Tokenizer.decode`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import SAMPLE_TEXT, parse_safetensors, read_bundle_members
from lstmgen.bundle import load_bundle, save_bundle
from lstmgen.config import ModelConfig, TokenizerConfig
from lstmgen.model import LSTMLanguageModel
from lstmgen.sampling import FastStepper
from lstmgen.tokenizer import Tokenizer, train_tokenizer

CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "tinyshakespeare.txt"
EOS_ID = 2
START_ID = 1
META_CHAR = "\u2581"


# -- a reader that knows only the document ------------------------------------------------------






def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; values of wire type 2 are bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:  # pragma: no cover
            raise AssertionError(f"unsupported wire type {wire}")
        yield number, wire, value


NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_pieces(model_proto: bytes) -> list[tuple[str, int]]:
    """(piece, type) for every id: ModelProto field 1 holds SentencePiece{piece=1, score=2, type=3}."""
    pieces = []
    for number, wire, value in _fields(model_proto):
        if number == 1 and wire == 2:
            piece, kind = "", NORMAL
            for sub_number, _, sub_value in _fields(value):
                if sub_number == 1:
                    piece = sub_value.decode("utf-8")
                elif sub_number == 3:
                    kind = sub_value
            pieces.append((piece, kind))
    return pieces


def byte_table(pieces: list[tuple[str, int]]) -> list[bytes]:
    """The document's decode rule: the bytes each id contributes to the text."""
    table = []
    for piece, kind in pieces:
        if kind == BYTE:
            assert len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
            table.append(bytes([int(piece[3:5], 16)]))
        elif kind in (CONTROL, UNKNOWN):
            table.append(b"")
        else:
            table.append(piece.replace(META_CHAR, " ").encode("utf-8"))
    return table


def decode(table: list[bytes], ids) -> str:
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class NumpyLSTM:
    """The forward pass of docs/bundle-format.md, one token at a time."""

    def __init__(self, meta: dict, tensors: dict[str, np.ndarray]) -> None:
        model = meta["model"]
        self.layers = model["num_layers"]
        self.hidden = model["hidden_size"]
        self.t = tensors
        self.embedding = tensors["embedding.weight"]
        self.head_weight = self.embedding if model["tie_weights"] else tensors["head.weight"]
        self.head_bias = tensors["head.bias"]
        self.projection = tensors.get("projection.weight")

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((self.layers, self.hidden)), np.zeros((self.layers, self.hidden))

    def step(self, token: int, state: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        h, c = state
        new_h, new_c = np.empty_like(h), np.empty_like(c)
        x = np.zeros(self.embedding.shape[1]) if token == START_ID else self.embedding[token]
        H = self.hidden
        for k in range(self.layers):
            t = self.t
            gates = t[f"rnn.weight_ih_l{k}"] @ x + t[f"rnn.bias_ih_l{k}"] + t[f"rnn.weight_hh_l{k}"] @ h[k] + t[f"rnn.bias_hh_l{k}"]
            i = sigmoid(gates[0:H])
            f = sigmoid(gates[H : 2 * H])
            g = np.tanh(gates[2 * H : 3 * H])
            o = sigmoid(gates[3 * H : 4 * H])
            new_c[k] = f * c[k] + i * g
            new_h[k] = o * np.tanh(new_c[k])
            x = new_h[k]
        if self.projection is not None:
            x = self.projection @ x
        return self.head_weight @ x + self.head_bias, (new_h, new_c)

    def run(self, tokens) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        state = self.initial_state()
        rows = []
        for token in tokens:
            logits, state = self.step(int(token), state)
            rows.append(logits)
        return np.stack(rows), state


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = CORPUS.read_text(encoding="utf-8")[:8000]
    return train_tokenizer(text.splitlines(keepends=True), TokenizerConfig())


def make_model(tokenizer: Tokenizer, embedding: int, hidden: int, layers: int, tie: bool) -> LSTMLanguageModel:
    torch.manual_seed(1234)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=embedding, hidden_size=hidden, num_layers=layers,
                         dropout=0.3, tie_weights=tie)
    model = LSTMLanguageModel(config)
    with torch.no_grad():
        # Large, non-zero values everywhere (biases included) so that a wrong gate order,
        # a missing bias or a transposed matrix changes the logits visibly.
        for parameter in model.parameters():
            parameter.uniform_(-0.6, 0.6)
    return model.eval()


CASES = [
    # embedding, hidden, layers, tie: tied with a projection; untied without; and the two others
    pytest.param(16, 24, 2, True, id="tied-projection"),
    pytest.param(24, 24, 2, False, id="untied-square"),
    pytest.param(16, 24, 1, False, id="untied-1layer"),
    pytest.param(20, 20, 3, True, id="tied-square-3layers"),
]


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("embedding, hidden, layers, tie", CASES)
def test_numpy_forward_matches_pytorch(tmp_path: Path, tokenizer: Tokenizer, embedding: int, hidden: int, layers: int, tie: bool) -> None:
    model = make_model(tokenizer, embedding, hidden, layers, tie)
    path = tmp_path / "tiny.lstmgen"
    save_bundle(path, model, tokenizer, tokenizer_settings={"vocab_size": None}, training={"steps": 0})

    members = read_bundle_members(path)
    meta = json.loads(members["lstmgen.json"])
    assert meta["format"] == "lstmgen-bundle" and meta["format_version"] == 1
    assert set(meta) == {"format", "format_version", "created", "model", "tokenizer", "weights", "training", "versions"}
    assert set(meta["model"]) == {"vocab_size", "embedding_size", "hidden_size", "num_layers", "dropout", "tie_weights", "cell"}
    assert meta["model"]["cell"] == "lstm" and meta["weights"] == {"dtype": "float32"}
    assert meta["tokenizer"]["type"] == "sentencepiece" and meta["tokenizer"]["vocab_size"] == meta["model"]["vocab_size"]

    tensors = parse_safetensors(members["model.safetensors"])
    V, E, H = meta["model"]["vocab_size"], meta["model"]["embedding_size"], meta["model"]["hidden_size"]
    head_in = E if meta["model"]["tie_weights"] else H
    expected = {"embedding.weight": (V, E), "head.bias": (V,)}
    for k in range(layers):
        expected |= {f"rnn.weight_ih_l{k}": (4 * H, E if k == 0 else H), f"rnn.weight_hh_l{k}": (4 * H, H),
                     f"rnn.bias_ih_l{k}": (4 * H,), f"rnn.bias_hh_l{k}": (4 * H,)}
    if head_in != H:
        expected["projection.weight"] = (head_in, H)
    if not meta["model"]["tie_weights"]:
        expected["head.weight"] = (V, head_in)
    assert {name: array.shape for name, array in tensors.items()} == expected

    ids = [START_ID] + tokenizer.encode(SAMPLE_TEXT)
    net = NumpyLSTM(meta, tensors)
    logits, (h, c) = net.run(ids)

    with torch.no_grad():
        torch_logits, (torch_h, torch_c) = model(torch.tensor([ids]))
    np.testing.assert_allclose(logits, torch_logits[0].double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h, torch_h[:, 0].double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, torch_c[:, 0].double().numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(logits).max() > 0.1  # the comparison is not between near-zero numbers

    # The same bundle, loaded by lstmgen, gives the same numbers, through nn.LSTM and through
    # the one-token FastStepper that generation uses.
    loaded = load_bundle(path).build_model()
    with torch.no_grad():
        loaded_logits, _ = loaded(torch.tensor([ids]))
    np.testing.assert_allclose(logits, loaded_logits[0].double().numpy(), rtol=1e-4, atol=1e-5)
    stepper = FastStepper(loaded)
    state = loaded.initial_state(1)
    for t, token in enumerate(ids):
        step_logits, state = stepper.step(torch.tensor([token]), state)
        np.testing.assert_allclose(logits[t], step_logits[0].double().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_bundles_widen_to_float32(tmp_path: Path, tokenizer: Tokenizer, dtype: torch.dtype) -> None:
    model = make_model(tokenizer, 16, 24, 2, True)
    path = tmp_path / "half.lstmgen"
    save_bundle(path, model, tokenizer, dtype=dtype)
    members = read_bundle_members(path)
    meta = json.loads(members["lstmgen.json"])
    assert meta["weights"]["dtype"] == str(dtype).removeprefix("torch.")
    header_length = struct.unpack("<Q", members["model.safetensors"][:8])[0]
    header = json.loads(members["model.safetensors"][8 : 8 + header_length])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16" if dtype == torch.float16 else "BF16"}

    ids = [START_ID] + tokenizer.encode(SAMPLE_TEXT)
    logits, _ = NumpyLSTM(meta, parse_safetensors(members["model.safetensors"])).run(ids)
    with torch.no_grad():
        loaded_logits, _ = load_bundle(path).build_model()(torch.tensor([ids]))
    np.testing.assert_allclose(logits, loaded_logits[0].double().numpy(), rtol=1e-4, atol=1e-5)


def test_numpy_decode_matches_tokenizer(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = make_model(tokenizer, 16, 24, 1, True)
    path = tmp_path / "tiny.lstmgen"
    save_bundle(path, model, tokenizer)
    pieces = sentencepiece_pieces(read_bundle_members(path)["tokenizer.model"])
    assert len(pieces) == tokenizer.vocab_size
    assert [p for p, _ in pieces] == [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
    assert pieces[0][1] == UNKNOWN and pieces[1][1] == CONTROL and pieces[2][1] == CONTROL
    assert pieces[3] == ("\n", USER_DEFINED)
    byte_ids = {int(p[3:5], 16): i for i, (p, kind) in enumerate(pieces) if kind == BYTE}
    assert sorted(byte_ids) == list(range(256))
    table = byte_table(pieces)

    # A literal U+2581 is encoded as its three UTF-8 byte pieces.
    assert tokenizer.encode(META_CHAR) == [byte_ids[b] for b in META_CHAR.encode("utf-8")]

    for text in [SAMPLE_TEXT, "▁", "a▁b", " \n\n  ▁x😀y\t", "😀", "naïve café — Ωμέγα\n", ""]:
        ids = tokenizer.encode(text)
        assert decode(table, ids) == tokenizer.decode(ids) == text

    # Control ids contribute nothing; truncated UTF-8 becomes U+FFFD exactly as in lstmgen.
    emoji_bytes = [byte_ids[b] for b in "😀".encode("utf-8")]
    awkward = [EOS_ID, *tokenizer.encode("ab"), 1, 0, *emoji_bytes[:2], *tokenizer.encode("\n"), emoji_bytes[3], EOS_ID]
    assert decode(table, awkward) == tokenizer.decode(awkward)
    assert "\ufffd" in decode(table, awkward)
    assert decode(table, range(tokenizer.vocab_size)) == tokenizer.decode(range(tokenizer.vocab_size))
