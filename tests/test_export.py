"""`lstmgen export`: the ONNX graph of one step (checked with onnxruntime against lstmgen), the web page's
contents (weights exactly the bundle's, self-contained), and the command's refusals.

The page running in a browser is tested in test_export_web.py.
"""

from __future__ import annotations

import base64
import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import lstmgen
from lstmgen.bundle import load_bundle, save_bundle
from lstmgen.config import ModelConfig
from lstmgen.export import ExportOptions, export_model, tokenizer_path
from lstmgen.model import LSTMLanguageModel
from lstmgen.registry import builtin_models

from .conftest import ROOT, TANG, assert_refused, cli

try:
    import onnx
    import onnxruntime as ort
except ImportError:  # the ONNX tests skip; the page and command tests run
    onnx = ort = None
needs_onnx = pytest.mark.skipif(ort is None, reason="onnx and onnxruntime are not installed (pip install 'lstmgen[export]')")

BUILTINS = builtin_models()
needs_builtins = pytest.mark.skipif(
    not {"shakespeare", "tang"} <= set(BUILTINS), reason="the built-in models are not installed"
)
#: Text the built-in models never trained on: the validation tails of their corpora (val_fraction 0.1).
HELD_OUT = {
    "shakespeare": (ROOT / "corpora" / "tinyshakespeare.txt").read_text()[-40_000:-38_800],
    "tang": TANG.read_text()[-3_000:-2_400],
}
PROMPTS = {
    "shakespeare": ["ROMEO:", "", "First Citizen:\nWe are accounted poor citizens", "KING HENRY VI:\r\n\tO God!"],
    "tang": ["床前明月光", "", "白日依山尽，黄河入海流。\n"],
}
#: Small models of every cell, with and without a projection and a tied head.
SMALL = {
    "lstm": dict(embedding_size=24, hidden_size=32, num_layers=2, tie_weights=True),
    "gru": dict(embedding_size=32, hidden_size=32, num_layers=2, tie_weights=False),
    "paper": dict(embedding_size=16, hidden_size=24, num_layers=2, tie_weights=True),
}


def small_bundle(directory: Path, cell: str, tokenizer, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A model of `cell` with random weights spread wide enough that its logits are far apart (no near ties)."""
    torch.manual_seed(seed)
    model = LSTMLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, cell=cell, dropout=0.0, **SMALL[cell]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.uniform_(-0.3, 0.3) if name.startswith("rnn") else parameter.normal_(0, 0.8)
    path = directory / f"small-{cell}.lstmgen"
    save_bundle(path, model, tokenizer, {"model_type": "unigram", "documents": "file"}, dtype=dtype)
    return path


@pytest.fixture(scope="module")
def small_bundles(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("small-models")
    return {cell: small_bundle(directory, cell, tokenizer, seed=index) for index, cell in enumerate(SMALL)}


# -- running the ONNX graph ----------------------------------------------------------------------------


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(sess, tokens: np.ndarray, cell: str, layers: int, hidden: int) -> np.ndarray:
    """Feed a (batch, time) array of ids one step at a time from a zero state: logits (batch, time, vocab)."""
    batch = tokens.shape[0]
    feeds = {name: np.zeros((layers, batch, hidden), np.float32) for name in (("h", "c") if cell == "lstm" else ("h",))}
    steps = []
    for column in tokens.T:
        logits, *state = sess.run(None, {"tokens": column.astype(np.int64), **feeds})
        feeds = dict(zip(feeds, state))
        steps.append(logits)
    return np.stack(steps, axis=1)


def onnx_greedy(sess, meta: dict[str, str], ids: list[int], cell: str, layers: int, hidden: int, count: int) -> list[int]:
    """lstmgen's greedy rule on the graph: never the unknown or start id, stop at end of text."""
    feeds = {name: np.zeros((layers, 1, hidden), np.float32) for name in json.loads(meta["state"])}
    banned = json.loads(meta["never_sample_ids"])
    out: list[int] = []
    token = None
    for position in range(len(ids) + count):
        token = ids[position] if position < len(ids) else token
        logits, *state = sess.run(None, {"tokens": np.array([token], np.int64), **feeds})
        feeds = dict(zip(feeds, state))
        if position >= len(ids) - 1:
            logits[0, banned] = -np.inf
            token = int(logits[0].argmax())
            if token == int(meta["end_of_text_id"]) or len(out) == count:
                break
            out.append(token)
    return out


def export_onnx(model: Path | str, directory: Path) -> Path:
    output = directory / f"{Path(str(model)).name.removesuffix('.lstmgen')}.onnx"
    export_model(model, output, format="onnx")
    return output


def check_onnx(model: str | Path, directory: Path, texts: list[str], prompts: list[str], tokens: int) -> float:
    """Logits on `texts` (as one batch) within 1e-4 of lstmgen's, and greedy continuations equal: the largest difference."""
    output = export_onnx(model, directory)
    m = lstmgen.load(str(model))
    config = m.config
    sess = session(output)
    meta = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    start = json.loads(meta["start_ids"])
    encoded = [start + m.tokenizer.encode(text) for text in texts]
    length = min(len(ids) for ids in encoded)
    batch = np.array([ids[:length] for ids in encoded])
    got = onnx_logits(sess, batch, config.cell, config.num_layers, config.hidden_size)
    with torch.no_grad():
        want = m.model(torch.from_numpy(batch))[0].numpy()
    difference = float(np.abs(got - want).max())
    assert difference < 1e-4, difference
    for prompt in prompts:
        expected = m.sample(prompt, temperature=0, max_tokens=tokens).tokens
        ids = m._sampler.prompt_ids(prompt)
        assert onnx_greedy(sess, meta, ids, config.cell, config.num_layers, config.hidden_size, tokens) == expected, prompt
    return difference


# -- ONNX ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(SMALL))
@needs_onnx
def test_onnx_step_of_every_cell_matches_lstmgen(cell: str, small_bundles: dict[str, Path], tmp_path: Path) -> None:
    text = HELD_OUT["shakespeare"]
    check_onnx(small_bundles[cell], tmp_path, [text[:400], text[400:800]], ["ROMEO:", "", "a\r\n\tb"], 60)


@needs_onnx
@needs_builtins
@pytest.mark.parametrize("name", ["shakespeare", "tang"])
def test_onnx_of_the_builtin_models_matches_lstmgen(name: str, tmp_path: Path) -> None:
    text = HELD_OUT[name]
    middle = len(text) // 2
    check_onnx(name, tmp_path, [text[:middle], text[middle:]], PROMPTS[name][:3], 80)


@needs_onnx
def test_onnx_graph_declares_its_interface(small_bundles: dict[str, Path], tmp_path: Path, tokenizer) -> None:
    for cell, bundle in small_bundles.items():
        output = export_onnx(bundle, tmp_path)
        model = onnx.load(str(output))
        onnx.checker.check_model(model)
        graph = model.graph
        states = ["h", "c"] if cell == "lstm" else ["h"]
        assert [i.name for i in graph.input] == ["tokens", *states]
        assert [o.name for o in graph.output] == ["logits", *(f"{s}_out" for s in states)]
        dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
        assert dims(graph.input[0]) == ["batch"]
        assert dims(graph.input[1]) == [2, "batch", SMALL[cell]["hidden_size"]]
        assert dims(graph.output[0]) == ["batch", tokenizer.vocab_size]
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for init in graph.initializer)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["cell"] == cell and json.loads(meta["start_ids"]) == [1] and meta["end_of_text_id"] == "2"
        assert json.loads(meta["never_sample_ids"]) == [0, 1] and json.loads(meta["state"]) == states
        assert model.opset_import[0].version == 17 and model.producer_name == "lstmgen"
        # The tokenizer is written beside the graph, byte for byte the bundle's.
        assert tokenizer_path(output) == output.with_name(f"small-{cell}.tokenizer.model")
        assert tokenizer_path(output).read_bytes() == tokenizer.model_proto


@needs_onnx
def test_onnx_of_a_blank_line_model_starts_documents(tmp_path: Path, tokenizer) -> None:
    bundle = small_bundle(tmp_path, "gru", tokenizer)
    with zipfile.ZipFile(bundle) as source:
        members = {name: source.read(name) for name in source.namelist()}
    meta = json.loads(members["lstmgen.json"])
    meta["tokenizer"]["settings"]["documents"] = "blank-line"
    members["lstmgen.json"] = json.dumps(meta).encode()
    poems = tmp_path / "poems.lstmgen"
    with zipfile.ZipFile(poems, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    output = export_onnx(poems, tmp_path)
    props = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(props["start_ids"]) == [1, 2] and props["documents"] == "blank-line"


@needs_onnx
def test_float16_bundles_export_their_exact_values(tmp_path: Path, tokenizer) -> None:
    bundle = small_bundle(tmp_path, "lstm", tokenizer, dtype=torch.float16)
    output = export_onnx(bundle, tmp_path)
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(output)).graph.initializer}
    stored = load_bundle(bundle).tensors["embedding.weight"]
    assert stored.dtype == torch.float16
    assert np.array_equal(initializers["embedding.weight"], stored.float().numpy())


# -- the web page's contents ---------------------------------------------------------------------------


def page_parts(page: Path) -> tuple[dict, bytes]:
    text = page.read_text(encoding="utf-8")
    spec = json.loads(re.search(r'<script type="application/json" id="lstmgen-spec">(.*?)</script>', text, re.S).group(1))
    weights = re.search(r'<script type="application/octet-stream" id="lstmgen-weights">(.*?)</script>', text, re.S).group(1)
    return spec, zlib.decompress(base64.b64decode("".join(weights.split())))


def page_tensors(spec: dict, raw: bytes) -> dict[str, np.ndarray]:
    """Undo the page's byte planes in Python: what the page's runtime decodes."""
    found = {}
    for entry in spec["weights"]["tensors"]:
        count = int(np.prod(entry["shape"]))
        size = {"f16": 2, "f32": 4, "i8": 1}[entry["kind"]]
        data = np.frombuffer(raw, np.uint8, count * size, entry["offset"])
        values = data.reshape(size, count).T.copy().view({"f16": "<f2", "f32": "<f4", "i8": "i1"}[entry["kind"]]).reshape(entry["shape"])
        if entry["kind"] == "i8":
            scales = np.frombuffer(raw, np.uint8, entry["shape"][0] * 4, entry["scales"]).reshape(4, -1).T.copy().view("<f4")
            values = values.astype(np.float32) * scales
        found[entry["name"]] = values
    return found


def test_page_holds_the_bundles_float16_weights_exactly(tmp_path: Path, tokenizer) -> None:
    bundle = small_bundle(tmp_path, "paper", tokenizer, dtype=torch.float16)
    page = tmp_path / "page.html"
    export_model(bundle, page)
    spec, raw = page_parts(page)
    assert spec["weights"]["exact"] is True and len(raw) == spec["weights"]["size"]
    stored = load_bundle(bundle).tensors
    decoded = page_tensors(spec, raw)
    assert set(decoded) == set(stored)
    for name, tensor in stored.items():
        assert decoded[name].dtype == np.float16 and np.array_equal(decoded[name].view(np.uint16), tensor.numpy().view(np.uint16))
    tok = spec["tokenizer"]
    assert len(tok["pieces"]) == tokenizer.vocab_size == spec["model"]["vocab_size"]
    assert tok["start_ids"] == [1] and tok["end_of_text_id"] == 2 and tok["never_sample_ids"] == [0, 1]
    assert [bytes([b]) for b in range(256)] == [tokenizer.token_bytes(i) for i in tok["byte_ids"]]


def test_int8_and_float32_pages(tmp_path: Path, tokenizer) -> None:
    bundle = small_bundle(tmp_path, "lstm", tokenizer)
    stored = load_bundle(bundle).tensors
    sizes = {}
    for weights in ("float32", "float16", "int8"):
        page = tmp_path / f"{weights}.html"
        export_model(bundle, page, weights=weights)
        sizes[weights] = page.stat().st_size
        spec, raw = page_parts(page)
        decoded = page_tensors(spec, raw)
        assert spec["weights"]["exact"] is (weights == "float32")
        for name, tensor in stored.items():
            tolerance = {"float32": 0, "float16": 1e-3, "int8": float(tensor.abs().max()) / 127 * 0.51}[weights]
            assert np.abs(decoded[name].astype(np.float32) - tensor.numpy()).max() <= tolerance, (weights, name)
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]


def test_page_is_self_contained(tmp_path: Path, small_bundles: dict[str, Path]) -> None:
    page = tmp_path / "page.html"
    export_model(small_bundles["gru"], page)
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "default-src 'none'" in text  # the Content-Security-Policy: no request can leave the page
    assert not re.search(r"\b(src|href)\s*=", text)
    assert "http://" not in text and "https://" not in text
    assert text.count("<script") == 3 and text.count("</script>") == 3


@needs_builtins
@pytest.mark.parametrize("name", ["shakespeare", "tang"])
def test_builtin_pages_are_at_most_12_mb(name: str, tmp_path: Path) -> None:
    page = tmp_path / f"{name}.html"
    export_model(name, page)
    assert page.stat().st_size <= 12_000_000
    spec, _ = page_parts(page)
    assert spec["weights"]["exact"] is True and spec["weights"]["encoding"] == "float16"


# -- the command ---------------------------------------------------------------------------------------


@needs_onnx
def test_cli_writes_onnx_and_page(fast_cli, small_bundles: dict[str, Path], tmp_path: Path) -> None:
    result = fast_cli("export", small_bundles["lstm"], "--format", "onnx", "-o", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "m.onnx" in result.stderr and "m.tokenizer.model" in result.stderr
    assert (tmp_path / "m.tokenizer.model").exists()
    result = fast_cli("export", small_bundles["lstm"], "-o", tmp_path / "m.html")
    assert result.returncode == 0 and result.stdout == "", result.stderr
    assert (tmp_path / "m.html").read_bytes().startswith(b"<!doctype html>")
    # Exporting again replaces the earlier files of the same kinds.
    assert fast_cli("export", small_bundles["lstm"], "-o", tmp_path / "m.onnx").returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "x.txt"], "cannot tell the format"),
        (["--format", "onnx", "--weights", "int8", "-o", "x.onnx"], "--weights int8 applies to web pages"),
        ([], "give the file to write with -o"),
        (["--format", "pdf", "-o", "x.pdf"], "--format must be one of onnx, web"),
        (["--weights", "float8", "-o", "x.html"], "--weights must be one of"),
    ],
)
def test_cli_refuses_bad_options_before_any_work(fast_cli, small_bundles: dict[str, Path], tmp_path: Path, args: list[str], message: str) -> None:
    result = fast_cli("export", small_bundles["lstm"], *args, cwd=tmp_path)
    assert_refused(result, message)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_replace_other_files(fast_cli, small_bundles: dict[str, Path], tmp_path: Path) -> None:
    notes = tmp_path / "notes.html"
    notes.write_text("my notes, not a page\n")
    assert_refused(fast_cli("export", small_bundles["gru"], "-o", notes), "is a text file, not an HTML page")
    assert notes.read_text() == "my notes, not a page\n"
    # The model itself is an input of the command.
    assert_refused(fast_cli("export", small_bundles["gru"], "--format", "web", "-o", small_bundles["gru"]), ("an input of this command", "not an HTML page"))


@needs_onnx
def test_cli_refuses_to_replace_other_files_with_onnx(fast_cli, small_bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle_copy = tmp_path / "copy.onnx"
    bundle_copy.write_bytes(small_bundles["gru"].read_bytes())
    assert_refused(fast_cli("export", small_bundles["gru"], "--format", "onnx", "-o", bundle_copy), "is a model bundle, not an ONNX model")
    # The tokenizer beside the graph is guarded too, before the graph is written.
    (tmp_path / "g.tokenizer.model").write_text("a poem\n")
    assert_refused(fast_cli("export", small_bundles["gru"], "-o", tmp_path / "g.onnx"), "is a text file, not a SentencePiece model")
    assert not (tmp_path / "g.onnx").exists()


def test_cli_without_onnx_says_how_to_install_it(small_bundles: dict[str, Path], tmp_path: Path) -> None:
    import os

    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "onnx.py").write_text("raise ImportError('onnx is blocked for this test')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    result = cli("export", str(small_bundles["lstm"]), "-o", str(tmp_path / "m.onnx"), env=env)
    assert_refused(result, "pip install 'lstmgen[export]'")
    assert not (tmp_path / "m.onnx").exists()


def test_export_help_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom lstmgen.cli import main\ntry:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'heavy imports'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Usage: lstmgen export [OPTIONS] [MODEL]" in done.stdout and b"--format onnx|web" in done.stdout


def test_export_options_are_declared_once() -> None:
    from lstmgen.options import declared_by_name

    options = declared_by_name(ExportOptions)
    assert options["output"].flags == ("-o", "--output") and options["format"].choices == ("onnx", "web")
    with pytest.raises(lstmgen.LstmgenError, match="unknown export option"):
        export_model("shakespeare", "x.html", colour="red")
