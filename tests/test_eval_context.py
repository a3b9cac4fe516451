"""`lstmgen eval` in context: compressor and unigram baselines, per-token surprisal, heatmaps.

The HTML heatmap is opened in a real headless browser (Debian's chromium) when one is installed:
the screenshot must show coloured text and the DOM must show that the page's script ran.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmgen.evaluation import (
    baselines,
    check_token_counts,
    combine_baselines,
    compressed_sizes,
    token_surprisal,
    total_nll,
    unigram_nll,
)

from .conftest import ROOT, check_page, chromium, colour_counts, needs_chromium, read_png

HELD_OUT = (ROOT / "corpora" / "tinyshakespeare.txt").read_text()[300_000:302_500]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval-context") / "held-out.txt"
    path.write_text(HELD_OUT)
    return path


@pytest.fixture(scope="module")
def bundle_without_counts(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with training.token_counts removed (as bundles of older versions are)."""
    target = tmp_path_factory.mktemp("no-counts") / "old.lstmgen"
    with zipfile.ZipFile(tiny_bundle) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "lstmgen.json":
                meta = json.loads(data)
                del meta["training"]["token_counts"]
                data = (json.dumps(meta, indent=2) + "\n").encode()
            out.writestr(item, data)
    return target


# -- baselines ---------------------------------------------------------------------------------------


def test_compressed_sizes_equal_the_standard_tools_at_best_settings() -> None:
    data = HELD_OUT.encode() * 3
    sizes = compressed_sizes(data)
    assert sizes["gzip"] == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert sizes["bz2"] == len(bz2.compress(data, 9))
    assert sizes["xz"] == len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    assert gzip.decompress(compressor.compress(data) + compressor.flush()) == data  # the gzip container, as gzip -9 writes


def test_streaming_compression_equals_one_shot() -> None:
    from lstmgen.evaluation import CompressedSizes

    data = (HELD_OUT * 200).encode()  # > 1 MiB: several flushes to the compressors
    streamed = CompressedSizes()
    for start in range(0, len(data), 7_777):
        streamed.update(data[start : start + 7_777])
    assert streamed.sizes() == compressed_sizes(data)


def test_unigram_nll_is_add_one_smoothed() -> None:
    counts = [0, 0, 3, 1]  # N = 4 training tokens, V = 4: p = (c + 1) / 8
    tokens = np.array([1, 2, 3, 0])  # the start id is never predicted: targets 2, 3, 0
    expected = -(math.log(4 / 8) + math.log(2 / 8) + math.log(1 / 8))
    assert unigram_nll(tokens, counts) == pytest.approx(expected)
    assert unigram_nll(np.array([1]), counts) == 0.0


def test_token_counts_are_checked_before_use() -> None:
    assert check_token_counts([1, 2, 3], 3) is None
    assert "no training.token_counts" in check_token_counts(None, 3)
    assert "one count per token" in check_token_counts([1, 2], 3)
    assert "not counts" in check_token_counts([1, -2, 3], 3)
    assert "not counts" in check_token_counts([1, True, 3], 3)
    report = baselines(np.array([1, 2]), 10, 10, {"gzip": 5}, None, 3)
    assert report["unigram"] is None and "token_counts" in report["unigram_note"]
    assert report["gzip"] == {"compressed_bytes": 5, "bits_per_byte": 4.0, "bits_per_char": 4.0}


def test_combined_baselines_weigh_files_by_size() -> None:
    one = {"bytes": 100, "chars": 100, "tokens": 50, "baselines": baselines(np.array([1, 2, 2]), 100, 100, {"gzip": 50, "bz2": 40, "xz": 45}, [1, 1, 1], 3)}
    two = {"bytes": 300, "chars": 300, "tokens": 150, "baselines": baselines(np.array([1, 0]), 300, 300, {"gzip": 60, "bz2": 70, "xz": 65}, [1, 1, 1], 3)}
    total = combine_baselines([one, two])
    assert total["gzip"]["bits_per_byte"] == pytest.approx(8 * 110 / 400)
    unigram_bits = one["baselines"]["unigram"]["bits_per_byte"] * 100 + two["baselines"]["unigram"]["bits_per_byte"] * 300
    assert total["unigram"]["bits_per_byte"] == pytest.approx(unigram_bits / 400)


# -- per-token surprisal -------------------------------------------------------------------------------


def _random_model(cell: str = "lstm", vocab: int = 120):
    from lstmgen.config import ModelConfig
    from lstmgen.model import LSTMLanguageModel

    torch.manual_seed(3)
    model = LSTMLanguageModel(ModelConfig(vocab_size=vocab, embedding_size=24, hidden_size=24, num_layers=2, dropout=0.0, cell=cell))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


def test_token_surprisal_sums_to_the_evaluation_nll() -> None:
    model = _random_model()
    tokens = np.concatenate([[1], np.random.default_rng(0).integers(3, 120, 300)])
    found = token_surprisal(model, tokens, top_k=4, seq_len=64)
    nll, count = total_nll(model, tokens, num_streams=1)
    assert len(found.surprisal_bits) == count == 300
    assert found.nll == pytest.approx(nll, rel=1e-5)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(tokens[None].astype(np.int64)))
    probs = torch.softmax(logits[0, :-1], dim=-1).double().numpy()
    assert np.array_equal(found.top_ids[:, 0], probs.argmax(axis=1))
    assert np.allclose(found.top_probs, np.take_along_axis(probs, found.top_ids, axis=1), atol=1e-6)
    assert np.all(np.diff(found.top_probs, axis=1) <= 1e-12)  # most likely first
    assert np.allclose(found.surprisal_bits, -np.log2(probs[np.arange(300), tokens[1:]]), atol=1e-4)


# -- the command line ------------------------------------------------------------------------------------


def test_eval_reports_baselines_in_json_and_table(fast_cli, tiny_bundle: Path, held_out: Path) -> None:
    result = fast_cli("eval", "-m", tiny_bundle, held_out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    data = held_out.read_bytes()
    found = report["baselines"]
    assert found["gzip"]["bits_per_byte"] == pytest.approx(8 * len(gzip.compress(data, 9, mtime=0)) / len(data))
    assert found["bz2"]["bits_per_byte"] == pytest.approx(8 * len(bz2.compress(data, 9)) / len(data))
    assert found["xz"]["bits_per_byte"] == pytest.approx(8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data))
    assert found["xz"]["bits_per_char"] == pytest.approx(found["xz"]["bits_per_byte"] * len(data) / len(held_out.read_text()))
    # The unigram model of the bundle's own training counts, recomputed from the bundle.
    import lstmgen

    lm = lstmgen.load(tiny_bundle)
    counts = lm.meta["training"]["token_counts"]
    assert len(counts) == lm.tokenizer.vocab_size and sum(counts) > 0
    tokens = np.array([lm.tokenizer.bos_id] + lm.tokenizer.encode(HELD_OUT))
    assert found["unigram"]["bits_per_byte"] == pytest.approx(unigram_nll(tokens, counts) / math.log(2) / len(data))
    assert found["unigram"]["nll"] == pytest.approx(unigram_nll(tokens, counts) / report["tokens"])

    table = fast_cli("eval", "-m", tiny_bundle, held_out)
    assert table.returncode == 0, table.stderr
    for label in ("bits per byte, lower is better", "this model", "unigram", "gzip -9", "bz2 -9", "xz -9e", f"{found['xz']['bits_per_byte']:.4f}"):
        assert label in table.stderr, table.stderr


def test_eval_several_files_has_total_baselines(fast_cli, tiny_bundle: Path, held_out: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.txt"
    other.write_text(HELD_OUT[:900])
    result = fast_cli("eval", "-m", tiny_bundle, held_out, other, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    sizes = [len(gzip.compress(p.read_bytes(), 9, mtime=0)) for p in (held_out, other)]
    total_bytes = held_out.stat().st_size + other.stat().st_size
    assert report["total"]["baselines"]["gzip"]["bits_per_byte"] == pytest.approx(8 * sum(sizes) / total_bytes)
    assert all(f["baselines"]["unigram"] for f in report["files"])


def test_eval_without_token_counts_says_so_and_omits_the_unigram(fast_cli, bundle_without_counts: Path, held_out: Path) -> None:
    result = fast_cli("eval", "-m", bundle_without_counts, held_out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baselines"]["unigram"] is None and "token_counts" in report["baselines"]["unigram_note"]
    assert report["baselines"]["xz"]["bits_per_byte"] > 0
    assert "no training.token_counts" in result.stderr
    table = fast_cli("eval", "-m", bundle_without_counts, held_out)
    assert table.returncode == 0 and "no training.token_counts" in table.stderr
    assert "unigram" not in table.stderr.split("bits per byte, lower is better")[1] and "xz -9e" in table.stderr


def test_eval_no_baselines(fast_cli, tiny_bundle: Path, held_out: Path) -> None:
    result = fast_cli("eval", "-m", tiny_bundle, held_out, "--json", "--no-baselines")
    assert result.returncode == 0 and "baselines" not in json.loads(result.stdout)


def test_per_token_json_lines(fast_cli, tiny_bundle: Path, held_out: Path) -> None:
    result = fast_cli("eval", "-m", tiny_bundle, held_out, "--per-token", "--top-k-alternatives", "3")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    summary = json.loads(fast_cli("eval", "-m", tiny_bundle, held_out, "--json").stdout)
    assert len(records) == summary["tokens"]
    assert [r["index"] for r in records] == list(range(len(records)))
    assert "".join(r["text"] for r in records) == HELD_OUT  # no byte pieces in this text
    assert sum(r["surprisal_bits"] for r in records) * math.log(2) / len(records) == pytest.approx(summary["nll"], rel=1e-4)
    for record in records[:50]:
        assert set(record) == {"index", "id", "text", "surprisal_bits", "prob", "alternatives"}
        assert record["prob"] == pytest.approx(2 ** -record["surprisal_bits"], rel=1e-3)
        alternatives = record["alternatives"]
        assert len(alternatives) == 3 and [a["prob"] for a in alternatives] == sorted((a["prob"] for a in alternatives), reverse=True)
        assert all(set(a) == {"id", "text", "prob"} for a in alternatives)
        if record["id"] not in [a["id"] for a in alternatives]:
            assert record["prob"] <= alternatives[-1]["prob"] * 1.001
    assert "bits per byte" in result.stderr  # the tables go to stderr; stdout is only JSON lines


def test_per_token_marks_partial_characters_with_their_bytes(fast_cli, tiny_bundle: Path, tmp_path: Path) -> None:
    text = tmp_path / "emoji.txt"
    text.write_text("ROMEO: 🦜 hi\n")  # the parrot is not in the vocabulary: four byte pieces
    result = fast_cli("eval", "-m", tiny_bundle, text, "--per-token", "--top-k-alternatives", "0")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    raw = [r for r in records if "bytes" in r]
    assert b"".join(bytes.fromhex(r["bytes"]) for r in raw) == "🦜".encode()
    assert all(r["alternatives"] == [] for r in records)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-token", "--json"], "drop --json"),
        (["--per-token", "--heatmap"], "both write to stdout"),
        (["--heatmap", "--json"], "drop --json"),
        (["--top-k-alternatives", "101"], "--top-k-alternatives must be"),
        (["--per-token", "--streams", "4"], "drop --streams"),
        (["--html", "/nonexistent-dir/page.html"], "does not exist"),
    ],
)
def test_eval_refuses_conflicting_options(fast_cli, tiny_bundle: Path, held_out: Path, args: list[str], message: str) -> None:
    result = fast_cli("eval", "-m", tiny_bundle, held_out, *args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_heatmap_needs_one_file(fast_cli, tiny_bundle: Path, held_out: Path) -> None:
    result = fast_cli("eval", "-m", tiny_bundle, held_out, held_out, "--heatmap")
    assert result.returncode == 2 and "one file" in result.stderr


MARKS = "‹›«»↵"


def test_heatmap_without_colour_marks_surprising_tokens(fast_cli, tiny_bundle: Path, held_out: Path) -> None:
    result = fast_cli("eval", "-m", tiny_bundle, held_out, "--heatmap")  # NO_COLOR=1, stdout is a file
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    body, legend = result.stdout.rsplit("\n\nlegend: ", 1)
    assert "‹text› surprising: 4–8 bits" in legend and "«text» very surprising" in legend and "↵" in legend
    assert body.translate({ord(c): None for c in MARKS}) == HELD_OUT.rstrip("\n")
    # Exactly the marks the per-token surprisals call for (this text has no multi-token pieces).
    records = [json.loads(line) for line in fast_cli("eval", "-m", tiny_bundle, held_out, "--per-token").stdout.splitlines()]
    expected = []
    for record in records:
        text, bits = record["text"], record["surprisal_bits"]
        opener, closer = ("«", "»") if bits >= 8 else ("‹", "›") if bits >= 4 else ("", "")
        if opener and text == "\n":
            expected.append(f"{opener}↵{closer}\n")
        else:
            expected.append(f"{opener}{text}{closer}")
    assert body == "".join(expected).rstrip("\n")


def test_plain_marks_follow_the_thresholds() -> None:
    from lstmgen.visualize import Span, plain_text, surprisal_scale

    spans = [Span("calm", 0.2), Span(" mild", 3.9), Span(" odd", 4.0), Span("\n", 5.0), Span("wild", 8.5), Span("\n", 1.0), Span(" end", 12.5)]
    assert plain_text(spans, surprisal_scale()) == "calm mild‹ odd›‹↵›\n«wild»\n« end»"


def test_heatmap_in_colour_on_a_terminal(fast_cli, tiny_bundle: Path, held_out: Path) -> None:
    env = {"NO_COLOR": "", "FORCE_COLOR": "1", "TERM": "xterm-256color", "COLORTERM": "truecolor", "COLUMNS": "100"}
    result = fast_cli("eval", "-m", tiny_bundle, held_out, "--heatmap", env=env)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" in result.stdout and "48;2;" in result.stdout  # 24-bit backgrounds
    assert "surprisal (bits)" in result.stdout and "12+" in result.stdout
    plain = _strip_ansi(result.stdout)
    assert "‹" not in plain and "«" not in plain
    assert plain.replace("↵", "").startswith(HELD_OUT[:200])


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# -- the HTML page --------------------------------------------------------------------------------------






@pytest.fixture(scope="module")
def heatmap_page(fast_cli, tiny_bundle: Path, held_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("page") / "heat map.html"
    result = fast_cli("eval", "-m", tiny_bundle, held_out, "--html", page)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and f"wrote {page}" in result.stderr
    return page


def test_html_heatmap_is_self_contained(heatmap_page: Path) -> None:
    parser = check_page(heatmap_page, HELD_OUT)
    page = heatmap_page.read_text()
    data = json.loads(page.split('id="lstmgen-data">')[1].split("</script>")[0])
    assert len(data["spans"]) == parser.spans > 100
    first = data["spans"][0]
    assert first["text"] == HELD_OUT[: len(first["text"])] and first["bits"] > 0 and len(first["alternatives"]) == 5
    assert not list(heatmap_page.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_html_escapes_text_that_looks_like_markup(fast_cli, tiny_bundle: Path, tmp_path: Path) -> None:
    text = 'a <b>bold</b> claim & a </script><script>alert(1)</script> "quote"\n'
    source = tmp_path / "markup.txt"
    source.write_text(text)
    page = tmp_path / "markup.html"
    assert fast_cli("eval", "-m", tiny_bundle, source, "--html", page).returncode == 0
    check_page(page, text)
    assert "<script>alert(1)" not in page.read_text()


# -- in a real browser ------------------------------------------------------------------------------------









def test_png_reader_agrees_with_pillow(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("RGB", (37, 11))
    for x in range(37):
        for y in range(11):
            image.putpixel((x, y), (x * 7 % 256, y * 23 % 256, (x * y) % 256))
    path = tmp_path / "check.png"
    image.save(path)
    width, height, rows = read_png(path)
    assert (width, height) == (37, 11)
    assert rows[5][3 * 20 : 3 * 21] == bytes(image.getpixel((20, 5)))


@needs_chromium
def test_heatmap_page_renders_in_chromium(heatmap_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "heatmap.png"
    done = chromium(tmp_path, heatmap_page.as_uri() + "#span=30", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    width, height, rows = read_png(shot)
    assert (width, height) == (1000, 700)
    counts = colour_counts(rows)
    total = sum(counts.values())
    assert len(counts) > 50, "the screenshot is (nearly) blank"
    assert max(counts.values()) < 0.9 * total
    # Surprisal backgrounds are yellow to dark orange: red high, blue well below green.
    warm = sum(n for (r, g, b), n in counts.items() if r > 140 and b < g - 40 and r > b + 60)
    assert warm > 0.02 * total, "no heatmap colours on the page"
    # The tooltip pinned by #span=30 is the dark box: the script ran.
    dark = sum(n for (r, g, b), n in counts.items() if r < 50 and g < 50 and b < 50)
    assert dark > 0.005 * total


@needs_chromium
def test_heatmap_page_script_runs_in_chromium(heatmap_page: Path, tmp_path: Path) -> None:
    done = chromium(tmp_path, heatmap_page.as_uri() + "#span=30", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    spans = len(re.findall(r'class="t( pinned)?"', dom))
    assert f'data-ready="{spans}"' in dom and spans > 100  # the script counted every span
    tip = dom.split('id="tip"')[1].split("</div>\n")[0]
    assert "hidden" not in tip.split(">")[0]
    assert "surprisal" in tip and "probability" in tip and "the model expected" in tip and "%" in tip
