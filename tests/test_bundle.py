"""Bundles: what is written, what loads, what is refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import lstmgen
from lstmgen.bundle import load_bundle, save_bundle
from lstmgen.config import ModelConfig
from lstmgen.errors import LstmgenError
from lstmgen.model import LSTMLanguageModel


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rewrite(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]]) -> None:
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in items:
            archive.writestr(name, data)


def test_bundle_has_exactly_three_members(tiny_bundle: Path) -> None:
    members = _members(tiny_bundle)
    assert sorted(members) == ["lstmgen.json", "model.safetensors", "tokenizer.model"]
    meta = json.loads(members["lstmgen.json"])
    assert meta["format"] == "lstmgen-bundle" and meta["format_version"] == 1
    assert meta["training"]["steps"] >= 10
    assert meta["training"]["best_val_loss"] > 0
    assert len(meta["training"]["corpus_sha256"]) == 64
    assert meta["versions"]["torch"] == torch.__version__


def test_directory_bundle_loads_too(tiny_bundle: Path, tmp_path: Path) -> None:
    for name, data in _members(tiny_bundle).items():
        (tmp_path / name).write_bytes(data)
    a = lstmgen.load(tiny_bundle)
    b = lstmgen.load(tmp_path)
    assert a.generate("x", max_tokens=10, temperature=0) == b.generate("x", max_tokens=10, temperature=0)


def test_loading_does_not_unpickle(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_bundle(tiny_bundle)


def test_float16_weights_load(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    model = bundle.build_model()
    path = tmp_path / "half.lstmgen"
    save_bundle(path, model, bundle.tokenizer, dtype=torch.float16)
    half = load_bundle(path)
    assert half.tensors["embedding.weight"].dtype == torch.float16
    assert half.build_model().embedding.weight.dtype == torch.float32


def test_save_is_atomic_when_writing_fails(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = load_bundle(tiny_bundle)
    model = bundle.build_model()
    path = tmp_path / "m.lstmgen"
    save_bundle(path, model, bundle.tokenizer)
    before = path.read_bytes()
    import lstmgen.bundle as bundle_module

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module.zipfile.ZipFile, "writestr", explode)
    with pytest.raises(LstmgenError, match="No space left"):
        save_bundle(path, model, bundle.tokenizer)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.lstmgen"]


def test_gpu_style_state_loads_on_cpu(tiny_bundle: Path) -> None:
    # Bundles store plain CPU tensors; the device a model trained on never matters.
    model = lstmgen.load(tiny_bundle, device="cpu")
    assert next(model.model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("tokenizer.model"), "missing member 'tokenizer.model'"),
        (lambda m: m.update({"extra.bin": b"x"}), "unexpected member 'extra.bin'"),
        (lambda m: m.update({"../evil": b"x"}), "unexpected member '../evil'"),
        (lambda m: m.update({"lstmgen.json": b"{not json"}), "not valid JSON"),
        (lambda m: m.update({"model.safetensors": b"\x00" * 4}), "truncated"),
        (lambda m: m.update({"model.safetensors": (10**12).to_bytes(8, "little") + b"{}"}), "header claiming"),
        (lambda m: m.update({"tokenizer.model": b"garbage"}), "not a valid SentencePiece model"),
    ],
)
def test_damaged_bundles_are_refused(tiny_bundle: Path, tmp_path: Path, mutate, message: str) -> None:
    members = _members(tiny_bundle)
    mutate(members)
    path = tmp_path / "bad.lstmgen"
    _rewrite(path, members)
    with pytest.raises(LstmgenError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_bundle(path)


def _with_meta(tiny_bundle: Path, tmp_path: Path, change) -> Path:
    members = _members(tiny_bundle)
    meta = json.loads(members["lstmgen.json"])
    change(meta)
    members["lstmgen.json"] = json.dumps(meta).encode()
    path = tmp_path / "edited.lstmgen"
    _rewrite(path, members)
    return path


def test_future_format_version_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    path = _with_meta(tiny_bundle, tmp_path, lambda m: m.update(format_version=99))
    with pytest.raises(LstmgenError, match="version 99, newer"):
        load_bundle(path)


def test_config_shape_mismatch_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    path = _with_meta(tiny_bundle, tmp_path, lambda m: m["model"].update(hidden_size=64, embedding_size=64))
    with pytest.raises(LstmgenError, match="has shape"):
        load_bundle(path)


def test_vocab_mismatch_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    path = _with_meta(tiny_bundle, tmp_path, lambda m: m["model"].update(vocab_size=401))
    with pytest.raises(LstmgenError, match="tokenizer has 400 pieces but the model expects 401"):
        load_bundle(path)


def test_nan_weights_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    from safetensors.torch import load, save

    members = _members(tiny_bundle)
    tensors = load(members["model.safetensors"])
    tensors["head.bias"][0] = float("nan")
    members["model.safetensors"] = save(tensors)
    path = tmp_path / "nan.lstmgen"
    _rewrite(path, members)
    with pytest.raises(LstmgenError, match="NaN"):
        load_bundle(path)


def test_wrong_dtype_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    from safetensors.torch import load, save

    members = _members(tiny_bundle)
    tensors = load(members["model.safetensors"])
    tensors["head.bias"] = tensors["head.bias"].to(torch.int32)
    members["model.safetensors"] = save(tensors)
    path = tmp_path / "int.lstmgen"
    _rewrite(path, members)
    with pytest.raises(LstmgenError, match="dtype int32"):
        load_bundle(path)


def test_duplicate_members_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    members = list(_members(tiny_bundle).items())
    path = tmp_path / "dup.lstmgen"
    with pytest.warns(UserWarning):
        _rewrite(path, members + [members[0]])
    with pytest.raises(LstmgenError, match="more than once"):
        load_bundle(path)


def test_truncated_and_text_files_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "t.lstmgen"
    truncated.write_bytes(tiny_bundle.read_bytes()[:5000])
    with pytest.raises(LstmgenError, match="truncated or damaged"):
        load_bundle(truncated)
    text = tmp_path / "notes.lstmgen"
    text.write_text("just some text\n")
    with pytest.raises(LstmgenError, match="looks like a text file"):
        load_bundle(text)


def test_untied_model_with_projection_round_trips(tmp_path: Path, tokenizer) -> None:
    torch.manual_seed(0)
    for config in (
        ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=16, hidden_size=24, num_layers=2, tie_weights=True),
        ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=16, hidden_size=24, num_layers=1, tie_weights=False),
    ):
        model = LSTMLanguageModel(config).eval()
        path = tmp_path / "m.lstmgen"
        save_bundle(path, model, tokenizer)
        loaded = load_bundle(path).build_model()
        x = torch.tensor([[2, 5, 7, 9]])
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_convert_to_float16_halves_the_weights_and_keeps_the_model(tiny_bundle: Path, tmp_path: Path) -> None:
    from lstmgen.bundle import convert_bundle

    half = convert_bundle(tiny_bundle, tmp_path / "half.lstmgen", "float16")
    original = load_bundle(tiny_bundle)
    assert half.meta["weights"]["dtype"] == "float16"
    assert half.meta["training"] == original.meta["training"]
    assert all(t.dtype == torch.float16 for t in half.tensors.values())
    with zipfile.ZipFile(tmp_path / "half.lstmgen") as small, zipfile.ZipFile(tiny_bundle) as big:
        assert small.getinfo("model.safetensors").file_size < 0.55 * big.getinfo("model.safetensors").file_size
    text = "ROMEO:\nWhat light through yonder window breaks?\n"
    full = lstmgen.load(tiny_bundle).evaluate(text)["nll"]
    assert lstmgen.load(tmp_path / "half.lstmgen").evaluate(text)["nll"] == pytest.approx(full, rel=1e-3)
    with pytest.raises(LstmgenError, match="--dtype must be one of"):
        convert_bundle(tiny_bundle, tmp_path / "x.lstmgen", "int4")
