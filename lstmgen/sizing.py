"""Sizing a run: batch shape for the device, a model for the corpus, dropout for the budget, and the
speed probe that turns a time budget into tokens (also what `train --dry-run` reports)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .config import ModelConfig, TrainConfig
from .device import use_threads


def apply_device_defaults(config: TrainConfig, device: torch.device) -> None:
    """Batch shape and learning rate for the device (TrainConfig's own defaults are the CPU's).

    On a CPU the number of updates a budget buys is what limits quality: 32 streams × 32-token
    windows train as fast per token as × 128 windows but take 4× as many steps, which on tiny
    Shakespeare halved the distance to a 5-minute model's loss (docs/benchmarks.md). A GPU runs the
    wider batches and longer windows it measured fastest with.
    """
    if device.type == "cuda":
        config.batch_size, config.seq_len, config.learning_rate = 128, 128, 3e-3


def suggest_model(train_tokens: int, vocab_size: int, device: torch.device) -> ModelConfig:
    """A model sized for the corpus and the device: big enough to learn, small enough to train."""
    if device.type == "cuda":
        hidden = 1024 if train_tokens >= 5_000_000 else 512 if train_tokens >= 200_000 else 256
    else:
        hidden = 512 if train_tokens >= 300_000 else 256 if train_tokens >= 30_000 else 128
    layers = 2 if train_tokens >= 30_000 else 1
    dropout = 0.1 if train_tokens >= 20_000_000 else 0.2 if train_tokens >= 300_000 else 0.3
    return ModelConfig(
        vocab_size=vocab_size, embedding_size=hidden, hidden_size=hidden, num_layers=layers, dropout=dropout
    )


#: Runs planned to read the training split this many times or more overfit at the default dropout:
#: at 15 minutes (~7 passes over tiny Shakespeare's subwords) the training loss was already 0.38 nats
#: below the held-out loss.
LONG_RUN_EPOCHS = 15.0
LONG_RUN_DROPOUT = 0.3


def budget_dropout(
    model_config: ModelConfig, config: TrainConfig, train_tokens: int, speed: Callable[[], float]
) -> float:
    """The model's dropout, raised to LONG_RUN_DROPOUT when the budget buys LONG_RUN_EPOCHS passes or more.

    A time budget is turned into tokens with `speed()`, the measured training tokens per second
    (`measure_tokens_per_second`; called only for a time budget).
    """
    planned: float
    if config.max_steps is not None:
        planned = config.max_steps * config.batch_size * config.seq_len
    elif config.epochs is not None:
        planned = config.epochs * train_tokens
    elif config.max_time is not None:
        planned = config.max_time * speed()
    else:
        return model_config.dropout
    if planned / max(train_tokens, 1) >= LONG_RUN_EPOCHS:
        return max(model_config.dropout, LONG_RUN_DROPOUT)
    return model_config.dropout


#: The speed probe warms up for this long (oneDNN builds its kernels at the first calls), then times steps for this long.
PROBE_WARMUP_SECONDS = 0.5
PROBE_SECONDS = 1.5


def measure_tokens_per_second(
    model_config: ModelConfig, config: TrainConfig, device: torch.device, seconds: float = PROBE_SECONDS
) -> float:
    """Training tokens/s of this model and batch shape, timed on real training steps of random tokens.

    The steps are the trainer's (fused AdamW, gradient clipping, the state carried from window to
    window). The slow first steps are not counted, and the speed is that of the median step (a step
    slowed by another program now and then does not count for the minutes a run lasts). About two
    seconds whatever the model.
    """
    from .model import LSTMLanguageModel, detach_state
    from .schedule import make_optimizer

    use_threads(config.threads)
    model = LSTMLanguageModel(model_config).to(device).train()
    optimizer = make_optimizer(
        [{"params": list(model.parameters()), "weight_decay": config.weight_decay}], 1e-4, device
    )
    tokens = torch.randint(3, model_config.vocab_size, (config.batch_size, config.seq_len + 1), device=device)
    state = None

    def step() -> None:
        nonlocal state
        logits, new_state = model(tokens[:, :-1], state)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state = detach_state(new_state)
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    for count in range(1000):
        step()
        if count >= 1 and time.perf_counter() - started >= PROBE_WARMUP_SECONDS:
            break
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < 3 or (time.perf_counter() - started < seconds and len(timings) < 1000):
        began = time.perf_counter()
        step()
        timings.append(time.perf_counter() - began)
    return config.batch_size * config.seq_len / sorted(timings)[len(timings) // 2]
