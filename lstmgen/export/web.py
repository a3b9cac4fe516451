"""One self-contained HTML page that generates from a model in the browser (`lstmgen export --format web`).

The page holds everything, so it works from `file://` with no network access (its
Content-Security-Policy forbids any): the weights (deflate-compressed byte planes, base64), the
tokenizer's pieces, scores and types as JSON, and a small JavaScript runtime (assets/poet.js)
that encodes prompts exactly as lstmgen does, runs the cell's equations in float64 over the
float32 values of the weights, samples with temperature / top-k / top-p from a seeded generator,
and streams the decoded text. With the bundle's own float16 (or float32) weights its greedy text
is lstmgen's token for token (docs/export.md says why, and the tests check it in chromium).
"""

from __future__ import annotations

import base64
import html
import json
import re
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LstmgenError
from .spm import read_piece_table

#: Base64 is written in lines of this many characters (the page strips white space before decoding).
LINE = 1024
#: A model writes Chinese (and its page offers poem forms) when this many pieces are single Han characters.
HAN_PIECES = 1000
HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))


def writes_chinese(pieces: list[str], types: list[int]) -> bool:
    """Whether the page offers Chinese poem forms: many Han pieces, and the marks a poem needs."""
    from .spm import NORMAL, USER_DEFINED

    own = {piece for piece, kind in zip(pieces, types) if kind in (NORMAL, USER_DEFINED)}
    han = sum(len(p) == 1 and any(low <= ord(p) <= high for low, high in HAN_RANGES) for p in own)
    return han >= HAN_PIECES and {"，", "。", "\n"} <= own


#: What each weight encoding stores, and whether the values are the bundle's own when it holds that dtype.
ENCODINGS = {"float16": "f16", "float32": "f32", "int8": "i8"}


def pack_weights(tensors: dict[str, Any], encoding: str) -> tuple[bytes, list[dict[str, Any]]]:
    """The tensors as one blob of byte planes (every tensor's first bytes, then its second bytes...) and its layout.

    Byte planes compress better than interleaved values: the float16 high bytes (sign, exponent)
    shrink to about 70 %, the low bytes hardly at all. int8 stores each 2-D tensor as int8 values
    with a float32 scale per row (max |w| / 127), and 1-D tensors as float32.
    """
    import torch

    parts: list[bytes] = []
    layout: list[dict[str, Any]] = []
    offset = 0

    def add(data: bytes) -> int:
        nonlocal offset
        start = offset
        parts.append(data)
        offset += len(data)
        return start

    def planes(array: np.ndarray) -> bytes:
        size = array.dtype.itemsize
        return np.ascontiguousarray(array.reshape(-1).view(np.uint8).reshape(-1, size).T).tobytes()

    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu()
        shape = list(tensor.shape)
        entry: dict[str, Any] = {"name": name, "shape": shape}
        if encoding == "float16":
            entry.update(kind="f16", offset=add(planes(tensor.to(torch.float16).numpy())))
        elif encoding == "int8" and tensor.dim() == 2:
            values = tensor.float().numpy()
            scales = (np.abs(values).max(axis=1) / 127.0).astype(np.float32)
            scales[scales == 0] = 1.0
            ints = np.clip(np.rint(values / scales[:, None]), -127, 127).astype(np.int8)
            entry.update(kind="i8", offset=add(ints.tobytes()), scales=add(planes(scales)))
        else:
            entry.update(kind="f32", offset=add(planes(tensor.float().numpy())))
        layout.append(entry)
    return b"".join(parts), layout


def page_spec(bundle: Any, name: str, about: list[str], encoding: str) -> dict[str, Any]:
    """Everything the page's runtime reads besides the weights: the network's sizes and the tokenizer."""
    from ..data import start_ids

    config = bundle.model_config
    tokenizer = bundle.tokenizer
    table = read_piece_table(tokenizer.model_proto)
    if len(table.pieces) != tokenizer.vocab_size or any(
        table.token_bytes(i) != tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)
    ):
        raise LstmgenError("the bundle's tokenizer reads differently without SentencePiece; it cannot go into a page")
    settings = (bundle.meta.get("tokenizer") or {}).get("settings") or {}
    documents = settings.get("documents", "file")
    return {
        "format": "lstmgen-web",
        "format_version": 1,
        "name": name,
        "about": about,
        "model": {
            "cell": config.cell,
            "vocab_size": config.vocab_size,
            "embedding_size": config.embedding_size,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "tie_weights": config.tie_weights,
        },
        "tokenizer": {
            "model_type": table.model_type,
            "pieces": table.pieces,
            "scores": table.scores,
            "types": table.types,
            "escaped": table.escaped,
            "byte_ids": table.byte_ids(),
            "start_ids": start_ids(tokenizer, documents),
            "end_of_text_id": tokenizer.eos_id,
            "never_sample_ids": [i for i in tokenizer.special_ids if i != tokenizer.eos_id],
            "documents": documents,
        },
        "weights": {"encoding": encoding},
        "poems": writes_chinese(table.pieces, table.types),
    }


def describe(bundle: Any, source: Path, encoding: str, exact: bool) -> list[str]:
    """The lines under the page's title: the model, its training, its tokenizer, its weights."""
    from ..registry import describe_bundle

    lines = [describe_bundle(source)]
    training = bundle.meta.get("training") or {}
    files = [str(f["name"]) for f in training.get("corpus_files") or [] if isinstance(f, dict) and f.get("name")]
    if files or training.get("steps"):
        trained = "trained"
        if files:
            trained += " on " + ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        if isinstance(training.get("steps"), int):
            trained += f" for {training['steps']:,} steps"
        if isinstance(training.get("elapsed_seconds"), (int, float)):
            trained += f" ({training['elapsed_seconds'] / 60:.0f} min on {training.get('device', 'cpu')})"
        lines.append(trained)
    settings = (bundle.meta.get("tokenizer") or {}).get("settings") or {}
    documents = settings.get("documents", "file")
    table_type = read_piece_table(bundle.tokenizer.model_proto).model_type
    line = f"tokenizer: SentencePiece {table_type}, {bundle.tokenizer.vocab_size:,} pieces"
    if documents == "blank-line":
        line += "; trained on blank-line documents, so every prompt starts a new one"
    lines.append(line)
    stored = (bundle.meta.get("weights") or {}).get("dtype", "float32")
    lines.append(
        f"weights: {encoding}"
        + (f", exactly the bundle's {stored} values" if exact else f" (the bundle holds {stored})")
    )
    return lines


def build_page(bundle: Any, source: Path, encoding: str = "float16") -> str:
    """The page's HTML for a loaded bundle (lstmgen.bundle.Bundle)."""
    from ..version import __version__

    if encoding not in ENCODINGS:
        raise LstmgenError(f"unknown page weights {encoding!r}; use float16, float32 or int8")
    stored = (bundle.meta.get("weights") or {}).get("dtype", "float32")
    exact = encoding == "float32" or (encoding == "float16" and stored == "float16")
    name = source.name.removesuffix(".lstmgen") or source.name
    spec = page_spec(bundle, name, describe(bundle, source, encoding, exact), encoding)
    raw, layout = pack_weights(bundle.tensors, encoding)
    spec["weights"].update(size=len(raw), tensors=layout, exact=exact)
    encoded = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    script = resources.files(__package__).joinpath("assets/poet.js").read_text(encoding="utf-8")
    template = resources.files(__package__).joinpath("assets/page.html").read_text(encoding="utf-8")
    if "</script" in script.lower() or "<!--" in script:
        raise AssertionError("poet.js must not hold </script or <!--")  # pragma: no cover - a packaging mistake
    exactness = (
        "At temperature 0 it writes what <code>lstmgen sample --temp 0</code> writes, token for token."
        if exact
        else f"Its weights are stored as {encoding}, so its text may differ a little from <code>lstmgen sample</code>'s."
    )
    values = {
        "VERSION": html.escape(__version__),
        "TITLE": html.escape(f"{name} · lstmgen"),
        "ABOUT": "".join(f"<div>{html.escape(line)}</div>" for line in spec["about"]),
        "PROMPT": "",
        "EXACTNESS": exactness,
        # JSON with every "<" escaped, so that no "</script>" or "<!--" can end or disturb the element.
        "SPEC": json.dumps(spec, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c"),
        "WEIGHTS": "\n".join(encoded[i : i + LINE] for i in range(0, len(encoded), LINE)),
        "SCRIPT": script,
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda match: values[match.group(1)], template)


def write_page(source: Path, output: Path, encoding: str = "float16") -> dict[str, Any]:
    """Build the page for the bundle at `source` and write it atomically through the output guard."""
    from ..bundle import load_bundle
    from ..fsutil import HTML, atomic_writer

    bundle = load_bundle(source)
    data = build_page(bundle, source, encoding).encode("utf-8")
    with atomic_writer(output, HTML, "page") as handle:
        handle.write(data)
    return {"format": "web", "files": {str(output): len(data)}, "weights": encoding, "cell": bundle.model_config.cell}
