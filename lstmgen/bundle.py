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
import os
import platform
import stat
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from lzma import LZMAError
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, from_dict, to_dict
from .errors import LstmgenError
from .fsutil import BUNDLE, atomic_writer
from .tokenizer import Tokenizer
from .version import __version__

BUNDLE_FORMAT = "lstmgen-bundle"
BUNDLE_VERSION = 1
META_NAME = "lstmgen.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.model"
#: The most bytes each member may expand to; bounds memory on hostile files.
MEMBER_LIMITS = {META_NAME: 4 << 20, TOKENIZER_NAME: 64 << 20, WEIGHTS_NAME: 16 << 30}
MAX_COMPRESSION_RATIO = 200
#: The most bytes of zip central directory read before refusing an archive (an lstmgen file needs < 1 KiB).
MAX_CENTRAL_DIRECTORY = 1 << 20
#: Room for the safetensors header on top of the tensor data a config implies.
WEIGHTS_HEADER_ALLOWANCE = 1 << 20
ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
WEIGHTS_DTYPES = tuple(str(d).removeprefix("torch.") for d in ALLOWED_DTYPES)
#: size_check(member name, declared size, members read so far): raise LstmgenError to refuse it.
SizeCheck = Callable[[str, int, dict[str, bytes]], None]


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
    # The recurrent tensors depend on the cell (docs/bundle-format.md §3): lstm and gru use
    # PyTorch's names and gate blocks (4H and 3H rows); paper has weight_ih/weight_hh/weight_ho/bias.
    from .cells import rnn_shapes

    for name, shape in rnn_shapes(config.cell, config.embedding_size, hidden, config.num_layers).items():
        shapes[f"rnn.{name}"] = shape
    if config.head_input_size != hidden:
        shapes["projection.weight"] = (config.head_input_size, hidden)
    if not config.tie_weights:
        shapes["head.weight"] = (config.vocab_size, config.head_input_size)
    shapes["head.bias"] = (config.vocab_size,)
    return shapes


def weights_to_state_dict(model: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The bundle's tensors as the model's state dict, in float32 (a tied head shares the embedding)."""
    state = {name: tensor.to(torch.float32) for name, tensor in tensors.items()}
    if model.config.tie_weights:
        state["head.weight"] = state["embedding.weight"]
    return state


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
        "tokenizer": {
            "type": "sentencepiece",
            "vocab_size": tokenizer.vocab_size,
            "settings": tokenizer_settings or {},
        },
        "weights": {"dtype": str(dtype).removeprefix("torch.")},
        "training": training or {},
        "versions": _versions(),
    }
    weights = save_safetensors(export_tensors(model, dtype), metadata={"format": "pt"})
    with atomic_writer(Path(path), BUNDLE, "bundle") as handle, zipfile.ZipFile(handle, "w") as archive:
        archive.writestr(META_NAME, json.dumps(meta, indent=2, allow_nan=False) + "\n", zipfile.ZIP_DEFLATED)
        archive.writestr(TOKENIZER_NAME, tokenizer.model_proto, zipfile.ZIP_DEFLATED)
        archive.writestr(WEIGHTS_NAME, weights, zipfile.ZIP_STORED)


def convert_bundle(source: Path, target: Path, dtype_name: str) -> Bundle:
    """Rewrite a bundle with its weights stored as another dtype; float16 halves the file.

    Training records, tokenizer and configuration are kept; loading upcasts to float32 again.
    """
    if dtype_name not in WEIGHTS_DTYPES:
        raise LstmgenError(f"--dtype must be one of {', '.join(WEIGHTS_DTYPES)}, not {dtype_name!r}")
    bundle = load_bundle(Path(source))
    settings = bundle.meta.get("tokenizer", {}).get("settings") or {}
    save_bundle(
        Path(target),
        bundle.build_model("cpu"),
        bundle.tokenizer,
        settings,
        bundle.meta.get("training") or {},
        getattr(torch, dtype_name),
    )
    return load_bundle(Path(target))


def _versions() -> dict[str, str]:
    import sentencepiece

    return {
        "lstmgen": __version__,
        "torch": torch.__version__,
        "sentencepiece": getattr(sentencepiece, "__version__", "unknown"),
        "python": platform.python_version(),
    }


# -- loading ------------------------------------------------------------------------------------


def read_members(
    path: Path, limits: dict[str, int], what: str = "bundle", size_check: SizeCheck | None = None
) -> dict[str, bytes]:
    """Read exactly the named members of a zip file or directory, within size limits.

    Nothing is extracted to disk and nothing outside the names in `limits` is read, so member
    names such as `../x` or `/etc/x` can do no harm: they are simply refused. Members are read in
    the order of `limits`; `size_check(name, size, members read so far)` may refuse a member from
    its declared size before a byte of it is decompressed (see load_bundle).
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LstmgenError(
            f"{what} {path} does not exist; check the path (train one with `lstmgen train CORPUS.txt -o {path}`)"
        ) from None
    except OSError as error:
        raise LstmgenError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        return _read_directory(path, limits, what, size_check)
    if not stat.S_ISREG(info.st_mode):
        raise LstmgenError(f"{what} {path} is not a regular file (a pipe or device?); save it to a file and pass that")
    if info.st_size == 0:
        raise LstmgenError(f"{what} {path} is empty; it was not written completely — train or download it again")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(0)
            if head != b"PK\x03\x04":
                hint = (
                    " (it looks like a text file; pass it as a corpus instead)"
                    if _looks_like_text(handle.read(4096))
                    else ""
                )
                raise LstmgenError(
                    f"{path} is not an lstmgen {what}{hint}; pass a .lstmgen file made by `lstmgen train`"
                )
            handle.seek(0)
            return _read_zip(
                path, io.BytesIO(handle.read()) if info.st_size < (64 << 20) else handle, limits, what, size_check
            )
    except OSError as error:
        raise LstmgenError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start > len(head) - 4
    return b"\x00" not in head


def _read_zip(
    path: Path, handle: Any, limits: dict[str, int], what: str, size_check: SizeCheck | None = None
) -> dict[str, bytes]:
    _check_zip_directory(path, handle, len(limits), what)
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, NotImplementedError):
        raise LstmgenError(
            f"{what} {path} is truncated or damaged (not a readable zip archive); write it again"
        ) from None
    with archive:
        infos = archive.infolist()
        counts = Counter(i.filename for i in infos)
        duplicates = sorted(n for n, c in counts.items() if c > 1)
        if duplicates:
            raise LstmgenError(f"{what} {path} is malformed: member {duplicates[0]!r} appears more than once")
        unexpected = sorted(set(counts) - set(limits))
        if unexpected:
            raise LstmgenError(
                f"{what} {path} has unexpected member {unexpected[0]!r}; it is not an lstmgen {what} (expected only {', '.join(sorted(limits))})"
            )
        missing = sorted(set(limits) - set(counts))
        if missing:
            raise LstmgenError(
                f"{what} {path} is missing member {missing[0]!r}; it is incomplete or not an lstmgen {what}"
            )
        by_name = {i.filename: i for i in infos}
        members: dict[str, bytes] = {}
        for name, limit in limits.items():
            zinfo = by_name[name]
            # A zip bomb declares a size its compressed data cannot honestly reach (or more than the
            # member may hold); zipfile never returns more than the declared size, so checking the
            # declaration bounds what is decompressed into memory.
            if zinfo.file_size > limit or zinfo.file_size > MAX_COMPRESSION_RATIO * max(zinfo.compress_size, 1 << 16):
                raise LstmgenError(
                    f"{what} {path}: member {name!r} is too large ({zinfo.file_size} bytes); refusing it"
                )
            if size_check is not None:
                size_check(name, zinfo.file_size, members)
            try:
                with archive.open(zinfo) as member:
                    data = member.read(limit + 1)
            except (
                zipfile.BadZipFile,
                EOFError,
                OSError,
                ValueError,
                NotImplementedError,
                RuntimeError,
                zlib.error,
                LZMAError,
            ) as error:
                raise LstmgenError(
                    f"{what} {path} is damaged ({type(error).__name__} in {name!r}); write it again"
                ) from None
            if len(data) > limit or len(data) != zinfo.file_size:
                raise LstmgenError(f"{what} {path}: member {name!r} does not match its declared size; refusing it")
            members[name] = data
        return members


def _check_zip_directory(path: Path, handle: Any, expected_entries: int, what: str) -> None:
    """Refuse a central directory with far more entries than lstmgen needs before zipfile parses it
    (millions of entries would take a long time and a lot of memory just to list)."""
    try:
        end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
        handle.seek(0)
    except (AttributeError, OSError, ValueError, struct.error):
        return
    if not end:
        return
    entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > 4 * expected_entries + 16 or size > MAX_CENTRAL_DIRECTORY:
        raise LstmgenError(
            f"{what} {path} lists {entries} members ({size} bytes of zip directory); an lstmgen {what} has {expected_entries}, refusing it"
        )


def _read_directory(
    path: Path, limits: dict[str, int], what: str, size_check: SizeCheck | None = None
) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for name, limit in limits.items():
        member = path / name
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below instead.
            fd = os.open(member, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise LstmgenError(f"directory {path} is not an lstmgen {what}: it has no {name}") from None
        except IsADirectoryError:
            raise LstmgenError(f"directory {path} is not an lstmgen {what}: {name} is a directory") from None
        except OSError as error:
            raise LstmgenError(f"cannot read {member}: {error.strerror or error}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise LstmgenError(f"directory {path} is not an lstmgen {what}: {name} is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise LstmgenError(
                    f"directory {path} is not an lstmgen {what}: {name} is not a regular file (a pipe or device?)"
                )
            if info.st_size > limit:
                raise LstmgenError(f"{what} {path}: {name} is too large ({info.st_size} bytes); refusing it")
            if size_check is not None:
                size_check(name, info.st_size, members)
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                # read(n) allocates n bytes up front: ask for the size fstat gave, plus one to see growth.
                data = handle.read(info.st_size + 1)
        except OSError as error:
            raise LstmgenError(f"cannot read {member}: {error.strerror or error}") from None
        finally:
            os.close(fd)
        if len(data) != info.st_size:
            raise LstmgenError(f"{what} {path}: {name} changed while it was being read; refusing it")
        members[name] = data
    return members


def parse_json_member(data: bytes, name: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except _NonFiniteNumber as error:
        raise LstmgenError(
            f"{path}: {name} holds the number {error.args[0][:40]}, which is out of range; the file is damaged or not made by lstmgen"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LstmgenError(f"{path}: {name} is not valid JSON; the file is damaged or not made by lstmgen") from None
    if not isinstance(meta, dict):
        raise LstmgenError(f"{path}: {name} is not a JSON object; the file is damaged or not made by lstmgen")
    return meta


def _reject_constant(name: str) -> None:
    raise ValueError(name)


class _NonFiniteNumber(ValueError):
    pass


def _finite_float(text: str) -> float:
    """JSON numbers such as 1e999 parse to infinity in Python; lstmgen never writes them."""
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


def parse_safetensors(data: bytes, path: Path, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; refuses headers that lie about lengths or offsets."""
    from safetensors.torch import load as load_safetensors

    if len(data) < 8:
        raise LstmgenError(f"{path}: {name} is truncated")
    header_length = int.from_bytes(data[:8], "little")
    if header_length > min(len(data) - 8, 100 << 20):
        raise LstmgenError(
            f"{path}: {name} has a header claiming {header_length} bytes, more than the file holds; it is damaged"
        )
    try:
        return load_safetensors(data)
    except Exception as error:  # safetensors raises its own SafetensorError or ValueError
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise LstmgenError(f"{path}: {name} is not valid safetensors ({reason}); the file is damaged") from None


def load_bundle(path: Path) -> Bundle:
    """Load and validate a bundle; every problem becomes one LstmgenError naming it."""
    path = Path(path)
    parsed: list[tuple[dict[str, Any], ModelConfig]] = []

    def check_weights_size(name: str, size: int, members: dict[str, bytes]) -> None:
        # Refuse weights far larger than the config can need before decompressing any of them.
        if name != WEIGHTS_NAME:
            return
        parsed.append(_parse_meta(members[META_NAME], path))
        most = WEIGHTS_HEADER_ALLOWANCE + 4 * sum(math.prod(shape) for shape in expected_shapes(parsed[0][1]).values())
        if size > most:
            raise LstmgenError(
                f"{path}: {WEIGHTS_NAME} is {size} bytes, more than the {most} a model of its config can need; refusing it"
            )

    members = read_members(path, MEMBER_LIMITS, size_check=check_weights_size)
    meta, config = parsed[0] if parsed else _parse_meta(members[META_NAME], path)
    try:
        tokenizer = Tokenizer(members[TOKENIZER_NAME])
    except (ValueError, IndexError, KeyError, OverflowError, RuntimeError, UnicodeError):
        raise LstmgenError(
            f"{path}: {TOKENIZER_NAME} is not a valid lstmgen tokenizer; the bundle is damaged"
        ) from None
    if tokenizer.vocab_size != config.vocab_size:
        raise LstmgenError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} pieces but the model expects {config.vocab_size}; the bundle mixes files from different runs"
        )
    tensors = parse_safetensors(members[WEIGHTS_NAME], path)
    validate_tensors(tensors, expected_shapes(config), path)
    return Bundle(meta=meta, model_config=config, tokenizer=tokenizer, tensors=tensors)


def _parse_meta(data: bytes, path: Path) -> tuple[dict[str, Any], ModelConfig]:
    """lstmgen.json, checked: format, version, model config, and the types of the informational keys."""
    meta = parse_json_member(data, META_NAME, path)
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
    _check_informational(meta, path)
    # Keys missing from `model` take their defaults; consumers (`lstmgen info`) see the complete, checked values.
    meta["model"] = to_dict(config)
    return meta, config


def _check_informational(meta: dict[str, Any], path: Path) -> None:
    """The informational keys need not be present, but when they are they must have their documented
    types (docs/bundle-format.md §2), so that `lstmgen info` can show any bundle that loads."""

    def damaged(what: str) -> LstmgenError:
        return LstmgenError(f"{path}: {META_NAME} {what}; the bundle is damaged or not made by lstmgen")

    for key in ("tokenizer", "weights", "training", "versions"):
        if key in meta and not isinstance(meta[key], dict):
            raise damaged(f"has {key} that is not a JSON object")
    settings = meta.get("tokenizer", {}).get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise damaged("has tokenizer.settings that is not a JSON object")
    dtype = meta.get("weights", {}).get("dtype", "float32")
    if dtype not in WEIGHTS_DTYPES:
        raise damaged(f"names weights dtype {dtype!r} (expected one of {', '.join(WEIGHTS_DTYPES)})")
    training = meta.get("training", {})
    # Each key may be absent; only the best_* keys may be null (docs/bundle-format.md, `training`).
    for key, nullable in (("steps", False), ("tokens_seen", False), ("best_val_step", True)):
        value = training.get(key)
        if (key in training and not (nullable and value is None)) and (
            not isinstance(value, int) or isinstance(value, bool)
        ):
            raise damaged(f"has training.{key} {value!r:.40}, not a whole number")
    for key, nullable in (("elapsed_seconds", False), ("best_val_loss", True), ("best_val_bits_per_char", True)):
        value = training.get(key)
        if (key in training and not (nullable and value is None)) and not is_finite_number(value):
            raise damaged(f"has training.{key} {value!r:.40}, not a number")
    versions = meta.get("versions", {})
    if not all(isinstance(v, str) for v in versions.values()):
        raise damaged("has versions that are not strings")


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
            raise LstmgenError(
                f"{path}: tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; expected float32, float16 or bfloat16"
            )
        if tuple(tensor.shape) != shape:
            raise LstmgenError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape} from the config"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise LstmgenError(
                f"{path}: tensor {name!r} holds NaN or infinite values; the model is broken (retrain it, or use an earlier checkpoint)"
            )


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bundle_summary(path: Path) -> dict[str, Any]:
    """A bundle's metadata (`lstmgen info --json`) with its parameter count, checked as loading checks it."""
    from .model import LSTMLanguageModel

    bundle = load_bundle(path)
    return {**bundle.meta, "parameters": LSTMLanguageModel(bundle.model_config).num_parameters()}
