"""The training loop: truncated BPTT over contiguous streams, validation, bundles, exact resume.

A run writes the bundle `X.lstmgen` (always the weights with the best validation loss so far) and
its run directory `X.lstmgen.run/` (lstmgen.rundir). What a run trains with is decided before it
starts (lstmgen.run); here the decided configuration is trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint
from .bundle import save_bundle
from .config import ModelConfig, RunOptions, TrainConfig, to_dict
from .data import FreshStarts, StreamBatcher, TokenizedCorpus
from .device import resolve_device, resolve_precision, use_threads
from .distributed import ProcessGroup
from .errors import LstmgenError, TrainingInterrupted
from .evaluation import bounds_size, parts_nll, sample_bounds, summarize, total_nll
from .fsutil import BUNDLE, atomic_writer, check_output, check_output_directory
from .model import LSTMLanguageModel, carry_names, detach_state
from .options import ref
from .rundir import RUN_FILES, RunLock, run_directory
from .schedule import learning_rate, make_optimizer
from .signals import SignalGuard
from .tokenizer import Tokenizer

Event = dict[str, Any]


#: With --val-every unset, a validation runs each time this share of the budget has passed, so the
#: figure on the progress line is never older than that. It reads a fixed sample of the held-out
#: split, sized from the measured training speed to cost about VALIDATION_COST of the training time
#: between two validations (evaluation reads about EVAL_SPEEDUP times as many tokens per second as
#: training: forward only, no optimizer). In very short runs, where even MIN_VALIDATION_TOKENS cost
#: more than that, validations come less often instead. The last validation reads the held-out split
#: (up to --val-max-tokens, and up to what FINAL_VALIDATION_COST of the run's time reads) with the
#: best weights; its figure is the one the bundle records.
VALIDATION_SHARE = 0.03
VALIDATION_COST = 0.03
EVAL_SPEEDUP = 3.0
MIN_VALIDATION_TOKENS = 1024
FINAL_VALIDATION_COST = 0.05
#: Validation reads its text as this many streams at most, each from a fresh state at a paragraph start.
VALIDATION_STREAMS = 32


@dataclass
class TrainResult:
    output: Path
    steps: int
    tokens_seen: int
    elapsed: float
    best_val_loss: float | None
    best_val_bits_per_char: float | None
    tokens_per_second: float
    stopped_by: str


@dataclass
class _Progress:
    """The position of a run; everything here goes into the checkpoint."""

    step: int = 0
    epoch: int = 0
    window: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0
    best_val_loss: float | None = None
    best_val_step: int | None = None
    last_train_loss: float | None = None
    loss_sum: float = 0.0
    loss_count: int = 0
    #: Progress fraction of the next validation (--val-every unset).
    next_validation: float = VALIDATION_SHARE
    #: Tokens in the validation sample (0: not chosen yet; fixed at the first validation).
    val_sample_tokens: int = 0
    best_val_bits_per_char: float | None = None


class Trainer:
    """Train a model on a tokenized corpus, writing the best bundle to `output`."""

    def __init__(
        self,
        corpus: TokenizedCorpus,
        model_config: ModelConfig,
        train_config: TrainConfig,
        output: Path,
        on_event: Callable[[Event], None] | None = None,
        resume: bool = False,
        init_weights: dict[str, torch.Tensor] | None = None,
        tokenizer: Tokenizer | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        train_config.validate()
        model_config.validate()
        self.corpus = corpus
        self.model_config = model_config
        self.config = train_config
        self.output = Path(output)
        self.run_dir = run_directory(self.output)
        self.on_event = on_event or (lambda event: None)
        self.resume = resume
        self.init_weights = init_weights
        self.tokenizer = tokenizer or Tokenizer.load(corpus.tokenizer_path)
        self.group = group or ProcessGroup()
        if not self.group.is_main:
            self.on_event = lambda event: None
        if train_config.batch_size % self.group.world_size:
            raise LstmgenError(
                f"{ref(TrainConfig, 'batch_size')} {train_config.batch_size} must be a multiple of the number of processes ({self.group.world_size}): "
                "each process trains its own share of the streams"
            )
        self._stop_requested: str | None = None
        #: held-out tokens per second read by the last validation; sizes the final one
        self._eval_speed: float | None = None
        if model_config.vocab_size != self.tokenizer.vocab_size:
            if resume:
                raise LstmgenError(
                    f"cannot resume: the checkpoint's model has a vocabulary of {model_config.vocab_size} but this run's tokenizer has "
                    f"{self.tokenizer.vocab_size}; use the corpus and tokenizer of the checkpoint's run, or start over with {ref(RunOptions, 'overwrite')}"
                )
            raise LstmgenError(
                f"the model's vocabulary ({model_config.vocab_size}) does not match the tokenizer's ({self.tokenizer.vocab_size}); "
                "train with the tokenizer the model was made for"
            )

    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step, saving a checkpoint (as Ctrl-C does)."""
        self._stop_requested = reason

    # -- setup ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        config = self.config
        self.device = resolve_device(config.device)
        if self.group.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.group.local_rank)
        use_threads(config.threads)
        torch.manual_seed(config.seed)
        self.model = LSTMLanguageModel(self.model_config).to(self.device)
        if self.init_weights is not None:
            from .bundle import weights_to_state_dict

            self.model.load_state_dict(weights_to_state_dict(self.model, self.init_weights))
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = make_optimizer(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            config.learning_rate,
            self.device,
        )
        self.autocast_dtype = resolve_precision(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.forward: Any = self.model
        if config.compile:
            from .cells import prepare_for_compile

            prepare_for_compile()
            self.forward = torch.compile(self.model)
        if self.group.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.forward, device_ids=device_ids)
        tokens = self.corpus.tokens()
        split = self.corpus.split
        share = config.batch_size // self.group.world_size
        self.streams = slice(self.group.rank * share, (self.group.rank + 1) * share)
        self.documents = (self.corpus.meta.get("tokenizer") or {}).get("documents", "file")
        self.fresh_starts = FreshStarts(self.tokenizer, self.documents)
        self.batcher = StreamBatcher(
            tokens[:split],
            config.batch_size,
            config.seq_len,
            config.seed,
            streams=self.streams,
            fresh_starts=self.fresh_starts,
            reset_every=config.reset_every,
        )
        # The held-out text as `lstmgen eval` reads a file: the start ids, then its tokens.
        val_end = min(len(tokens), split + config.val_max_tokens)
        self.val_tokens = np.concatenate(
            [np.asarray(self.fresh_starts.start_ids(), dtype=tokens.dtype), np.asarray(tokens[split:val_end])]
        )
        meta = self.corpus.meta["split"]
        if val_end == len(tokens):
            self.val_bytes, self.val_chars = int(meta["val_bytes"]), int(meta["val_chars"])
        else:
            self.val_bytes, self.val_chars = bounds_size(
                self.tokenizer, self.val_tokens, [(0, len(self.val_tokens) - 1)], self.documents
            )
        self._val_sample: tuple[list[tuple[int, int]], int, int] | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self.progress = _Progress()
        self.state: tuple[torch.Tensor, ...] | None = None  # (h, c) for lstm, (h,) for gru and paper
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.checkpoint_path = self.run_dir / "checkpoint.ckpt"
        self.curve: list[dict[str, Any]] = []

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "model": to_dict(self.model_config),
            "train": to_dict(self.config),
            "tokens_sha256": self.corpus.meta.get("tokens_sha256"),
            "corpus_sha256": self.corpus.meta.get("corpus_sha256"),
            "tokenizer_sha256": self.corpus.meta.get("tokenizer_sha256"),
        }

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.group.is_main:  # the guard's checks, then the lock, before anything is written
            check_output(self.output, BUNDLE, "bundle")
            check_output_directory(self.run_dir, "run directory", members=RUN_FILES)
        lock = RunLock(self.run_dir, join=True) if self.group.is_main else contextlib.nullcontext()
        with lock, SignalGuard() as guard:
            self._setup()
            if self.group.is_main:
                self._remove_stale_temporaries()
                self._check_disk_space()
            if self.resume:
                self._load_checkpoint()
            elif self.group.is_main:
                self._reset_metrics()
            self.group.barrier()
            return self._loop(guard)

    def _remove_stale_temporaries(self) -> None:
        """Drop temporary files a killed run left behind (safe: we hold the run's lock)."""
        for directory, pattern in ((self.output.parent, f".{self.output.name}.*.tmp"), (self.run_dir, ".*.tmp")):
            for path in directory.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _check_disk_space(self) -> None:
        """Refuse to start when the bundle and checkpoint could not be written: better now than in hours."""
        import shutil

        parameters = self.model.num_parameters()
        bundle = parameters * 4 + len(self.tokenizer.model_proto)
        checkpoint = (
            parameters * 4 * 3
            + 2 * self.model_config.num_layers * self.config.batch_size * self.model_config.hidden_size * 4
        )
        needed = bundle + checkpoint + (1 << 20)
        free = shutil.disk_usage(self.run_dir).free  # the run directory sits beside the bundle
        if free < needed:
            raise LstmgenError(
                f"not enough disk space in {self.run_dir.parent}: the bundle and checkpoint need about {needed / 1e6:.0f} MB, "
                f"{free / 1e6:.0f} MB are free; free some space or choose another -o"
            )

    def _loop(self, guard: SignalGuard) -> TrainResult:
        config = self.config
        p = self.progress
        self.on_event(
            {
                "event": "start",
                "step": p.step,
                "parameters": self.model.num_parameters(),
                "device": str(self.device),
                "model": to_dict(self.model_config),
                "train": to_dict(config),
                "resumed": self.resume,
            }
        )
        started = time.monotonic() - p.elapsed
        last_checkpoint = time.monotonic()
        window_tokens = config.batch_size * config.seq_len
        log_time, log_tokens = time.monotonic(), 0
        stopped_by = self._stop_reason(p.elapsed)
        while stopped_by is None:
            if p.window >= self.batcher.windows_per_epoch(p.epoch):
                p.epoch += 1
                p.window = 0
                self.state = None
            lr = learning_rate(config, p.step, self._progress_fraction(p.elapsed))
            loss = self._train_step(p.epoch, p.window, lr)
            p.step += 1
            p.window += 1
            p.tokens_seen += window_tokens
            p.elapsed = self.group.broadcast_float(time.monotonic() - started)
            p.loss_sum += loss
            p.loss_count += 1
            log_tokens += window_tokens
            if p.step % config.log_every == 0:
                now = time.monotonic()
                p.last_train_loss = p.loss_sum / p.loss_count
                record = {
                    "type": "train",
                    "step": p.step,
                    "epoch": p.epoch,
                    "loss": p.last_train_loss,
                    "lr": lr,
                    "tokens_seen": p.tokens_seen,
                    "elapsed": p.elapsed,
                    "tokens_per_second": log_tokens / max(now - log_time, 1e-9),
                }
                self._log_metrics(record)
                self.on_event({"event": "step", **record, "progress": self._progress_fraction(p.elapsed)})
                log_time, log_tokens = now, 0
                p.loss_sum, p.loss_count = 0.0, 0
            stopped_by = self._stop_reason(p.elapsed)
            if self._validation_due() or stopped_by in ("max_time", "max_steps", "epochs"):
                before = p.elapsed
                self._validate()
                p.elapsed = self.group.broadcast_float(time.monotonic() - started)
                p.next_validation = self._next_validation(p.elapsed - before)
            if self.group.any(guard.signal_number is not None):
                stopped_by = "signal"
            elif self.group.any(self._stop_requested is not None):
                stopped_by = "requested"
            if stopped_by or self.group.any(time.monotonic() - last_checkpoint >= config.checkpoint_every):
                self._save_checkpoint()
                last_checkpoint = time.monotonic()
        final = self._final_validation() if stopped_by in ("max_time", "max_steps", "epochs") else None
        if self.group.is_main and (final is not None or not self.output.exists() or p.best_val_loss is None):
            self._save_bundle(final)
        tokens_per_second = p.tokens_seen / max(p.elapsed, 1e-9)
        best_loss, best_bpc = (
            (final["nll"], final["bits_per_char"]) if final is not None else (p.best_val_loss, p.best_val_bits_per_char)
        )
        result = TrainResult(
            self.output, p.step, p.tokens_seen, p.elapsed, best_loss, best_bpc, tokens_per_second, stopped_by
        )
        self.on_event({"event": "end", **dataclasses.asdict(result), "output": str(self.output)})
        if stopped_by == "signal":
            raise TrainingInterrupted(
                guard.signal_number or signal.SIGINT, f"stopped at step {p.step}; checkpoint saved"
            )
        self.group.barrier()
        return result

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _train_step(self, epoch: int, window: int, lr: float) -> float:
        self.model.train()
        batch = self.batcher.batch(epoch, window)
        x, y = self._to_device(batch.inputs), self._to_device(batch.targets)
        resets = torch.from_numpy(batch.resets) if len(batch.resets) else None
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            logits, state = self.forward(x, self.state, resets)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state = detach_state(state)
        reduced = loss.detach()
        if self.group.enabled:
            torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.AVG)
        value = float(reduced.item())
        if not math.isfinite(value):
            raise LstmgenError(
                f"training diverged at step {self.progress.step + 1} (loss {value}); lower {ref(TrainConfig, 'learning_rate')} (now {self.config.learning_rate:g}) and start again"
            )
        return value

    def _next_validation(self, cost: float) -> float:
        """The progress fraction of the next validation: VALIDATION_SHARE of the budget later, or
        later still when the last one (taking `cost` seconds) would otherwise cost more than VALIDATION_COST."""
        fraction = self._progress_fraction(self.progress.elapsed)
        if fraction <= 0.0:
            return VALIDATION_SHARE
        total_seconds = self.progress.elapsed / fraction  # the budget's length in seconds, as it goes
        on_schedule = (math.floor(fraction / VALIDATION_SHARE) + 1) * VALIDATION_SHARE
        return max(on_schedule, fraction + cost / VALIDATION_COST / total_seconds)

    def _validation_due(self) -> bool:
        """Every --val-every steps; unset, each time another VALIDATION_SHARE of the budget has passed."""
        p = self.progress
        if self.config.val_every is not None:
            return p.step % self.config.val_every == 0
        return self._progress_fraction(p.elapsed) >= p.next_validation

    def _progress_fraction(self, elapsed: float) -> float:
        config, p = self.config, self.progress
        fractions = []
        if config.max_steps is not None:
            fractions.append(p.step / config.max_steps)
        if config.max_time is not None:
            fractions.append(elapsed / config.max_time)
        if config.epochs is not None:
            per_epoch = max(1, self.batcher.windows_per_epoch(p.epoch))
            fractions.append((p.epoch + p.window / per_epoch) / config.epochs)
        return max(fractions) if fractions else 0.0

    def _stop_reason(self, elapsed: float) -> str | None:
        config, p = self.config, self.progress
        if config.max_steps is not None and p.step >= config.max_steps:
            return "max_steps"
        if config.max_time is not None and elapsed >= config.max_time:
            return "max_time"
        if config.epochs is not None and self._progress_fraction(elapsed) >= 1.0 and p.step > 0:
            return "epochs"
        return None

    # -- validation and bundles -------------------------------------------------------------------

    def _validation_sample(self) -> tuple[list[tuple[int, int]], int, int]:
        """The fixed sample every periodic validation reads: (stream bounds, bytes, characters).

        Its size is chosen at the first validation from the tokens trained since the start (one
        validation interval), so that reading it costs about VALIDATION_COST of an interval.
        """
        p = self.progress
        if self._val_sample is None:
            if not p.val_sample_tokens:
                interval = (
                    self.config.val_every * self.config.batch_size * self.config.seq_len
                    if self.config.val_every is not None
                    else p.tokens_seen
                )
                p.val_sample_tokens = max(MIN_VALIDATION_TOKENS, int(VALIDATION_COST * EVAL_SPEEDUP * interval))
            streams = min(VALIDATION_STREAMS, max(1, p.val_sample_tokens // 512))
            bounds = sample_bounds(self.val_tokens, p.val_sample_tokens, streams, self.fresh_starts)
            self._val_sample = (bounds, *bounds_size(self.tokenizer, self.val_tokens, bounds, self.documents))
        return self._val_sample

    def _validate(self) -> None:
        """Score the validation sample; keep the weights (and write the bundle) when it improved."""
        p = self.progress
        if not self.group.is_main:
            self.group.barrier()
            return
        bounds, num_bytes, num_chars = self._validation_sample()
        began = time.monotonic()
        nll, count = parts_nll(self.model, self.val_tokens, bounds, self.fresh_starts.start_id, device=self.device)
        summary = summarize(nll, count, num_bytes, num_chars)
        improved = p.best_val_loss is None or summary["nll"] < p.best_val_loss
        if improved:
            p.best_val_loss, p.best_val_bits_per_char, p.best_val_step = (
                summary["nll"],
                summary["bits_per_char"],
                p.step,
            )
            self._best_weights = {
                name: value.detach().to("cpu", copy=True) for name, value in self.model.state_dict().items()
            }
        record = {
            "type": "val",
            "step": p.step,
            "val_loss": summary["nll"],
            "val_bits_per_char": summary["bits_per_char"],
            "val_bits_per_byte": summary["bits_per_byte"],
            "val_tokens": count,
            "best": improved,
            "elapsed": p.elapsed,
            "seconds": round(time.monotonic() - began, 3),
        }
        self._eval_speed = count / max(record["seconds"], 1e-6)
        self._log_metrics(record)
        self.curve.append({"step": p.step, "train_loss": p.last_train_loss, "val_loss": summary["nll"]})
        self.on_event({"event": "val", **record})
        if improved:
            self._save_bundle()
        self.group.barrier()

    def _final_validation(self) -> dict[str, Any] | None:
        """The best weights read over the held-out split (up to --val-max-tokens), as `lstmgen eval` would.

        In a short run the split is cut to what FINAL_VALIDATION_COST of the run's time reads (at
        the speed the periodic validations measured). The bundle records this figure. The model
        keeps the best weights afterwards (the checkpoint, already written, holds the last ones
        for --resume).
        """
        if not self.group.is_main:
            self.group.barrier()
            return None
        if self._best_weights is not None:
            self.model.load_state_dict({name: value.to(self.device) for name, value in self._best_weights.items()})
        tokens, num_bytes, num_chars = self.val_tokens, self.val_bytes, self.val_chars
        speed = self._eval_speed
        if speed is not None:
            affordable = max(
                self.progress.val_sample_tokens, int(FINAL_VALIDATION_COST * self.progress.elapsed * speed)
            )
            if affordable < len(tokens) - 1:
                tokens = tokens[: affordable + 1]
                num_bytes, num_chars = bounds_size(self.tokenizer, tokens, [(0, len(tokens) - 1)], self.documents)
        streams = min(VALIDATION_STREAMS, max(1, (len(tokens) - 1) // 1024))
        began = time.monotonic()
        nll, count = total_nll(
            self.model, tokens, num_streams=streams, device=self.device, fresh_starts=self.fresh_starts
        )
        summary = summarize(nll, count, num_bytes, num_chars)
        summary["streams"] = streams
        whole = len(tokens) == len(self.val_tokens)
        summary["scope"] = "held-out split" if whole else f"first {count:,} tokens of the held-out split"
        record = {
            "type": "val",
            "step": self.progress.best_val_step or self.progress.step,
            "val_loss": summary["nll"],
            "val_bits_per_char": summary["bits_per_char"],
            "val_bits_per_byte": summary["bits_per_byte"],
            "val_tokens": count,
            "final": True,
            "elapsed": self.progress.elapsed,
            "seconds": round(time.monotonic() - began, 3),
        }
        self._log_metrics(record)
        self.on_event({"event": "val", **record, "best": True})
        self.group.barrier()
        return summary

    def _token_counts(self) -> list[int]:
        """How often each token occurs in the training split: the unigram baseline `eval` reports."""
        if getattr(self, "_counts", None) is None:
            tokens = self.corpus.tokens()[: self.corpus.split]
            counts = np.zeros(self.model_config.vocab_size, dtype=np.int64)
            for start in range(0, len(tokens), 1 << 24):
                counts += np.bincount(
                    np.asarray(tokens[start : start + (1 << 24)]), minlength=self.model_config.vocab_size
                )[: self.model_config.vocab_size]
            self._counts = counts.tolist()
        return self._counts

    def _save_bundle(self, final: dict[str, Any] | None = None) -> None:
        """Write the bundle: the current weights with the best validation figures (the final ones when given)."""
        p = self.progress
        if final is not None:
            validation = {
                "loss": final["nll"],
                "bits_per_char": final["bits_per_char"],
                "tokens": final["tokens"],
                "scope": final["scope"],
                "streams": final["streams"],
            }
        else:
            validation = {
                "loss": p.best_val_loss,
                "bits_per_char": p.best_val_bits_per_char,
                "tokens": p.val_sample_tokens,
                "scope": "sample of the held-out split",
            }
        training = {
            "steps": p.step,
            "tokens_seen": p.tokens_seen,
            "elapsed_seconds": round(p.elapsed, 3),
            "best_val_loss": validation["loss"],
            "best_val_bits_per_char": validation["bits_per_char"],
            "best_val_step": p.best_val_step,
            "validation": validation,
            "corpus_sha256": self.corpus.meta.get("corpus_sha256"),
            "corpus_files": [
                {"name": Path(f["path"]).name, "bytes": f["bytes"], "sha256": f["sha256"]}
                for f in self.corpus.meta.get("files", [])
            ],
            "train_config": to_dict(self.config),
            "device": str(self.device),
            "curve": self.curve[-500:],
            "token_counts": self._token_counts(),
        }
        save_bundle(
            self.output,
            self.model,
            self.tokenizer,
            tokenizer_settings=self.corpus.meta.get("tokenizer"),
            training=training,
        )
        self.on_event({"event": "bundle", "step": p.step, "path": str(self.output)})

    # -- metrics ----------------------------------------------------------------------------------

    def _reset_metrics(self) -> None:
        with atomic_writer(self.metrics_path):
            pass

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if not self.group.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics logged after the checkpoint, so a resumed run's log matches an uninterrupted one."""
        kept = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", math.inf) <= step:
                    kept.append(line + "\n")
        with atomic_writer(self.metrics_path) as handle:
            handle.write("".join(kept).encode("utf-8"))

    # -- checkpoints ------------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for name, tensor in self.model.state_dict().items():
            if name == "head.weight" and self.model_config.tie_weights:
                continue
            tensors[f"model.{name}"] = tensor.detach().cpu().contiguous()
        optimizer_state = self.optimizer.state_dict()
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        # Under torchrun every rank contributes its random state and its streams' carried state.
        cpu_states = self.group.gather_tensors(torch.get_rng_state())
        tensors["rng.cpu"] = cpu_states[0]
        if self.group.enabled:
            tensors.update({f"rng.cpu.r{rank}": state.clone() for rank, state in enumerate(cpu_states)})
        if self.device.type == "cuda":
            cuda_states = self.group.gather_tensors(torch.cuda.get_rng_state(self.device))
            tensors["rng.cuda"] = cuda_states[0]
            if self.group.enabled:
                tensors.update({f"rng.cuda.r{rank}": state.clone() for rank, state in enumerate(cuda_states)})
        if self.state is not None:
            for name, part in zip(carry_names(self.model_config.cell), self.state):
                tensors[name] = torch.cat(self.group.gather_tensors(part.detach().contiguous()), dim=1).contiguous()
        if not self.group.is_main:
            return
        state = {
            "fingerprint": self._fingerprint(),
            "progress": dataclasses.asdict(self.progress),
            "curve": self.curve,
            "optimizer_groups": [
                {k: v for k, v in g.items() if k != "params"} for g in optimizer_state["param_groups"]
            ],
        }
        checkpoint.write(self.checkpoint_path, state, tensors)
        self.on_event({"event": "checkpoint", "step": self.progress.step, "path": str(self.checkpoint_path)})

    def _load_checkpoint(self) -> None:
        state, tensors = checkpoint.read(self.checkpoint_path)
        checkpoint.check_compatible(state.get("fingerprint", {}), self._fingerprint())
        model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        if self.model_config.tie_weights and "embedding.weight" in model_state:
            model_state["head.weight"] = model_state["embedding.weight"]
        try:
            self.model.load_state_dict(model_state)
            optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
            for name, value in tensors.items():
                if name.startswith("optimizer."):
                    _, index, key = name.split(".", 2)
                    optimizer_state.setdefault(int(index), {})[key] = value
            groups = self.optimizer.state_dict()["param_groups"]
            for group, saved in zip(groups, state["optimizer_groups"]):
                group.update(saved)
            self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
            self.progress = _Progress(**state["progress"])
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise LstmgenError(
                f"{self.checkpoint_path} does not fit this run ({str(error).splitlines()[0][:120]}); start over with {ref(RunOptions, 'overwrite')}"
            ) from None
        rank = self.group.rank
        torch.set_rng_state(tensors.get(f"rng.cpu.r{rank}", tensors["rng.cpu"]))
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors.get(f"rng.cuda.r{rank}", tensors["rng.cuda"]), self.device)
        carried = carry_names(self.model_config.cell)
        if all(name in tensors for name in carried):
            self.state = tuple(tensors[name][:, self.streams].contiguous().to(self.device) for name in carried)
        self.curve = list(state.get("curve", []))
        if self.group.is_main:
            self._truncate_metrics(self.progress.step)
            self._best_weights = self._bundle_weights()
        self.on_event({"event": "resumed", "step": self.progress.step})

    def _bundle_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights of the run's bundle (its best so far), for the final validation of a resumed run."""
        from .bundle import load_bundle, weights_to_state_dict

        try:
            bundle = load_bundle(self.output)
            return {
                name: value.detach().cpu() for name, value in weights_to_state_dict(self.model, bundle.tensors).items()
            }
        except (LstmgenError, RuntimeError, KeyError):
            return None
