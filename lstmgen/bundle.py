"""The portable bundle: one zip file with config, tokenizer and weights; never unpickled.

Members (see docs/bundle-format.md for the full specification):
    lstmgen.json        format version, model config, tokenizer settings, training summary
    model.safetensors   the weights (float32 by default; float16/bfloat16 load too)
    tokenizer.model     the SentencePiece model
A directory holding the same three files loads too.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import platform
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import ModelConfig, from_dict, to_dict
from .errors import LstmgenError
from .fsutil import atomic_writer
from .tokenizer import Tokenizer

BUNDLE_FORMAT = "lstmgen-bundle"
BUNDLE_VERSION = 1
META_NAME = "lstmgen.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.model"
#: The most bytes each member may expand to; bounds memory on hostile files.
MEMBER_LIMITS = {META_NAME: 4 << 20, TOKENIZER_NAME: 64 << 20, WEIGHTS_NAME: 16 << 30}
MAX_COMPRESSION_RATIO = 200
ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class Bundle:
    meta: dict[str, Any]
    model_config: ModelConfig
    tokenizer: Tokenizer
    tensors: dict[str, torch.Tensor]

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        from .model import LSTMLanguageModel

        model = LSTMLanguageModel(self.model_config)
        model.load_state_dict(weights_to_state_dict(model, self.tensors))
        return model.to(device).eval()


def export_tensors(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model's tensors under their bundle names (a tied head weight is stored once)."""
    tensors = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=False).items():
        if tensor.data_ptr() in seen and name == "head.weight":
            continue
        seen.add(tensor.data_ptr())
        tensors[name] = tensor.detach().to("cpu", dtype).contiguous()
    return tensors


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (config.vocab_size, config.embedding_size)}
    hidden = config.hidden_size
    for layer in range(config.num_layers):
        inputs = config.embedding_size if layer == 0 else hidden
        shapes[f"rnn.weight_ih_l{layer}"] = (4 * hidden, inputs)
        shapes[f"rnn.weight_hh_l{layer}"] = (4 * hidden, hidden)
        shapes[f"rnn.bias_ih_l{layer}"] = (4 * hidden,)
        shapes[f"rnn.bias_hh_l{layer}"] = (4 * hidden,)
    if config.head_input_size != hidden:
        shapes["projection.weight"] = (config.head_input_size, hidden)
    if not config.tie_weights:
        shapes["head.weight"] = (config.vocab_size, config.head_input_size)
    shapes["head.bias"] = (config.vocab_size,)
    return shapes


def weights_to_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {name: tensor.to(torch.float32) for name, tensor in tensors.items()}
    if model.config.tie_weights:
        state["head.weight"] = state["embedding.weight"]
    return state


def training_meta(**summary: Any) -> dict[str, Any]:
    return dict(summary)


def save_bundle(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    tokenizer_settings: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the bundle atomically: the old file stays intact until the new one is complete."""
    from safetensors.torch import save as save_safetensors

    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": to_dict(model.config),
        "tokenizer": {"type": "sentencepiece", "vocab_size": tokenizer.vocab_size, "settings": tokenizer_settings or {}},
        "weights": {"dtype": str(dtype).removeprefix("torch.")},
        "training": training or {},
        "versions": _versions(),
    }
    weights = save_safetensors(export_tensors(model, dtype), metadata={"format": "pt"})
    with atomic_writer(Path(path)) as handle:
        with zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(META_NAME, json.dumps(meta, indent=2, allow_nan=False) + "\n", zipfile.ZIP_DEFLATED)
            archive.writestr(TOKENIZER_NAME, tokenizer.model_proto, zipfile.ZIP_DEFLATED)
            archive.writestr(WEIGHTS_NAME, weights, zipfile.ZIP_STORED)


def _versions() -> dict[str, str]:
    import sentencepiece

    return {
        "lstmgen": __version__,
        "torch": torch.__version__,
        "sentencepiece": getattr(sentencepiece, "__version__", "unknown"),
        "python": platform.python_version(),
    }


# -- loading ------------------------------------------------------------------------------------


def read_members(path: Path, limits: dict[str, int], what: str = "bundle") -> dict[str, bytes]:
    """Read exactly the named members of a zip file or directory, within size limits.

    Nothing is extracted to disk and nothing outside the names in `limits` is read, so member
    names such as `../x` or `/etc/x` can do no harm: they are simply refused.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LstmgenError(f"{what} {path} does not exist; check the path (train one with `lstmgen train CORPUS.txt -o {path}`)") from None
    except OSError as error:
        raise LstmgenError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        return _read_directory(path, limits, what)
    if info.st_size == 0:
        raise LstmgenError(f"{what} {path} is empty; it was not written completely — train or download it again")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(0)
            if head != b"PK\x03\x04":
                hint = " (it looks like a text file; pass it as a corpus instead)" if _looks_like_text(handle.read(4096)) else ""
                raise LstmgenError(f"{path} is not an lstmgen {what}{hint}; pass a .lstmgen file made by `lstmgen train`")
            handle.seek(0)
            return _read_zip(path, io.BytesIO(handle.read()) if info.st_size < (64 << 20) else handle, limits, what)
    except OSError as error:
        raise LstmgenError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start > len(head) - 4
    return b"\x00" not in head


def _read_zip(path: Path, handle: Any, limits: dict[str, int], what: str) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise LstmgenError(f"{what} {path} is truncated or damaged (not a readable zip archive); write it again") from None
    with archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise LstmgenError(f"{what} {path} is malformed: member {duplicates[0]!r} appears more than once")
        unexpected = sorted(set(names) - set(limits))
        if unexpected:
            raise LstmgenError(f"{what} {path} has unexpected member {unexpected[0]!r}; it is not an lstmgen {what} (expected only {', '.join(sorted(limits))})")
        missing = sorted(set(limits) - set(names))
        if missing:
            raise LstmgenError(f"{what} {path} is missing member {missing[0]!r}; it is incomplete or not an lstmgen {what}")
        members = {}
        for zinfo in infos:
            limit = limits[zinfo.filename]
            if zinfo.file_size > limit or (zinfo.compress_size and zinfo.file_size > MAX_COMPRESSION_RATIO * max(zinfo.compress_size, 1 << 16)):
                raise LstmgenError(f"{what} {path}: member {zinfo.filename!r} is too large ({zinfo.file_size} bytes); refusing it")
            try:
                with archive.open(zinfo) as member:
                    data = member.read(limit + 1)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as error:
                raise LstmgenError(f"{what} {path} is damaged ({type(error).__name__} in {zinfo.filename!r}); write it again") from None
            if len(data) > limit or len(data) != zinfo.file_size:
                raise LstmgenError(f"{what} {path}: member {zinfo.filename!r} does not match its declared size; refusing it")
            members[zinfo.filename] = data
        return members


def _read_directory(path: Path, limits: dict[str, int], what: str) -> dict[str, bytes]:
    members = {}
    for name, limit in limits.items():
        member = path / name
        try:
            size = member.stat().st_size
            if size > limit:
                raise LstmgenError(f"{what} {path}: {name} is too large ({size} bytes); refusing it")
            members[name] = member.read_bytes()
        except FileNotFoundError:
            raise LstmgenError(f"directory {path} is not an lstmgen {what}: it has no {name}") from None
        except IsADirectoryError:
            raise LstmgenError(f"directory {path} is not an lstmgen {what}: {name} is a directory") from None
        except OSError as error:
            raise LstmgenError(f"cannot read {path / name}: {error.strerror or error}") from None
    return members


def parse_json_member(data: bytes, name: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LstmgenError(f"{path}: {name} is not valid JSON; the file is damaged or not made by lstmgen") from None
    if not isinstance(meta, dict):
        raise LstmgenError(f"{path}: {name} is not a JSON object; the file is damaged or not made by lstmgen")
    return meta


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def parse_safetensors(data: bytes, path: Path, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; refuses headers that lie about lengths or offsets."""
    from safetensors.torch import load as load_safetensors

    if len(data) < 8:
        raise LstmgenError(f"{path}: {name} is truncated")
    header_length = int.from_bytes(data[:8], "little")
    if header_length > min(len(data) - 8, 100 << 20):
        raise LstmgenError(f"{path}: {name} has a header claiming {header_length} bytes, more than the file holds; it is damaged")
    try:
        return load_safetensors(data)
    except Exception as error:  # safetensors raises its own SafetensorError or ValueError
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise LstmgenError(f"{path}: {name} is not valid safetensors ({reason}); the file is damaged") from None


def load_bundle(path: Path) -> Bundle:
    """Load and validate a bundle; every problem becomes one LstmgenError naming it."""
    path = Path(path)
    members = read_members(path, MEMBER_LIMITS)
    meta = parse_json_member(members[META_NAME], META_NAME, path)
    if meta.get("format") != BUNDLE_FORMAT:
        raise LstmgenError(f"{path} is not an lstmgen bundle ({META_NAME} has no format {BUNDLE_FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise LstmgenError(f"{path}: {META_NAME} has no valid format_version")
    if version > BUNDLE_VERSION:
        raise LstmgenError(
            f"{path} uses bundle format version {version}, newer than this lstmgen reads ({BUNDLE_VERSION}); upgrade lstmgen (pip install -U lstmgen)"
        )
    if version < 1:
        raise LstmgenError(f"{path}: bundle format version {version} is not valid")
    config = from_dict(ModelConfig, meta.get("model"), what=f"{path}: model config")
    config.validate()
    tokenizer = Tokenizer(members[TOKENIZER_NAME])
    if tokenizer.vocab_size != config.vocab_size:
        raise LstmgenError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} pieces but the model expects {config.vocab_size}; the bundle mixes files from different runs"
        )
    tensors = parse_safetensors(members[WEIGHTS_NAME], path)
    validate_tensors(tensors, expected_shapes(config), path)
    return Bundle(meta=meta, model_config=config, tokenizer=tokenizer, tensors=tensors)


def validate_tensors(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise LstmgenError(f"{path}: weights lack tensor {missing[0]!r}; the bundle is damaged or from another model")
    extra = sorted(set(tensors) - set(shapes))
    if extra:
        raise LstmgenError(f"{path}: weights have unexpected tensor {extra[0]!r}; the bundle does not match its config")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tensor.dtype not in ALLOWED_DTYPES:
            raise LstmgenError(f"{path}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; expected float32, float16 or bfloat16")
        if tuple(tensor.shape) != shape:
            raise LstmgenError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape} from the config")
        if not bool(torch.isfinite(tensor).all()):
            raise LstmgenError(f"{path}: tensor {name!r} holds NaN or infinite values; the model is broken (retrain it, or use an earlier checkpoint)")


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
