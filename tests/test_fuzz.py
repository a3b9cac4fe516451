"""Fuzzing: mutated valid bundles into the loader, arbitrary text into the tokenizer.

The only outcomes allowed are success or `LstmgenError` (the project's own, one-line error). CI
runs a bounded number of examples (LSTMGEN_FUZZ_EXAMPLES, default 150 per test); the longer run
is `python benchmarks/fuzz_loader.py --minutes N`, which drives the same mutators with a plain
random generator in child processes, so that even a native crash is caught and saved.

The mutators take a `Chooser`, so the same code serves hypothesis (which shrinks a failure to a
small example) and the benchmark's random generator.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmgen.errors import LstmgenError

EXAMPLES = int(os.environ.get("LSTMGEN_FUZZ_EXAMPLES", "150"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MEMBERS = ("lstmgen.json", "tokenizer.model", "model.safetensors")


# -- what is fuzzed ---------------------------------------------------------------------------------


def build_seed_bundle(directory: Path) -> bytes:
    """A small valid bundle: a 400-piece tokenizer and a 1×8 LSTM (about 25 kB)."""
    import torch

    from lstmgen.bundle import save_bundle
    from lstmgen.config import ModelConfig, TokenizerConfig
    from lstmgen.model import LSTMLanguageModel
    from lstmgen.tokenizer import train_tokenizer

    text = (Path(__file__).resolve().parent.parent / "corpora" / "tinyshakespeare.txt").read_text()[:40_000]
    tokenizer = train_tokenizer(text.splitlines(keepends=True), TokenizerConfig(vocab_size=400))
    torch.manual_seed(0)
    model = LSTMLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=8, hidden_size=8, num_layers=1))
    path = directory / "seed.lstmgen"
    save_bundle(path, model, tokenizer, training={"steps": 1, "best_val_loss": 5.0, "tokens_seen": 10})
    return path.read_bytes()


def check_bundle(data: bytes, path: Path) -> str:
    """Load `data` as a bundle: 'ok' or 'refused'; any other exception propagates (a finding)."""
    from lstmgen.api import LanguageModel
    from lstmgen.bundle import load_bundle

    path.write_bytes(data)
    try:
        bundle = load_bundle(path)
    except LstmgenError as error:
        message = str(error)
        assert message and "\n" not in message
        return "refused"
    # Whatever loads must also work: build the model, generate a few tokens, and show it with `info`.
    LanguageModel(bundle).generate("To be", max_tokens=3, temperature=0)
    _show_info(path)
    return "ok"


def _show_info(path: Path) -> None:
    """`lstmgen info` and `info --json` on a bundle that loaded: no crash, and strict JSON."""
    import contextlib
    import logging

    from lstmgen.cli import app

    def no_constants(name: str) -> None:
        raise AssertionError(f"info --json wrote {name}")

    logger = logging.getLogger("lstmgen")
    saved = (list(logger.handlers), logger.propagate, logger.level)  # the CLI configures this logger; put it back
    summary, out, err = io.StringIO(), io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            with contextlib.redirect_stdout(summary):  # the summary is data too (stdout), but not JSON
                app(args=["info", str(path)], standalone_mode=False, prog_name="lstmgen")
            with contextlib.redirect_stdout(out):
                app(args=["info", str(path), "--json"], standalone_mode=False, prog_name="lstmgen")
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    assert summary.getvalue().startswith("model ")
    json.loads(out.getvalue(), parse_constant=no_constants)


def check_text(tokenizer: Any, text: str) -> None:
    try:
        ids = tokenizer.encode(text)
    except LstmgenError:
        return
    assert tokenizer.decode(ids) == text


# -- mutators --------------------------------------------------------------------------------------------


class Chooser:
    """The random decisions a mutator makes; backed by hypothesis `data` or by `random.Random`."""

    def __init__(self, integer: Callable[[int, int], int], raw: Callable[[int], bytes]) -> None:
        self.int = integer
        self.raw = raw

    @classmethod
    def from_hypothesis(cls, data: st.DataObject) -> Chooser:
        return cls(lambda lo, hi: data.draw(st.integers(lo, hi)), lambda n: data.draw(st.binary(min_size=n, max_size=n)))

    @classmethod
    def from_random(cls, rng: Any) -> Chooser:
        return cls(rng.randint, rng.randbytes)

    def pick(self, items: list | tuple) -> Any:
        return items[self.int(0, len(items) - 1)]


INTERESTING_NUMBERS = [0, 1, -1, 2, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63)]
INTERESTING_JSON: list[Any] = [None, True, False, 0, -1, 1.5, 1e308, -1e308, 2**70, "", "x" * 1000, "lstmgen-bundle", [], [1, 2], {}, {"a": {}},
                               "float16", "bfloat16", "int8", "gru", "lstm", 400, 401, 399]


def mutate_bytes(c: Chooser, data: bytes) -> bytes:
    """A few byte-level edits: overwrite, bit flip, insert, delete, duplicate, truncate, set to a boundary value."""
    buffer = bytearray(data)
    for _ in range(c.int(1, 4)):
        if not buffer:
            buffer.extend(c.raw(c.int(1, 16)))
            continue
        position = c.int(0, len(buffer) - 1)
        operation = c.int(0, 6)
        if operation == 0:
            buffer[position] = c.int(0, 255)
        elif operation == 1:
            buffer[position] ^= 1 << c.int(0, 7)
        elif operation == 2:
            buffer[position:position] = c.raw(c.int(1, 32))
        elif operation == 3:
            del buffer[position : position + c.int(1, 64)]
        elif operation == 4:
            end = min(len(buffer), position + c.int(1, 256))
            buffer[position:position] = buffer[position:end]
        elif operation == 5:
            del buffer[position:]
        else:
            width = c.pick([1, 2, 4, 8])
            value = c.pick(INTERESTING_NUMBERS) % (1 << (8 * width))
            buffer[position : position + width] = value.to_bytes(width, "little")
    return bytes(buffer)


def unzip(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(i.filename, archive.read(i)) for i in archive.infolist()]


def rezip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buffer.getvalue()


def _random_path(c: Chooser, value: Any, depth: int = 0) -> list:
    """A path of keys/indices into a JSON value, stopping at a random depth."""
    if depth > 4 or not isinstance(value, (dict, list)) or not value or c.int(0, 3) == 0:
        return []
    key = c.pick(sorted(value)) if isinstance(value, dict) else c.int(0, len(value) - 1)
    return [key, *_random_path(c, value[key], depth + 1)]


def mutate_json(c: Chooser, data: bytes) -> bytes:
    """Structural edits of a JSON document: replace, delete or add a value anywhere; or a textual edit."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return mutate_bytes(c, data)
    operation = c.int(0, 4)
    if operation == 4:
        text = json.dumps(document)
        token = c.pick(["1e999", "-1e999", "NaN", "Infinity", "1" * 5000, "[" * 2000, '"\\ud800"', "null", "1.0e-400"])
        position = c.int(0, len(text))
        return (text[:position] + token + text[position:]).encode()
    path = _random_path(c, document)
    if not path:
        return json.dumps(c.pick(INTERESTING_JSON)).encode() if c.int(0, 9) == 0 else json.dumps(document).encode()
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if operation == 0 or operation == 1:
        parent[last] = c.pick(INTERESTING_JSON)
    elif operation == 2 and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[c.pick(["extra", "format", "format_version", "vocab_size", "dtype", "cell"])] = c.pick(INTERESTING_JSON)
    elif isinstance(parent, list):
        parent.append(c.pick(INTERESTING_JSON))
    return json.dumps(document).encode()


def mutate_safetensors(c: Chooser, data: bytes) -> bytes:
    """Edits of a safetensors header (dtype, shape, offsets, length field) or of its data."""
    if len(data) < 8:
        return mutate_bytes(c, data)
    length = struct.unpack_from("<Q", data)[0]
    try:
        header = json.loads(data[8 : 8 + length])
        names = [n for n in header if n != "__metadata__"]
    except (ValueError, RecursionError):
        return mutate_bytes(c, data)
    body = data[8 + length :]
    operation = c.int(0, 5)
    if operation == 5 or not names:
        if c.int(0, 1):
            return struct.pack("<Q", c.pick(INTERESTING_NUMBERS) % (1 << 64)) + data[8:]
        return data[: 8 + length] + mutate_bytes(c, body)
    name = c.pick(names)
    entry = header[name]
    if operation == 0:
        entry["dtype"] = c.pick(["F32", "F16", "BF16", "F64", "I8", "U8", "I32", "I64", "BOOL", "F8_E4M3", "X"])
    elif operation == 1:
        entry["shape"] = [c.pick(INTERESTING_NUMBERS) % (1 << 64) if c.int(0, 3) == 0 else c.int(0, 600) for _ in range(c.int(0, 3))]
    elif operation == 2:
        entry["data_offsets"] = [c.int(0, len(body) + 8), c.int(0, len(body) + 8)]
    elif operation == 3:
        header[c.pick(["head.weight", "projection.weight", "rnn.weight_ih_l1", name + "x"])] = dict(entry)
    else:
        del header[name]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_bundle(c: Chooser, data: bytes) -> bytes:
    """One mutation of a whole bundle: raw bytes, one member's content, or the set of members."""
    strategy = c.int(0, 9)
    try:
        members = unzip(data) if strategy > 1 else []
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError, KeyError,
            zlib.error, lzma.LZMAError):
        members = []  # an earlier mutation broke the archive: keep mutating its bytes
    if not members:
        return mutate_bytes(c, data)
    if strategy <= 7:
        index = c.int(0, len(members) - 1)
        name, content = members[index]
        if name == "lstmgen.json" and strategy <= 5:
            content = mutate_json(c, content)
        elif name == "model.safetensors" and strategy <= 5:
            content = mutate_safetensors(c, content)
        else:
            content = mutate_bytes(c, content)
        members[index] = (name, content)
        return rezip(members)
    operation = c.int(0, 5)
    if operation == 0:
        del members[c.int(0, len(members) - 1)]
    elif operation == 1:
        members.append(c.pick(members))
    elif operation == 2:
        index = c.int(0, len(members) - 1)
        members[index] = (c.pick(["../" + members[index][0], "/" + members[index][0], members[index][0].upper(), "x"]), members[index][1])
    elif operation == 3:
        members.append((c.pick(["extra", "model.safetensors/", "data.pkl"]), c.raw(c.int(0, 64))))
    elif operation == 4:
        a, b = c.int(0, len(members) - 1), c.int(0, len(members) - 1)
        members[a], members[b] = (members[a][0], members[b][1]), (members[b][0], members[a][1])
    return rezip(members, c.pick([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))


# -- the tests -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_bundle(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_seed_bundle(tmp_path_factory.mktemp("fuzz-seed"))


def test_the_seed_bundle_loads(seed_bundle: bytes, tmp_path: Path) -> None:
    assert check_bundle(seed_bundle, tmp_path / "seed.lstmgen") == "ok"


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_bundles_load_or_are_refused(seed_bundle: bytes, tmp_path: Path, data: st.DataObject) -> None:
    mutated = mutate_bundle(Chooser.from_hypothesis(data), seed_bundle)
    check_bundle(mutated, tmp_path / "fuzzed.lstmgen")


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_metadata_loads_or_is_refused(seed_bundle: bytes, tmp_path: Path, data: st.DataObject) -> None:
    c = Chooser.from_hypothesis(data)
    members = dict(unzip(seed_bundle))
    members["lstmgen.json"] = mutate_json(c, members["lstmgen.json"])
    check_bundle(rezip(list(members.items())), tmp_path / "fuzzed.lstmgen")


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_weights_load_or_are_refused(seed_bundle: bytes, tmp_path: Path, data: st.DataObject) -> None:
    c = Chooser.from_hypothesis(data)
    members = dict(unzip(seed_bundle))
    members["model.safetensors"] = mutate_safetensors(c, members["model.safetensors"])
    check_bundle(rezip(list(members.items())), tmp_path / "fuzzed.lstmgen")


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_tokenizer_models_load_or_are_refused(seed_bundle: bytes, tmp_path: Path, data: st.DataObject) -> None:
    c = Chooser.from_hypothesis(data)
    members = dict(unzip(seed_bundle))
    members["tokenizer.model"] = mutate_bytes(c, members["tokenizer.model"])
    check_bundle(rezip(list(members.items())), tmp_path / "fuzzed.lstmgen")


@FUZZ_SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text_round_trips(tokenizer, text: str) -> None:
    check_text(tokenizer, text)


@FUZZ_SETTINGS
@given(text=st.text(st.characters(codec="utf-8"), max_size=40).map(lambda s: s * 50))
def test_long_repetitive_text_round_trips(tokenizer, text: str) -> None:
    check_text(tokenizer, text)


def test_text_with_a_lone_surrogate_is_refused_cleanly(tokenizer) -> None:
    check_text(tokenizer, "ab\udcff")


def test_negative_token_ids_are_refused(tokenizer) -> None:
    with pytest.raises(LstmgenError):
        tokenizer.decode([-1])


@FUZZ_SETTINGS
@given(ids=st.lists(st.integers(min_value=0, max_value=2**70), max_size=50))
def test_arbitrary_ids_decode_or_are_refused(tokenizer, ids: list[int]) -> None:
    try:
        text = tokenizer.decode(ids)
    except LstmgenError:
        assert any(i >= tokenizer.vocab_size for i in ids)
        return
    assert isinstance(text, str)
