"""The optimisation schedule: AdamW and the learning rate over a run (linear warm-up, cosine decay)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfig


def make_optimizer(groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel where torch has one for the device (CPU and CUDA since torch 2.4).

    With 32-token windows the optimizer runs four times as often per token; the fused kernel takes
    about 40 % of the time of the per-tensor loop (a 4.8M-parameter step on one CPU thread).
    """
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` as progress → 1."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = min(max(progress, 0.0), 1.0)
    decay = config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.learning_rate * warm * decay
