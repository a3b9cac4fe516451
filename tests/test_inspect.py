"""Seeing inside a model: per-token activations, text features, `lstmgen inspect`, and the
training curves of `lstmgen info` (terminal plot and PNG, opened and checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmgen.config import ModelConfig
from lstmgen.errors import LstmgenError
from lstmgen.inspection import (
    CONTEXT_FEATURES,
    FEATURES,
    STATE_KINDS,
    Activations,
    activations,
    chance_level,
    correlations,
    find_cells,
    group_pieces,
    parse_neuron,
    text_features,
)
from lstmgen.model import LSTMLanguageModel
from lstmgen.sampling import FastStepper

from .conftest import CHROMIUM, ROOT, check_page, chromium, colour_counts, needs_chromium, read_png

TEXT = (ROOT / "corpora" / "tinyshakespeare.txt").read_text()[500_000:502_000]


def _model(cell: str, tie: bool = True, layers: int = 2, vocab: int = 400) -> LSTMLanguageModel:
    torch.manual_seed(11)
    hidden = 20
    config = ModelConfig(vocab_size=vocab, embedding_size=hidden if tie else 12, hidden_size=hidden, num_layers=layers, dropout=0.0,
                         tie_weights=tie, cell=cell)
    model = LSTMLanguageModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


# -- activations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "paper"])
@pytest.mark.parametrize("tie", [True, False])
def test_activations_match_the_models_own_forward(cell: str, tie: bool) -> None:
    """Re-running the recurrence from the weights gives the model's logits and final state."""
    model = _model(cell, tie)
    ids = [1] + list(np.random.default_rng(1).integers(3, 400, 120))
    found = activations(model, ids, with_logits=True)
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]))
    assert np.allclose(found.logits, logits[0].numpy(), rtol=1e-4, atol=2e-4)
    assert set(found.values) == set(STATE_KINDS[cell])
    assert found.values[STATE_KINDS[cell][0]].shape == (2, len(ids), 20)
    # The state the model returns after the last token: (h, c) for lstm, (h,) otherwise, where
    # the paper cell's only state is its cell state (what inspection calls c).
    recurrent = {"lstm": ("h", "c"), "gru": ("h",), "paper": ("c",)}[cell]
    for tensor, kind in zip(state, recurrent):
        assert np.allclose(found.values[kind][:, -1], tensor[:, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_activations_of_each_position_equal_stepping_one_token_at_a_time() -> None:
    model = _model("lstm")
    ids = [1, 40, 41, 42, 300, 7]
    found = activations(model, ids)
    stepper = FastStepper(model)  # the sampler's one-token step: the same equations, written once in lstmgen.cells
    state = model.initial_state(1)
    for position, token in enumerate(ids):
        _, state = stepper.step(torch.tensor([token]), state)
        assert np.allclose(found.values["h"][:, position], state[0][:, 0].numpy(), atol=1e-6)
        assert np.allclose(found.values["c"][:, position], state[1][:, 0].numpy(), atol=1e-6)


def test_kinds_can_be_chosen_and_are_checked() -> None:
    assert set(activations(_model("lstm"), [1, 5, 6], kinds=["c"]).values) == {"c"}
    with pytest.raises(LstmgenError, match="no separate cell state"):
        activations(_model("gru"), [1, 5], kinds=["c"])
    with pytest.raises(LstmgenError, match="no tokens"):
        activations(_model("lstm"), [])


def test_parse_neuron() -> None:
    assert parse_neuron("1:19", 2, 20) == (1, 19)
    for spec, message in [("2:0", "has 2 layers"), ("0:20", "20 cells"), ("1", "LAYER:CELL"), ("a:b", "LAYER:CELL"), ("-1:3", "LAYER:CELL")]:
        with pytest.raises(LstmgenError, match=message):
            parse_neuron(spec, 2, 20)


# -- pieces and features ---------------------------------------------------------------------------------


def test_pieces_keep_characters_whole(tokenizer) -> None:
    text = "ROMEO: ünïcode 🦜 and 漢字, done.\n"
    ids = [1] + tokenizer.encode(text)
    pieces = group_pieces(tokenizer, ids)
    assert "".join(p.text for p in pieces) == text
    assert all("\ufffd" not in p.text for p in pieces)
    parrot = next(p for p in pieces if "🦜" in p.text)
    assert parrot.token_count == 4  # byte fallback: one piece of four byte tokens
    assert [(p.first, p.last) for p in pieces][0][0] == 1 and pieces[-1].last == len(ids) - 1
    assert all(a.last + 1 == b.first for a, b in zip(pieces, pieces[1:]))


def test_text_features() -> None:
    pieces = ['He', ' said', ' "', 'hi', ' (', 'x', ')', '"', '\n', 'ROMEO', ':', ' 42', '.', ' 春', " '", 'tis', "'", ' end', '\n']
    f = text_features(pieces)
    assert list(f["in_quotes"]) == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert list(f["in_parentheses"]) == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert list(f["position_in_line"][:3]) == [2, 7, 9] and f["position_in_line"][8] == 0 and f["position_in_line"][9] == 5
    assert f["after_newline"][8] == 1 and f["after_newline"].sum() == 2
    assert f["line_start"][0] == 1 and f["line_start"][9] == 1 and f["line_start"][10] == 0
    assert f["uppercase"][9] == 1 and f["uppercase"][0] == 0 and f["capitalized"][0] == 1
    assert f["digit"][11] == 1 and f["digit"].sum() == 1
    assert f["sentence_end"][12] == 1 and f["punctuation"][10] == 1
    assert f["cjk"][13] == 1 and f["cjk"].sum() == 1 and f["latin"][13] == 0 and f["latin"][0] == 1
    assert list(f["in_single_quotes"][14:17]) == [1, 1, 0]  # 'tis' opened after a space, closed after letters
    assert f["position_in_word"][1] == 4 and f["position_in_word"][2] == 0
    assert list(f["caps_line"][8:12]) == [0, 1, 1, 1] and f["caps_line"][15] == 0 and f["caps_line"][:8].sum() == 0
    assert set(f) == set(FEATURES)


def test_correlations_and_find_cells_find_a_planted_cell() -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.choice(["a", " b", '"', "(", ")", "\n", "Cc", "1"]) for _ in range(3000)]
    features = text_features(pieces)
    values = {"c": rng.normal(size=(2, 3001, 16)).astype(np.float32), "h": rng.normal(size=(2, 3001, 16)).astype(np.float32)}
    positions = list(range(1, 3001))
    values["c"][1, 1:, 7] = features["in_quotes"] * 2 - 1 + 0.1 * rng.normal(size=3000)  # a quote cell
    values["h"][0, 1:, 3] = -features["position_in_line"] + 0.5 * rng.normal(size=3000)  # a line-position cell
    acts = Activations(list(range(3001)), values)
    matches, constant = find_cells(acts, positions, features, top=2)
    by_name = {m.name: m for m in matches}
    quote = by_name["in_quotes"].top[0]
    assert (quote.layer, quote.index, quote.kind) == (1, 7, "c") and quote.r > 0.95
    line = by_name["position_in_line"].top[0]
    assert (line.layer, line.index, line.kind) == (0, 3, "h") and line.r < -0.9
    assert matches[0].context and not matches[-1].context and "cjk" in constant
    assert abs(by_name["digit"].top[0].r) < 5 * chance_level(3000)
    assert correlations(np.ones((5, 2)), np.arange(5.0)).tolist() == [0.0, 0.0]  # constant cells: 0, not NaN


# -- lstmgen inspect ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "held-out.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def gru_bundle(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lstmgen.bundle import save_bundle

    path = tmp_path_factory.mktemp("gru") / "gru.lstmgen"
    save_bundle(path, _model("gru", vocab=tokenizer.vocab_size), tokenizer)
    return path


def test_inspect_find_json(fast_cli, tiny_bundle: Path, text_file: Path) -> None:
    result = fast_cli("inspect", "-m", tiny_bundle, text_file, "--find", "--json", "--top", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["states"] == ["c", "h"] and report["layers"] == 1 and report["hidden_size"] == 32
    assert report["chance_r"] == pytest.approx(3 / report["pieces"] ** 0.5, abs=1e-4)
    names = [f["name"] for f in report["features"]]
    assert "position_in_line" in names and "after_newline" in names and "cjk" in report["constant_features"]
    for feature in report["features"]:
        assert len(feature["top"]) == 2
        assert abs(feature["top"][0]["r"]) >= abs(feature["top"][1]["r"])
        first = feature["top"][0]
        assert first["neuron"] == f"{first['layer']}:{first['cell']}" and first["state"] in ("c", "h") and -1 <= first["r"] <= 1
    context = [f["context"] for f in report["features"]]
    assert context == sorted(context, reverse=True) and context[0]  # features of the context first
    assert all(f["context"] == (f["name"] in CONTEXT_FEATURES) for f in report["features"])
    for group in (True, False):
        best = [abs(f["top"][0]["r"]) for f in report["features"] if f["context"] == group]
        assert best == sorted(best, reverse=True)


def test_inspect_find_table(fast_cli, tiny_bundle: Path, text_file: Path) -> None:
    result = fast_cli("inspect", "-m", tiny_bundle, text_file, "--find", "--state", "h")
    assert result.returncode == 0, result.stderr
    assert "position_in_line" in result.stdout and "best cell" in result.stdout and " h " in result.stdout
    assert " c +" not in result.stdout and " c -" not in result.stdout
    assert "unlikely by chance" in result.stdout
    assert f"see one: lstmgen inspect -m {tiny_bundle} {text_file} --neuron 0:" in result.stderr


def test_inspect_neuron_plain_and_json(fast_cli, tiny_bundle: Path, text_file: Path) -> None:
    import lstmgen

    result = fast_cli("inspect", "-m", tiny_bundle, text_file, "--neuron", "0:5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["neuron"] == "0:5" and report["state"] == "c"
    assert "".join(p["text"] for p in report["pieces"]) == TEXT
    lm = lstmgen.load(tiny_bundle)
    ids = [1] + lm.tokenizer.encode(TEXT)
    expected = activations(lm.model, ids).values["c"][0, 1:, 5]
    assert np.allclose([p["value"] for p in report["pieces"]], expected, atol=1e-4)  # pieces are single tokens here

    plain = fast_cli("inspect", "-m", tiny_bundle, text_file, "--neuron", "0:5")
    assert plain.returncode == 0, plain.stderr
    body, legend = plain.stdout.rsplit("\n\nlegend: ", 1)
    assert body.translate({ord(c): None for c in "‹›«»↵"}) == TEXT.rstrip("\n")
    mean, sd = float(np.mean(expected)), float(np.std(expected))
    assert f"high: ≥ {mean + sd:.3g}" in legend and f"low: ≤ {mean - sd:.3g}" in legend
    highs = sum(1 for v in expected if v >= mean + sd)
    assert body.count("«") == highs and body.count("‹") == sum(1 for v in expected if v <= mean - sd)


def test_inspect_neuron_html(fast_cli, tiny_bundle: Path, text_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "cell.html"
    result = fast_cli("inspect", "-m", tiny_bundle, text_file, "--neuron", "0:5", "--state", "h", "--html", page)
    assert result.returncode == 0, result.stderr
    check_page(page, TEXT)
    data = json.loads(page.read_text().split('id="lstmgen-data">')[1].split("</script>")[0])
    assert all(-1 <= s["value"] <= 1 for s in data["spans"])  # h = o·tanh(c) is in (−1, 1)
    assert data["fields"][0]["label"] == "h[0:5]"
    if CHROMIUM is not None:
        shot = tmp_path / "cell.png"
        done = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
        assert done.returncode == 0, done.stderr[-2000:]
        counts = colour_counts(read_png(shot)[2])
        total = sum(counts.values())
        coloured = sum(n for (r, g, b), n in counts.items() if abs(r - b) > 60)  # red or blue backgrounds
        assert len(counts) > 50 and coloured > 0.01 * total


@needs_chromium
def test_inspect_neuron_page_script_runs(fast_cli, tiny_bundle: Path, text_file: Path, tmp_path: Path) -> None:
    page = tmp_path / "cell.html"
    assert fast_cli("inspect", "-m", tiny_bundle, text_file, "--neuron", "0:1", "--html", page).returncode == 0
    done = chromium(tmp_path, page.as_uri() + "#span=3", "--dump-dom")
    assert done.returncode == 0 and 'data-ready="' in done.stdout
    tip = done.stdout.split('id="tip"')[1].split("</div>\n")[0]
    assert "c[0:1]" in tip


def test_inspect_gru_has_no_cell_state(fast_cli, gru_bundle: Path, text_file: Path) -> None:
    result = fast_cli("inspect", "-m", gru_bundle, text_file, "--neuron", "1:3", "--state", "c")
    assert result.returncode == 2 and "no separate cell state; use --state h" in result.stderr
    found = fast_cli("inspect", "-m", gru_bundle, text_file, "--find", "--json", "--max-tokens", "300")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["states"] == ["h"] and "first 300 of" in found.stderr
    neuron = fast_cli("inspect", "-m", gru_bundle, text_file, "--neuron", "1:3")  # h is the default when there is no c
    assert neuron.returncode == 0, neuron.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give --neuron"),
        (["--find", "--neuron", "0:1"], "one of them"),
        (["--neuron", "1:0"], "has 1 layer (0 to 0)"),
        (["--neuron", "0:32"], "32 cells"),
        (["--neuron", "x"], "LAYER:CELL"),
        (["--find", "--state", "q"], "--state must be"),
        (["--find", "--html", "x.html"], "use it with --neuron"),
        (["--find", "--top", "0"], "--top must be"),
        (["--find", "--max-tokens", "0"], "--max-tokens must be"),
    ],
)
def test_inspect_refuses_bad_options(fast_cli, tiny_bundle: Path, text_file: Path, args: list[str], message: str) -> None:
    result = fast_cli("inspect", "-m", tiny_bundle, text_file, *args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


# -- lstmgen info: training curves --------------------------------------------------------------------------


def test_info_prints_metadata_and_curves(fast_cli, tiny_bundle: Path) -> None:
    result = fast_cli("info", tiny_bundle)
    assert result.returncode == 0, result.stderr
    text = result.stdout  # the summary is data: on stdout even when it is not a terminal (`lstmgen info MODEL > f`)
    assert result.stderr == ""
    for label in ("model ", "21,648 parameters", "validation ", "tokenizer ", "train with ", "batch_size 8", "corpus ", "small.txt (60,000 bytes)",
                  "sha256 ", "versions ", "loss (nats/token) by step", "step", "· train", "● validation", "◆ best validation"):
        assert label in text, label
    plot = [line for line in text.splitlines() if "│" in line or "┤" in line]
    assert len(plot) >= 10 and sum(line.count("●") for line in plot) > 5 and sum(line.count("◆") for line in plot) == 1
    import lstmgen

    curve = lstmgen.load(tiny_bundle).meta["training"]["curve"]
    best = min(curve, key=lambda p: p["val_loss"])
    assert f"best validation {best['val_loss']:.4f} at step {best['step']}" in text


def test_info_without_a_curve(fast_cli, tokenizer, tmp_path: Path) -> None:
    from lstmgen.bundle import save_bundle

    path = tmp_path / "untrained.lstmgen"
    save_bundle(path, _model("lstm", vocab=tokenizer.vocab_size), tokenizer)
    result = fast_cli("info", path)
    assert result.returncode == 0 and "curves      none" in result.stdout
    plot = fast_cli("info", path, "--plot", tmp_path / "c.png")
    assert plot.returncode == 2 and "no training curve" in plot.stderr and not (tmp_path / "c.png").exists()


def test_info_plot_png(fast_cli, tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    image_module = pytest.importorskip("PIL.Image")
    png = tmp_path / "curves.png"
    result = fast_cli("info", tiny_bundle, "--plot", png)
    assert result.returncode == 0, result.stderr
    assert f"wrote {png}" in result.stderr
    with image_module.open(png) as image:
        assert image.format == "PNG" and image.size == (800, 450)
        pixels = image.convert("RGB")
        counts: dict[tuple[int, int, int], int] = {}
        for y in range(0, 450, 1):
            for x in range(0, 800, 1):
                pixel = pixels.getpixel((x, y))
                counts[pixel] = counts.get(pixel, 0) + 1

    def near(target: tuple[int, int, int], tolerance: int = 40) -> int:
        return sum(n for pixel, n in counts.items() if all(abs(a - b) <= tolerance for a, b in zip(pixel, target)))

    assert near((31, 119, 180)) > 100  # the train curve (blue)
    assert near((255, 127, 14)) > 100  # the validation curve (orange)
    assert near((214, 39, 40), 30) > 50  # the best-point star (red)
    assert counts.get((255, 255, 255), 0) > 0.5 * 800 * 450  # a white page with a plot on it, not a blank or black image
    assert len(counts) > 100  # text, axes and antialiased lines


def test_info_plot_without_matplotlib_is_a_clear_error(capsys, monkeypatch, tiny_bundle: Path, tmp_path: Path) -> None:
    from lstmgen.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(SystemExit) as done:
        main(["info", str(tiny_bundle), "--plot", str(tmp_path / "c.png")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --plot needs matplotlib") and "pip install 'lstmgen[plot]'" in err
    assert not (tmp_path / "c.png").exists()


def test_terminal_plot_shapes() -> None:
    from lstmgen.visualize import read_curve, terminal_plot

    curve = read_curve({"curve": [{"step": 0, "train_loss": None, "val_loss": 6.0}, {"step": 100, "train_loss": 4.0, "val_loss": 4.5},
                                  {"step": 200, "train_loss": 3.0, "val_loss": 4.0}, {"step": 300, "train_loss": 2.5, "val_loss": 4.2},
                                  {"step": "x"}, "junk"]})
    assert curve.best_step == 200 and curve.best_loss == 4.0 and len(curve.train) == 3
    rows = terminal_plot(curve, width=40, height=10)
    text = ["".join(segment for segment, _ in row) for row in rows]
    assert text[0].startswith("6.000 ┤") and text[9].startswith("2.500 ┤")
    assert text[-1].split() == ["0", "300"]
    assert sum(row.count("◆") for row in text) == 1
    assert read_curve({}) is None and read_curve({"curve": "no"}) is None and read_curve({"curve": [{"step": 1}]}) is None
