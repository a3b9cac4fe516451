"""Recurrent cells: lstm (nn.LSTM), gru (nn.GRU) and paper (the design document's LSTM).

The paper cell is checked against a step-by-step reference written directly from its equations
(values in float64, gradients with torch.autograd.gradcheck); every cell is checked for state
carrying across windows, one-token stepping, bundles, sampling, evaluation and trainer resume.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import lstmgen
from lstmgen import cells
from lstmgen.bundle import expected_shapes, load_bundle, save_bundle
from lstmgen.config import CELLS, ModelConfig, TokenizerConfig, TrainConfig
from lstmgen.data import tokenize_corpus
from lstmgen.errors import LstmgenError
from lstmgen.model import START_ID, LSTMLanguageModel, carry_names, detach_state
from lstmgen.sampling import FastStepper
from lstmgen.trainer import Trainer

from .conftest import cli

ALL_CELLS = ["lstm", "gru", "paper"]


# -- the reference: the design document's equations, one step at a time -------------------------


def reference_paper(layer_weights, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, in), h0 (L, B, H); layer_weights[k] = (W_ih (4H, in), W_hh (3H, H), W_ho (H, H), b (4H))."""
    hidden = h0.shape[-1]
    finals = []
    inputs = x
    for k, (w_ih, w_hh, w_ho, b) in enumerate(layer_weights):
        W_xi, W_xf, W_xh, W_xo = w_ih.split(hidden)
        W_hi, W_hf, W_hh = w_hh.split(hidden)
        b_i, b_f, b_h, b_o = b.split(hidden)
        h = h0[k]
        outputs = []
        for t in range(inputs.shape[1]):
            x_t = inputs[:, t]
            i_t = torch.sigmoid(x_t @ W_xi.T + h @ W_hi.T + b_i)
            f_t = torch.sigmoid(x_t @ W_xf.T + h @ W_hf.T + b_f)
            candidate = torch.tanh(x_t @ W_xh.T + h @ W_hh.T + b_h)
            h = f_t * h + i_t * candidate
            o_t = torch.sigmoid(x_t @ W_xo.T + h @ w_ho.T + b_o)  # reads the NEW state
            outputs.append(o_t * torch.tanh(h))
        inputs = torch.stack(outputs, dim=1)
        finals.append(h)
    return inputs, torch.stack(finals)


def _random_paper(input_size: int, hidden: int, layers: int, seed: int = 0) -> cells.PaperLSTM:
    torch.manual_seed(seed)
    rnn = cells.PaperLSTM(input_size, hidden, layers).double()
    with torch.no_grad():
        for parameter in rnn.parameters():
            parameter.uniform_(-0.7, 0.7)  # large enough that a wrong gate or order shows
    return rnn


@pytest.mark.parametrize("layers", [1, 3])
def test_paper_matches_reference_values(layers: int) -> None:
    rnn = _random_paper(5, 7, layers)
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    h0 = torch.randn(layers, 3, 7, dtype=torch.float64)
    y, h = rnn(x, h0)
    y_ref, h_ref = reference_paper([rnn.layer_weights(k) for k in range(layers)], x, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    assert y.abs().max() > 0.1
    # A zero initial state is the default.
    y0, _ = rnn(x)
    torch.testing.assert_close(y0, reference_paper([rnn.layer_weights(k) for k in range(layers)], x, torch.zeros_like(h0))[0])


def test_paper_layer_gradcheck() -> None:
    torch.manual_seed(1)
    steps, batch, hidden = 5, 3, 4
    inputs = (
        torch.randn(steps, batch, 4 * hidden, dtype=torch.float64, requires_grad=True),
        torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True),
        (0.5 * torch.randn(3 * hidden, hidden, dtype=torch.float64)).requires_grad_(),
        (0.5 * torch.randn(hidden, hidden, dtype=torch.float64)).requires_grad_(),
    )
    assert torch.autograd.gradcheck(cells.paper_layer, inputs)
    assert torch.autograd.gradcheck(lambda *a: cells.paper_layer(*a)[0], inputs)  # outputs only
    assert torch.autograd.gradcheck(lambda *a: cells.paper_layer(*a)[1], inputs)  # final state only


def test_paper_module_gradcheck_and_weight_gradients() -> None:
    rnn = _random_paper(3, 4, 2, seed=2)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rnn(a, b), (x, h0))
    # Weight gradients equal those of autograd through the reference.
    y, h = rnn(x, h0)
    ((y * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum() + h.pow(2).sum()).backward()
    ours = [p.grad.clone() for p in rnn.parameters()]
    rnn.zero_grad()
    y, h = reference_paper([rnn.layer_weights(k) for k in range(2)], x, h0)
    ((y * torch.linspace(-1, 1, 4, dtype=torch.float64)).sum() + h.pow(2).sum()).backward()
    for mine, theirs in zip(ours, [p.grad for p in rnn.parameters()]):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_paper_dropout_between_layers_only_in_training() -> None:
    torch.manual_seed(3)
    rnn = cells.PaperLSTM(4, 6, 2, dropout=0.5)
    x = torch.randn(2, 5, 4)
    rnn.eval()
    a, _ = rnn(x)
    b, _ = rnn(x)
    torch.testing.assert_close(a, b)
    rnn.train()
    c, _ = rnn(x)
    assert not torch.allclose(a, c)


def test_paper_under_autocast_keeps_a_float32_state() -> None:
    torch.manual_seed(4)
    rnn = cells.PaperLSTM(8, 8, 2)
    x = torch.randn(2, 5, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = rnn(x)
    assert h.dtype == torch.float32
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rnn.parameters())


# -- every cell, through the language model ------------------------------------------------------


def _model(cell: str, vocab: int = 50, embedding: int = 12, hidden: int = 16, layers: int = 2, tie: bool = True, seed: int = 0, dropout: float = 0.2) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    model = LSTMLanguageModel(ModelConfig(vocab_size=vocab, embedding_size=embedding, hidden_size=hidden, num_layers=layers, dropout=dropout, tie_weights=tie, cell=cell))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-0.5, 0.5)
    return model.eval()


def test_config_cells() -> None:
    assert tuple(cells.CELLS) == CELLS == ("lstm", "gru", "paper")
    assert ModelConfig(vocab_size=10).cell == "lstm"
    with pytest.raises(LstmgenError, match="^cell must be one of lstm, gru, paper"):
        ModelConfig(vocab_size=10, cell="rnn").validate()


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_state_is_a_tuple_of_layer_tensors(cell: str) -> None:
    model = _model(cell)
    state = model.initial_state(3)
    assert isinstance(state, tuple) and len(state) == len(cells.STATE_NAMES[cell]) == len(carry_names(cell))
    assert all(s.shape == (2, 3, 16) for s in state)
    _, new_state = model(torch.randint(0, 50, (3, 4)), state)
    assert isinstance(new_state, tuple) and [s.shape for s in new_state] == [s.shape for s in state]
    assert all(not s.requires_grad for s in detach_state(new_state))
    assert carry_names("lstm") == ("carry.h", "carry.c") and carry_names(cell)[0] == "carry.h"


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_windows_and_single_steps_match_the_whole_sequence(cell: str) -> None:
    model = _model(cell)
    tokens = torch.randint(3, 50, (2, 13))
    tokens[:, 0] = START_ID
    with torch.no_grad():
        whole, whole_state = model(tokens)
        first, state = model(tokens[:, :5])
        second, state = model(tokens[:, 5:], state)
        torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-5)
        for a, b in zip(state, whole_state):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # One token at a time through the window forward.
        state = model.initial_state(2)
        for t in range(tokens.shape[1]):
            logits, state = model(tokens[:, t : t + 1], state)
            torch.testing.assert_close(logits[:, 0], whole[:, t], rtol=1e-5, atol=1e-5)
    # And through the sampler's fused one-token step.
    stepper = FastStepper(model)
    state = model.initial_state(2)
    for t in range(tokens.shape[1]):
        logits, state = stepper.step(tokens[:, t], state)
        torch.testing.assert_close(logits, whole[:, t], rtol=1e-5, atol=1e-5)
    for a, b in zip(state, whole_state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert whole.abs().max() > 0.1


def test_gru_and_lstm_steps_match_the_framework_equations() -> None:
    # The fused single steps are written from the equations of docs/bundle-format.md; the window
    # forward is torch's. Untied, one layer, no projection: the head sees the cell output directly.
    for cell in ("lstm", "gru"):
        model = _model(cell, embedding=16, hidden=16, layers=1, tie=False)
        tokens = torch.randint(3, 50, (1, 6))
        with torch.no_grad():
            whole, _ = model(tokens)
        state = model.initial_state(1)
        for t in range(6):
            logits, state = FastStepper(model).step(tokens[:, t], state)
            torch.testing.assert_close(logits, whole[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_expected_shapes_match_the_model(cell: str) -> None:
    for tie, embedding in ((True, 12), (False, 16), (True, 16)):
        model = _model(cell, embedding=embedding, tie=tie)
        config = model.config
        names = {n: tuple(t.shape) for n, t in model.state_dict().items() if not (tie and n == "head.weight")}
        assert names == expected_shapes(config)
    assert model.num_parameters() == sum(torch.Size(s).numel() for s in expected_shapes(config).values()) + (0 if tie else 0)


# -- bundles, sampling and evaluation with every cell --------------------------------------------


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_bundle_records_the_cell_and_loads_it(cell: str, tmp_path: Path, tokenizer) -> None:
    model = _model(cell, vocab=tokenizer.vocab_size, embedding=12, hidden=16, layers=2, tie=True)
    path = tmp_path / f"{cell}.lstmgen"
    save_bundle(path, model, tokenizer)
    bundle = load_bundle(path)
    assert bundle.meta["model"]["cell"] == cell == bundle.model_config.cell
    loaded = bundle.build_model()
    assert isinstance(loaded.rnn, {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "paper": cells.PaperLSTM}[cell])
    ids = torch.tensor([[START_ID] + tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0])

    lm = lstmgen.load(path)
    batch = lm.sample_many("KING", 3, max_tokens=20, seed=5)
    single = [lm.generate_batch(["KING"] * 3, max_tokens=20, seed=5)]
    assert [s.text for s in batch] == single[0]
    assert all(len(s.tokens) <= 20 for s in batch)
    result = lm.evaluate("O Romeo, Romeo! wherefore art thou Romeo?\n")
    assert result["bits_per_char"] > 0 and result["tokens"] > 5
    # Evaluation with the state carried equals evaluating the whole text at once.
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    from lstmgen.evaluation import encode_text_stream, total_nll

    tokens, _, _ = encode_text_stream(tokenizer, [text])
    whole, _ = total_nll(loaded, tokens, seq_len=1024)
    windows, _ = total_nll(loaded, tokens, seq_len=7)
    assert windows == pytest.approx(whole, rel=1e-5)


def test_bundle_tensors_are_validated_per_cell(tmp_path: Path, tokenizer) -> None:
    paper = _model("paper", vocab=tokenizer.vocab_size)
    path = tmp_path / "paper.lstmgen"
    save_bundle(path, paper, tokenizer)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    # The same weights claiming to be another cell are refused, naming a tensor.
    for other in ("lstm", "gru"):
        meta = json.loads(members["lstmgen.json"])
        meta["model"]["cell"] = other
        bad = tmp_path / f"as-{other}.lstmgen"
        with zipfile.ZipFile(bad, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, json.dumps(meta) if name == "lstmgen.json" else data)
        with pytest.raises(LstmgenError, match="tensor 'rnn\\."):
            load_bundle(bad)
    # A wrong shape in a paper-only tensor is refused.
    from safetensors.torch import load as load_tensors, save as save_tensors

    tensors = load_tensors(members["model.safetensors"])
    tensors["rnn.weight_ho_l1"] = torch.zeros(16, 15)
    bad = tmp_path / "shape.lstmgen"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, save_tensors(tensors) if name == "model.safetensors" else data)
    with pytest.raises(LstmgenError, match="rnn.weight_ho_l1"):
        load_bundle(bad)


# -- training: carried state, checkpoints and exact resume ---------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path):
    return tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path_factory.mktemp("tok"), 0.1)


def _train(corpus, cell: str, output: Path, stop_at: int | None = None, resume: bool = False) -> Trainer:
    model = ModelConfig(vocab_size=corpus.meta["vocab_size"], embedding_size=16, hidden_size=16, num_layers=2, dropout=0.1, cell=cell)
    train = TrainConfig(batch_size=4, seq_len=12, max_steps=8, val_every=4, log_every=1, warmup_steps=2, seed=7, threads=1, val_max_tokens=500)
    trainer = Trainer(corpus, model, train, output, resume=resume)

    def on_event(event: dict) -> None:
        if stop_at is not None and event["event"] == "step" and event["step"] >= stop_at:
            trainer.request_stop()

    trainer.on_event = on_event
    trainer.run()
    return trainer


@pytest.mark.parametrize("cell", ["gru", "paper"])
def test_interrupted_and_resumed_training_is_exact(cell: str, corpus, tmp_path: Path) -> None:
    straight = _train(corpus, cell, tmp_path / "a.lstmgen")
    _train(corpus, cell, tmp_path / "b.lstmgen", stop_at=3)
    with zipfile.ZipFile(tmp_path / "b.lstmgen.run" / "checkpoint.ckpt") as archive:
        from safetensors.torch import load as load_tensors

        saved = load_tensors(archive.read("tensors.safetensors"))
    assert [name for name in saved if name.startswith("carry.")] == ["carry.h"]
    assert saved["carry.h"].shape == (2, 4, 16)
    resumed = _train(corpus, cell, tmp_path / "b.lstmgen", resume=True)
    assert resumed.progress.step == straight.progress.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_bundle(tmp_path / "b.lstmgen").model_config.cell == cell


def test_cli_train_cell_option(small_corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "g.lstmgen"
    result = cli("train", str(small_corpus), "-o", str(output), "--cell", "paper", "--hidden-size", "16", "--layers", "2", "--max-steps", "3",
                 "--batch-size", "4", "--seq-len", "16", "--val-every", "3", "--vocab-size", "400", "--seed", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(zipfile.ZipFile(output).read("lstmgen.json"))["model"]["cell"] == "paper"
    sample = cli("sample", "-m", str(output), "--max-tokens", "10", "--seed", "1")
    assert sample.returncode == 0, sample.stderr


# -- docs/bundle-format.md §3–4 for gru and paper, run with numpy from the bundle file alone ------


def _numpy_step(meta: dict, t: dict, token: int, state: list) -> tuple:
    """One step of §4 for the bundle's cell (numpy, float64), written from the document."""
    import numpy as np

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    model = meta["model"]
    H, cell = model["hidden_size"], model["cell"]
    x = np.zeros(model["embedding_size"]) if token == START_ID else t["embedding.weight"][token]
    new_state = []
    for k in range(model["num_layers"]):
        h = state[k]
        if cell == "gru":
            a = t[f"rnn.weight_ih_l{k}"] @ x + t[f"rnn.bias_ih_l{k}"]
            b = t[f"rnn.weight_hh_l{k}"] @ h + t[f"rnn.bias_hh_l{k}"]
            r = sigmoid(a[0:H] + b[0:H])
            z = sigmoid(a[H : 2 * H] + b[H : 2 * H])
            n = np.tanh(a[2 * H :] + r * b[2 * H :])
            h = (1 - z) * n + z * h
            x = h
        else:
            a = t[f"rnn.weight_ih_l{k}"] @ x + t[f"rnn.bias_l{k}"]
            u = t[f"rnn.weight_hh_l{k}"] @ h
            i = sigmoid(a[0:H] + u[0:H])
            f = sigmoid(a[H : 2 * H] + u[H : 2 * H])
            candidate = np.tanh(a[2 * H : 3 * H] + u[2 * H :])
            h = f * h + i * candidate
            o = sigmoid(a[3 * H :] + t[f"rnn.weight_ho_l{k}"] @ h)
            x = o * np.tanh(h)
        new_state.append(h)
    if "projection.weight" in t:
        x = t["projection.weight"] @ x
    head = t["embedding.weight"] if model["tie_weights"] else t["head.weight"]
    return head @ x + t["head.bias"], new_state


@pytest.mark.parametrize("cell, embedding, tie", [("gru", 12, True), ("gru", 16, False), ("paper", 12, True), ("paper", 16, False)])
def test_bundle_format_document_runs_gru_and_paper(cell: str, embedding: int, tie: bool, tmp_path: Path, tokenizer) -> None:
    import numpy as np

    from .conftest import SAMPLE_TEXT, parse_safetensors, read_bundle_members

    model = _model(cell, vocab=tokenizer.vocab_size, embedding=embedding, hidden=16, layers=2, tie=tie)
    path = tmp_path / f"{cell}.lstmgen"
    save_bundle(path, model, tokenizer)
    members = read_bundle_members(path)
    meta = json.loads(members["lstmgen.json"])
    tensors = parse_safetensors(members["model.safetensors"])
    assert meta["model"]["cell"] == cell
    ids = [START_ID] + tokenizer.encode(SAMPLE_TEXT)
    state = [np.zeros(16) for _ in range(2)]
    rows = []
    for token in ids:
        logits, state = _numpy_step(meta, tensors, token, state)
        rows.append(logits)
    with torch.no_grad():
        torch_logits, torch_state = load_bundle(path).build_model()(torch.tensor([ids]))
    np.testing.assert_allclose(np.stack(rows), torch_logits[0].double().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.stack(state), torch_state[0][:, 0].double().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cells_on_cuda_match_the_cpu(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's RNNs use TF32 by default
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = _model(cell, vocab=60, embedding=24, hidden=32, layers=2, dropout=0.0)  # no dropout: the RNGs differ
    gpu = _model(cell, vocab=60, embedding=24, hidden=32, layers=2, dropout=0.0).cuda()
    tokens = torch.randint(3, 60, (4, 40))
    targets = torch.randint(3, 60, (4, 40))
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        model.train()
        model.zero_grad()
        logits, _ = model(tokens.to(device))
        torch.nn.functional.cross_entropy(logits.reshape(-1, 60), targets.to(device).reshape(-1)).backward()
    with torch.no_grad():
        cpu.eval(), gpu.eval()
        torch.testing.assert_close(gpu(tokens.cuda())[0].cpu(), cpu(tokens)[0], rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-4, msg=name)
    # One-token steps on the GPU, and a mixed-precision training step.
    state = gpu.initial_state(4)
    stepper = FastStepper(gpu)
    with torch.no_grad():
        whole, _ = gpu(tokens.cuda())
    for t in range(5):
        step_logits, state = stepper.step(tokens[:, t].cuda(), state)
        torch.testing.assert_close(step_logits, whole[:, t], rtol=1e-4, atol=1e-4)
    gpu.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, state = gpu(tokens.cuda())
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters())
