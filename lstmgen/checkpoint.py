"""The checkpoint file: everything a run needs to continue exactly where it stopped.

`checkpoint.ckpt` is a zip of `state.json` (format, fingerprint of the configuration, tokenizer and
corpus, progress, curve, optimizer hyper-parameters) and `tensors.safetensors` (model, AdamW
state, random states, the carried recurrent state). Nothing in it is ever unpickled.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import torch

from .bundle import parse_json_member, parse_safetensors, read_members
from .config import ModelConfig, RunOptions, TrainConfig, from_dict, to_dict
from .errors import LstmgenError
from .fsutil import atomic_writer
from .options import declared, ref

FORMAT = "lstmgen-checkpoint"
VERSION = 1
#: The members and the most bytes each may expand to.
MEMBERS = {"state.json": 64 << 20, "tensors.safetensors": 32 << 30}
NAME = "checkpoint.ckpt"


def run_directory(output: Path) -> Path:
    """Where a run keeps its encoded corpus, checkpoint, metrics and lock: beside the bundle, `X.lstmgen.run`."""
    output = Path(output)
    return output.with_name(output.name + ".run")


def checkpoint_path(output: Path) -> Path:
    return run_directory(output) / NAME


def write(path: Path, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write a checkpoint atomically (the previous one stays intact until the new one is complete)."""
    from safetensors.torch import save as save_safetensors

    payload = save_safetensors(tensors)
    with atomic_writer(path) as handle, zipfile.ZipFile(handle, "w") as archive:
        archive.writestr(
            "state.json", json.dumps({"format": FORMAT, "format_version": VERSION, **state}), zipfile.ZIP_DEFLATED
        )
        archive.writestr("tensors.safetensors", payload, zipfile.ZIP_STORED)


def read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """state.json and the tensors of a checkpoint, checked (a damaged or foreign file is one line)."""
    if not path.exists():
        raise LstmgenError(f"nothing to resume: {path} does not exist; start without {ref(RunOptions, 'resume')}")
    members = read_members(path, MEMBERS, what="checkpoint")
    state = parse_json_member(members["state.json"], "state.json", path)
    if state.get("format") != FORMAT or state.get("format_version") != VERSION:
        raise LstmgenError(
            f"{path} is not an lstmgen checkpoint of version {VERSION}; start over with {ref(RunOptions, 'overwrite')}"
        )
    return state, parse_safetensors(members["tensors.safetensors"], path, "tensors.safetensors")


def read_state(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint (progress and fingerprint), read without the tensors ({} when unreadable).

    For describing a checkpoint and refusing early; --resume reports a damaged one precisely."""
    limit = MEMBERS["state.json"]
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return {}
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("state.json")
            if info.file_size > limit:
                return {}
            with archive.open(info) as member:
                state = json.loads(member.read(limit + 1))
    except Exception:  # damaged: --resume reports it precisely; here it only describes the file
        return {}
    return state if isinstance(state, dict) else {}


def saved_configs(output: Path) -> tuple[ModelConfig, TrainConfig] | None:
    """The model and training configuration stored in a run's checkpoint, if there is one."""
    path = checkpoint_path(output)
    if not path.exists():
        return None
    members = read_members(path, MEMBERS, what="checkpoint")
    fingerprint = parse_json_member(members["state.json"], "state.json", path).get("fingerprint", {})
    return (
        from_dict(ModelConfig, fingerprint.get("model"), "checkpoint model config"),
        from_dict(TrainConfig, fingerprint.get("train"), "checkpoint train config"),
    )


def check_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume with another corpus, tokenizer, model or training option that is not `resumable`."""
    overwrite = ref(RunOptions, "overwrite")
    for key, what in (
        ("tokenizer_sha256", "the tokenizer"),
        ("corpus_sha256", "the corpus"),
        ("tokens_sha256", "the tokenized corpus"),
    ):
        if saved.get(key) != current.get(key):
            raise LstmgenError(
                f"cannot resume: {what} differs from the checkpoint's; use the same corpus and tokenizer, or start over with {overwrite}"
            )
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        old, new = saved.get(section, {}), current[section]
        defaults = to_dict(TrainConfig()) if cls is TrainConfig else {}
        for option in declared(cls):
            if option.resumable or option.name not in new:
                continue
            if (
                old.get(option.name, defaults.get(option.name)) != new[option.name]
            ):  # a setting newer than the checkpoint had its default
                raise LstmgenError(
                    f"cannot resume: {option.ref} differs (checkpoint {old.get(option.name)!r}, now {new[option.name]!r}); "
                    f"drop the option or start over with {overwrite}"
                )
