"""Where models come from: the bundles shipped inside the package, the user's model directory, and
how a `-m` value (a path or a name) becomes the path of a bundle.

Nothing here imports torch, so `lstmgen models` and name resolution stay fast; nothing here prints,
exits or reads the process environment by itself: callers pass `env` (the CLI passes os.environ).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import LstmgenError

BUNDLE_SUFFIX = ".lstmgen"
#: The models shipped with lstmgen (package data in lstmgen/models/), the first one the default.
BUILTIN_NAMES = ("shakespeare", "tang")
DEFAULT_MODEL = BUILTIN_NAMES[0]
MODEL_ENV = "LSTMGEN_MODEL"
#: bundle.META_NAME and its size limit, repeated here because lstmgen.bundle imports torch (a test keeps them equal).
META_NAME = "lstmgen.json"
META_LIMIT = 4 << 20
WEIGHTS_NAME = "model.safetensors"
#: The most bytes of safetensors header read to count parameters (a bundle's header is a few KiB).
WEIGHTS_HEADER_LIMIT = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    """One model `lstmgen models` lists and `-m NAME` can name."""

    name: str
    path: Path
    source: str  # "builtin" or "user"
    size: int  # bytes on disk
    description: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


# -- where models live ------------------------------------------------------------------------------


def builtin_directory() -> Path:
    """lstmgen/models/ of the installed package (package data; the package is installed as files, as torch needs)."""
    return Path(str(resources.files("lstmgen"))) / "models"


def builtin_models(directory: Path | None = None) -> dict[str, Path]:
    """Built-in bundles that are actually present, by name (a development checkout may have none)."""
    return _bundles_in(builtin_directory() if directory is None else directory)


def user_model_dir(env: Mapping[str, str]) -> Path:
    """$LSTMGEN_HOME/models, else $XDG_DATA_HOME/lstmgen/models, else ~/.local/share/lstmgen/models."""
    if env.get("LSTMGEN_HOME"):
        return Path(env["LSTMGEN_HOME"]) / "models"
    xdg = env.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):  # the XDG specification says to ignore relative paths
        return Path(xdg) / "lstmgen" / "models"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "lstmgen" / "models"


def user_models(env: Mapping[str, str]) -> dict[str, Path]:
    """Bundles (files or bundle directories named NAME.lstmgen) in the user's model directory, by name."""
    return _bundles_in(user_model_dir(env))


def _bundles_in(directory: Path) -> dict[str, Path]:
    try:
        paths = sorted(directory.glob("*" + BUNDLE_SUFFIX))
    except OSError:
        return {}
    return {path.stem: path for path in paths if not path.name.startswith(".") and (path.is_file() or path.is_dir())}


def list_models(env: Mapping[str, str], builtin_dir: Path | None = None) -> list[ModelEntry]:
    """User models first (they take precedence for `-m NAME`), then the built-ins, each sorted by name."""
    found = [(name, path, "user") for name, path in user_models(env).items()]
    found += [(name, path, "builtin") for name, path in builtin_models(builtin_dir).items()]
    return [ModelEntry(name, path, source, _size_on_disk(path), describe_bundle(path)) for name, path, source in found]


def _size_on_disk(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(member.stat().st_size for member in path.iterdir() if member.is_file())
        return path.stat().st_size
    except OSError:
        return 0


# -- describing a bundle without loading it ---------------------------------------------------------


def describe_bundle(path: Path) -> str:
    """One line from lstmgen.json and the weights' header, without reading the weights: listing stays instant."""
    try:
        return _summary(bundle_metadata(path), _count_parameters(path))
    except Exception:  # a listing must show every file; `lstmgen info` gives the precise reason
        return "unreadable: damaged or not an lstmgen bundle (`lstmgen info PATH` says why)"


def bundle_metadata(path: Path) -> dict[str, Any]:
    """A bundle's lstmgen.json, read without its weights (raises on a damaged or foreign file)."""
    meta = json.loads(_read_member(path, META_NAME, META_LIMIT))
    if not isinstance(meta, dict):
        raise ValueError(f"{META_NAME} is not a JSON object")
    return meta


def _read_member(path: Path, name: str, limit: int) -> bytes:
    """At most `limit` bytes of one member of a bundle (a zip file or a directory); more is an error.

    A directory's member must be a regular file: a FIFO there must not stall `lstmgen models`.
    """
    if path.is_dir():
        from .fsutil import read_regular_file

        data = read_regular_file(path / name, limit, "bundle member")
    else:
        with zipfile.ZipFile(path) as archive, archive.open(name) as member:
            data = member.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{name} is larger than {limit} bytes")
    return data


def _count_parameters(path: Path) -> int:
    """Parameters from the safetensors header's shapes (a tied head is stored once, as the model counts it)."""
    head = _read_member_prefix(path, 8)
    length = int.from_bytes(head, "little")
    if len(head) < 8 or length > WEIGHTS_HEADER_LIMIT:
        raise ValueError("no readable safetensors header")
    header = json.loads(_read_member_prefix(path, 8 + length)[8:])
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def _read_member_prefix(path: Path, size: int) -> bytes:
    if path.is_dir():
        from .fsutil import read_head

        return read_head(path / WEIGHTS_NAME, size)
    with zipfile.ZipFile(path) as archive, archive.open(WEIGHTS_NAME) as member:
        return member.read(size)


def _summary(meta: dict[str, Any], parameters: int) -> str:
    model, training = meta.get("model") or {}, meta.get("training") or {}
    parts = [
        f"{model.get('num_layers', '?')}×{model.get('hidden_size', '?')} {str(model.get('cell', 'lstm')).upper()}",
        f"{_short_count(parameters)} parameters",
        f"vocabulary {model.get('vocab_size', '?')}",
    ]
    bits = training.get("best_val_bits_per_char")
    if isinstance(bits, (int, float)) and not isinstance(bits, bool):
        parts.append(f"{bits:.3f} bits/char on validation")
    return ", ".join(parts)


def _short_count(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return str(value)


# -- resolving -m -----------------------------------------------------------------------------------


def resolve_model(name_or_path: str | None, env: Mapping[str, str], builtin_dir: Path | None = None) -> Path:
    """The bundle a `-m` value means: an existing path; else a name (user directory, then built-in).

    Without a value: $LSTMGEN_MODEL by the same rules, else the built-in `shakespeare`. Every failure
    is one LstmgenError that says what to do instead.
    """
    if name_or_path:
        return _resolve_value(name_or_path, env, builtin_dir)
    from_env = env.get(MODEL_ENV)
    if from_env:
        try:
            return _resolve_value(from_env, env, builtin_dir)
        except LstmgenError as error:
            raise LstmgenError(f"{MODEL_ENV}={from_env}: {error}; fix or unset {MODEL_ENV}, or pass -m MODEL") from None
    builtins = builtin_models(builtin_dir)
    if DEFAULT_MODEL in builtins:
        return builtins[DEFAULT_MODEL]
    raise LstmgenError(
        f"no model given and the built-in model {DEFAULT_MODEL!r} is not installed ({_not_installed(DEFAULT_MODEL, builtin_dir)}); "
        f"pass -m MODEL.lstmgen or set {MODEL_ENV} (train one with `lstmgen train corpus.txt`)"
    )


def _resolve_value(value: str, env: Mapping[str, str], builtin_dir: Path | None) -> Path:
    from .fsutil import stat_or_none

    path = Path(value)
    if stat_or_none(path, "read model") is not None:
        _refuse_text_file(path)
        return path
    if not is_model_name(value):
        raise LstmgenError(f"model {value} does not exist; check the path, or name a model that `lstmgen models` lists")
    user = user_models(env)
    if value in user:
        return user[value]
    builtins = builtin_models(builtin_dir)
    if value in builtins:
        return builtins[value]
    if value in BUILTIN_NAMES:
        raise LstmgenError(
            f"the built-in model {value!r} is not installed ({_not_installed(value, builtin_dir)}); pass a path to a .lstmgen bundle"
        )
    beside = Path(value + BUNDLE_SUFFIX)
    if stat_or_none(beside, "read model") is not None:
        raise LstmgenError(
            f"no model named {value!r}, but there is a bundle {beside} here: to use it, pass its path: -m {beside}"
        )
    raise LstmgenError(
        f"no model named {value!r} (looked in {user_model_dir(env)} and the built-ins); `lstmgen models` lists them; "
        f"pass a path to a .lstmgen bundle"
    )


def is_model_name(value: str) -> bool:
    """A bare name such as `tang`: no directory part and no suffix (anything else is a path)."""
    separators = {sep for sep in (os.sep, os.altsep) if sep}
    return (
        bool(value)
        and not any(sep in value for sep in separators)
        and not Path(value).suffix
        and value not in (".", "..")
    )


def _not_installed(name: str, builtin_dir: Path | None) -> str:
    directory = builtin_directory() if builtin_dir is None else builtin_dir
    return f"no {name}{BUNDLE_SUFFIX} in {directory}: a development checkout without the model files?"


def _refuse_text_file(path: Path) -> None:
    """A corpus passed where a model belongs is a common slip: say how to get a model from it."""
    if os.path.isfile(path) and path.suffix != BUNDLE_SUFFIX and _looks_like_text(path):
        raise LstmgenError(f"{path} is a text file, not a model bundle; train one with `lstmgen train {path}`")


def _looks_like_text(path: Path) -> bool:
    """Non-empty, no NUL byte and valid UTF-8 in the first 4 KiB (a character cut at the end allowed)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start > len(head) - 4
    return True


def looks_like_bundle(path: Path) -> bool:
    """A .lstmgen name, a zip file or a bundle directory: what a text argument should never be."""
    if path.suffix == BUNDLE_SUFFIX:
        return True
    try:
        if path.is_dir():
            return (path / META_NAME).is_file()
        if not path.is_file():  # never open a FIFO or device here: reading it could block
            return False
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:  # too long a name, a directory that may not be entered: the caller's own check says so
        return False
