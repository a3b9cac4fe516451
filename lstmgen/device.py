"""Where models run: device names to torch devices, autocast precision, CPU threads.

Inference and training both use it, so loading a model never imports the training code.
"""

from __future__ import annotations

import torch

from .config import DEVICES, InferenceOptions, TrainConfig
from .errors import LstmgenError
from .options import ref


def resolve_device(name: str) -> torch.device:
    """`auto` → a CUDA GPU, else Apple's MPS, else the CPU; a named device must be there."""
    if name not in DEVICES:
        raise LstmgenError(f"{ref(TrainConfig, 'device')} must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LstmgenError(
            f"{ref(TrainConfig, 'device')} cuda was asked for, but no CUDA GPU is available; use cpu or auto"
        )
    if name == "mps" and not _mps_available():
        raise LstmgenError(
            f"{ref(TrainConfig, 'device')} mps was asked for, but Apple's MPS is not available; use cpu or auto"
        )
    return torch.device(name)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain float32)."""
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and name == "fp16":
        raise LstmgenError(f"{ref(TrainConfig, 'precision')} fp16 needs a GPU; use fp32 (or bf16) on a CPU")
    return torch.bfloat16 if name == "bf16" else torch.float16


def use_threads(threads: int | None) -> None:
    """Run torch's CPU kernels on this many threads (None: torch's default, all cores)."""
    if threads:
        torch.set_num_threads(threads)


def check_inference(options: InferenceOptions) -> None:
    """Refuse impossible device, quantization and thread settings before any model is loaded."""
    options.validate()
    if options.quantize != "none" and options.device != "cpu":
        raise LstmgenError(
            f"{ref(InferenceOptions, 'quantize')} {options.quantize} runs on the CPU; drop {ref(InferenceOptions, 'device')} "
            "or use the CPU"
        )
