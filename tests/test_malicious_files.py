"""Malicious files: refused with a clear message, no code run, memory bounded, nothing written outside.

Each file is handed to the real command line in a process of its own (see `fast_cli` in
conftest.py) whose address space is capped with RLIMIT_AS, so a loader that decompressed a bomb or
trusted a lying header would die of MemoryError (exit 1) instead of the clean exit 2 asserted here.
Pickle payloads create a marker file when unpickled; `test_the_payloads_are_live` shows that they
really do, and every other test shows that lstmgen never lets them.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import assert_refused, members_of, snapshot, write_zip

#: The address-space cap for every run: a Python with torch imported uses about 0.7 GB of it.
MEMORY_CAP = 3 << 30


class Payload:
    """Unpickling this object creates (opens for writing) the file `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_save_payload(marker: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"embedding.weight": torch.zeros(2, 2), "evil": Payload(marker)}, buffer)
    return buffer.getvalue()


def pickle_payload(marker: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps({"evil": Payload(marker)}, protocol=protocol)


@pytest.fixture
def env(tmp_path: Path, tiny_bundle: Path, small_corpus: Path):
    """A workspace (good corpus and bundle), a marker path outside it, and the good members."""
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(small_corpus, ws / "corpus.txt")
    shutil.copy(tiny_bundle, ws / "model.lstmgen")
    markers = tmp_path / "markers"
    markers.mkdir()
    return ws, markers / "PAYLOAD-RAN", members_of(tiny_bundle)


def run_refused(fast_cli, ws: Path, marker: Path, args: list[str], fragment: str, progress_ok: bool = False) -> None:
    """Run with memory capped; assert exit 2 with one line, no payload run, nothing changed around ws."""
    outside = ws.parent
    before = snapshot(outside)
    result = fast_cli(*args, cwd=ws, rlimits={"RLIMIT_AS": MEMORY_CAP}, timeout=120)
    assert_refused(result, fragment, progress_ok)
    assert not marker.exists(), "the pickle payload ran"
    assert snapshot(outside) == before, "files changed in or beside the workspace"


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """Positive control: unpickling these payloads does run code (in a throwaway process)."""
    for name, make, load in (
        ("torch", torch_save_payload, "import torch, sys; torch.load(sys.argv[1], weights_only=False)"),
        ("pickle", pickle_payload, "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"),
    ):
        marker = tmp_path / f"ran-{name}"
        path = tmp_path / f"{name}.bin"
        path.write_bytes(make(marker))
        subprocess.run([sys.executable, "-c", load, str(path)], capture_output=True, timeout=120, cwd=tmp_path)
        assert marker.exists(), f"the {name} payload did not run even when unpickled; the tests below would prove nothing"


# -- pickles where lstmgen expects its own formats ---------------------------------------------------


@pytest.mark.parametrize(
    "where, command, fragment",
    [
        ("whole-torch", "info", "unexpected member"),
        ("whole-pickle", "info", "not an lstmgen bundle"),
        ("weights-torch", "sample", "model.safetensors"),
        ("weights-pickle", "info", "model.safetensors"),
        ("weights-pickle-protocol-0", "eval", "model.safetensors"),
        ("tokenizer-pickle", "info", "SentencePiece"),
        ("meta-pickle", "info", "not valid JSON"),
        ("init-from-torch", "init", "model.safetensors"),
        ("directory-weights-torch", "info", "model.safetensors"),
    ],
)
def test_pickles_in_a_bundle_never_run(where: str, command: str, fragment: str, env, fast_cli) -> None:
    ws, marker, members = env
    payload = torch_save_payload(marker) if "torch" in where else pickle_payload(marker, 0 if "protocol-0" in where else 4)
    bundle = ws / "evil.lstmgen"
    if where.startswith("whole"):
        bundle.write_bytes(payload)
    elif where.startswith("directory"):
        bundle = ws / "evil-dir"
        bundle.mkdir()
        for name, data in members.items():
            (bundle / name).write_bytes(payload if name == "model.safetensors" else data)
    else:
        target = {"weights": "model.safetensors", "init": "model.safetensors", "tokenizer": "tokenizer.model", "meta": "lstmgen.json"}
        write_zip(bundle, {**members, target[where.split("-")[0]]: payload})
    args = {
        "info": ["info", str(bundle)],
        "sample": ["sample", "-m", str(bundle), "--max-tokens", "3"],
        "eval": ["eval", "-m", str(bundle), str(ws / "corpus.txt")],
        "init": ["train", str(ws / "corpus.txt"), "-o", str(ws / "new.lstmgen"), "--init-from", str(bundle), "--max-steps", "2"],
    }[command]
    run_refused(fast_cli, ws, marker, args, fragment)


@pytest.mark.parametrize("where", ["checkpoint-torch", "checkpoint-tensors-pickle"])
def test_pickles_in_a_checkpoint_never_run(where: str, env, fast_cli, tiny_bundle: Path) -> None:
    ws, marker, _ = env
    shutil.copy(tiny_bundle, ws / "run.lstmgen")
    shutil.copytree(tiny_bundle.with_name(tiny_bundle.name + ".run"), ws / "run.lstmgen.run")
    checkpoint = ws / "run.lstmgen.run" / "checkpoint.ckpt"
    if where == "checkpoint-torch":
        checkpoint.write_bytes(torch_save_payload(marker))
        fragment = "unexpected member"
    else:
        parts = members_of(checkpoint)
        parts["tensors.safetensors"] = pickle_payload(marker)
        write_zip(checkpoint, parts)
        fragment = "tensors.safetensors"
    run_refused(fast_cli, ws, marker, ["train", str(ws / "corpus.txt"), "-o", str(ws / "run.lstmgen"), "--resume", "--max-steps", "30"],
                fragment, progress_ok=True)


# -- paths that point elsewhere ----------------------------------------------------------------------


@pytest.mark.parametrize("evil_name", ["../escaped.txt", "../../escaped.txt", "{abs}", "sub/../../escaped.txt", "..\\escaped.txt", "./lstmgen.json"])
def test_member_names_that_escape_are_refused_and_nothing_is_written(evil_name: str, env, fast_cli, tmp_path: Path) -> None:
    ws, marker, members = env
    absolute = tmp_path / "absolute-escape.txt"
    name = evil_name.replace("{abs}", str(absolute))
    bundle = ws / "traversal.lstmgen"
    # zipfile strips a leading "/" when writing, so write a same-length name and patch it in.
    stand_in = "X" + name[1:] if name.startswith("/") else name
    write_zip(bundle, [*members.items(), (stand_in, b"written outside the workspace")])
    bundle.write_bytes(bundle.read_bytes().replace(stand_in.encode(), name.encode()))
    with zipfile.ZipFile(bundle) as archive:
        assert name in archive.namelist()
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "unexpected member")
    assert not absolute.exists()
    assert not list(tmp_path.parent.glob("escaped.txt")) and not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_directory_bundle_member_linked_to_an_endless_device(target: str, env, fast_cli) -> None:
    """Reading /dev/zero would never end; a member must be a regular file."""
    ws, marker, members = env
    bundle = ws / "linked"
    bundle.mkdir()
    for name, data in members.items():
        (bundle / name).write_bytes(data)
    (bundle / "model.safetensors").unlink()
    (bundle / "model.safetensors").symlink_to(target)
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "not a regular file")


def test_zip_member_stored_as_a_symlink_is_just_bytes(env, fast_cli) -> None:
    """A zip entry flagged as a symlink to /etc/passwd is read as its own bytes (the link text), never followed."""
    ws, marker, members = env
    bundle = ws / "symlink.lstmgen"
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members.items():
            if name == "model.safetensors":
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (0o120777 << 16)  # S_IFLNK
                archive.writestr(info, "/etc/passwd")
            else:
                archive.writestr(name, data)
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "model.safetensors")


# -- zip bombs -----------------------------------------------------------------------------------------


def _patch_central_size(path: Path, member: str, uncompressed: int) -> None:
    """Rewrite the uncompressed size that the zip's central directory declares for `member`."""
    data = bytearray(path.read_bytes())
    position = 0
    while True:
        position = data.index(b"PK\x01\x02", position)
        name_length = struct.unpack_from("<H", data, position + 28)[0]
        if bytes(data[position + 46 : position + 46 + name_length]) == member.encode():
            struct.pack_into("<I", data, position + 24, uncompressed)
            break
        position += 4
    path.write_bytes(bytes(data))


def _write_deflated(path: Path, members: dict[str, bytes], name: str, chunks) -> None:
    """A bundle whose member `name` is the deflated concatenation of `chunks` (streamed, never held in memory)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            if member == name:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=True) as handle:
                    for chunk in chunks:
                        handle.write(chunk)
            else:
                archive.writestr(member, data)


def test_declared_size_of_4_gb_is_refused_before_reading(env, fast_cli) -> None:
    ws, marker, members = env
    bundle = ws / "declared.lstmgen"
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data, zipfile.ZIP_DEFLATED)
    _patch_central_size(bundle, "model.safetensors", 0xFFFF0000)
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "too large")


def test_real_half_gigabyte_of_zeros_is_refused_without_inflating_it(env, fast_cli) -> None:
    ws, marker, members = env
    bundle = ws / "bomb.lstmgen"
    zeros = bytes(1 << 20)
    _write_deflated(bundle, members, "model.safetensors", (zeros for _ in range(512)))
    assert bundle.stat().st_size < 2 << 20
    run_refused(fast_cli, ws, marker, ["sample", "-m", str(bundle)], "too large")


def test_bomb_that_understates_its_size_is_cut_at_the_declared_size(env, fast_cli) -> None:
    """Declared 100 kB, real 256 MB: zipfile stops at the declared size and the checksum gives it away."""
    ws, marker, members = env
    bundle = ws / "liar.lstmgen"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members.items():
            if name == "model.safetensors":
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as handle:
                    for _ in range(256):
                        handle.write(zeros)
            else:
                archive.writestr(name, data)
    _patch_central_size(bundle, "model.safetensors", 100_000)
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "damaged")


def test_honest_but_oversized_weights_are_refused_before_inflating(env, fast_cli) -> None:
    """40 MB of weights that compress 8:1 pass the ratio guard, but the config needs about 90 kB."""
    ws, marker, members = env
    bundle = ws / "oversized.lstmgen"
    rng = random.Random(0)
    chunk = bytes(rng.choice(b"\x00\x01") for _ in range(1 << 20))
    _write_deflated(bundle, members, "model.safetensors", (chunk for _ in range(40)))
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "a model of its config can need")


def test_zip_with_twenty_thousand_members_is_refused_quickly(env, fast_cli) -> None:
    ws, marker, members = env
    bundle = ws / "crowded.lstmgen"
    with zipfile.ZipFile(bundle, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for index in range(20_000):
            archive.writestr(f"x{index}", b"")
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], "lists 20003 members")


# -- lying safetensors headers -----------------------------------------------------------------------------


def _safetensors(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _good_header(members: dict[str, bytes]) -> tuple[dict, bytes]:
    weights = members["model.safetensors"]
    length = struct.unpack_from("<Q", weights)[0]
    return json.loads(weights[8 : 8 + length]), weights[8 + length :]


@pytest.mark.parametrize(
    "attack, fragment",
    [
        ("length-2^63", "header claiming"),
        ("length-beyond-file", "header claiming"),
        ("overlapping-offsets", "not valid safetensors"),
        ("offsets-beyond-data", "not valid safetensors"),
        ("shape-overflow", "not valid safetensors"),
        ("negative-shape", "not valid safetensors"),
        ("duplicate-tensor-names", "not valid safetensors"),
        ("header-not-json", "not valid safetensors"),
        ("header-50-mb", "a model of its config can need"),
        ("int64-tensor", "dtype int64"),
    ],
)
def test_lying_safetensors_headers_are_refused(attack: str, fragment: str, env, fast_cli) -> None:
    ws, marker, members = env
    header, data = _good_header(members)
    names = [n for n in header if n != "__metadata__"]
    first, second = names[0], names[1]
    if attack == "length-2^63":
        weights = _safetensors(header, data, length=1 << 63)
    elif attack == "length-beyond-file":
        weights = _safetensors(header, data, length=len(json.dumps(header)) + len(data) + 1)
    elif attack == "overlapping-offsets":
        header[second]["data_offsets"] = [header[first]["data_offsets"][0], header[first]["data_offsets"][0] + (
            header[second]["data_offsets"][1] - header[second]["data_offsets"][0])]
        weights = _safetensors(header, data)
    elif attack == "offsets-beyond-data":
        header[first]["data_offsets"] = [0, len(data) * 1000]
        weights = _safetensors(header, data)
    elif attack == "shape-overflow":
        header[first]["shape"] = [1 << 62, 1 << 62]
        weights = _safetensors(header, data)
    elif attack == "negative-shape":
        header[first]["shape"] = [-1, 4]
        weights = _safetensors(header, data)
    elif attack == "duplicate-tensor-names":
        text = json.dumps(header)
        duplicate = json.dumps({first: header[second]})[1:-1]  # the same name, described twice, differently
        weights = _safetensors((text[:-1] + ", " + duplicate + "}").encode(), data)
    elif attack == "header-not-json":
        weights = _safetensors(b"\xff\xfe" * 64, data)
    elif attack == "header-50-mb":
        header["__metadata__"] = {"padding": "x" * (50 << 20)}
        weights = _safetensors(header, data)
    else:
        import torch
        from safetensors.torch import load, save

        tensors = load(members["model.safetensors"])
        tensors["head.bias"] = tensors["head.bias"].to(torch.int64)
        weights = save(tensors)
    bundle = ws / "lying.lstmgen"
    write_zip(bundle, {**members, "model.safetensors": weights})
    run_refused(fast_cli, ws, marker, ["info", str(bundle)], fragment)


def test_suite_documents_itself() -> None:
    """docs/security.md describes these promises and points at this file."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    assert "test_malicious_files.py" in text and "test_hostile_cli.py" in text and "test_fuzz.py" in text
