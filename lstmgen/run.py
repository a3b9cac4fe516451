"""Planning a training run: which settings win, what is reused, what may be replaced; then training.

`train(corpus, output, **options)` is `lstmgen train` for Python, with the same options (the fields
of TokenizerConfig, ModelConfig, TrainConfig and RunOptions, by name) and the same defaults; the CLI
calls it too. Settings are decided in this order, later ones winning: a resumed run's checkpoint
(or, for a fresh run, the device's defaults), the config file, the options given. Then:

- a fresh run takes 15 minutes unless a step, time or epoch limit is given;
- the model is the checkpoint's, the `init_from` model's, or one sized for the corpus; the
  embedding size follows a given hidden size; dropout rises for long budgets (lstmgen.sizing);
- the corpus is tokenized, or an up-to-date encoding is reused (with the run's own, `tokenizer`'s
  or `init_from`'s tokenizer);
- the run directory's lock is taken before anything in it is read or written, and a fresh run
  never replaces another run's model or checkpoint unless `overwrite` says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import checkpoint
from .config import (
    TRAINING_SECTIONS,
    ModelConfig,
    RunOptions,
    TokenizerConfig,
    TrainConfig,
    apply_settings,
    from_dict,
    load_config_file,
    parse_duration,
    to_dict,
)
from .errors import LstmgenError
from .options import declared, declared_by_name, ref

log = logging.getLogger("lstmgen")

#: A fresh run without a step, time or epoch limit trains this long.
DEFAULT_MAX_TIME = 15 * 60.0
#: The limits that end a run; giving one replaces the others of the config file and the default.
LIMITS = ("max_time", "max_steps", "epochs")

Event = dict[str, Any]


def default_output(corpus: Sequence[Path | str]) -> Path:
    """FIRST-CORPUS-NAME.lstmgen in the current directory."""
    return Path(Path(corpus[0]).stem + ".lstmgen")


def option_names() -> list[str]:
    """The keyword arguments of `train`: every option of the run and of its three config sections."""
    return [
        o.name
        for cls in (RunOptions, *TRAINING_SECTIONS.values())
        for o in declared(cls)
        if o.flag or o.default is not None
    ]


def train(
    corpus: Sequence[Path | str] | Path | str,
    output: Path | str | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    **options: Any,
) -> Any:
    """Train a model on `corpus` (one path or several) and write the best one to `output` (a `.lstmgen` bundle).

    Keyword arguments: any option of `lstmgen train`, by its field name (`max_time="5m"`,
    `hidden_size=256`, `learning_rate=3e-3`, `resume=True`...; see README.md). `on_event` receives
    the run's progress (dicts with an "event" key). Returns the trainer's TrainResult.
    """
    plan = _Plan(corpus, output, options, on_event)
    return plan.execute(dry_run=False)


def dry_run(
    corpus: Sequence[Path | str] | Path | str,
    output: Path | str | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """What `train` would do, trained nothing: the resolved configuration, the parameter count and the measured speed."""
    plan = _Plan(corpus, output, options, on_event)
    return plan.execute(dry_run=True)


class _Plan:
    """One run's decisions, checked before any work (see the module docstring)."""

    def __init__(
        self, corpus: Any, output: Any, options: dict[str, Any], on_event: Callable[[Event], None] | None
    ) -> None:
        from .data import check_corpus_file
        from .distributed import setup as setup_distributed

        self.on_event = on_event or (lambda event: None)
        self.corpus = [Path(p) for p in ([corpus] if isinstance(corpus, (str, Path)) else corpus)]
        if not self.corpus:
            raise LstmgenError("give at least one corpus file")
        self.run, self.given = _split_options(
            {**options, "output": output if output is not None else options.get("output")}
        )
        self.group = setup_distributed()
        if self.run.resume and self.run.overwrite:
            raise LstmgenError(
                f"{ref(RunOptions, 'resume')} continues the run and {ref(RunOptions, 'overwrite')} starts it over; give one of them"
            )
        for path in self.corpus:
            check_corpus_file(path)
        self.output = Path(self.run.output) if self.run.output is not None else default_output(self.corpus)
        self.run_dir = checkpoint.run_directory(self.output)
        self._check_paths()
        self.saved = checkpoint.saved_configs(self.output) if self.run.resume else None
        if self.run.resume and self.saved is None:
            raise LstmgenError(
                f"nothing to resume: {self.run_dir / checkpoint.NAME} does not exist; run without {ref(RunOptions, 'resume')}"
            )
        self.file = load_config_file(self.run.config) if self.run.config is not None else {}
        self.train_config = self._train_config()
        self._check_model_options()
        from .device import resolve_device, use_threads

        self.device = resolve_device(self.train_config.device)
        use_threads(self.train_config.threads)
        self.tokenizer_config = self._tokenizer_config()
        self.init_bundle = self._init_bundle()
        self._speed: float | None = None

    # -- before any work --------------------------------------------------------------------------

    def _check_paths(self) -> None:
        """Inputs declared to the guard (fsutil), outputs checked against them, before any work."""
        import os

        from .fsutil import BUNDLE, check_output, check_output_directory, declare_input, stat_or_none
        from .registry import resolve_model
        from .rundir import RUN_FILES

        self.init_path = resolve_model(str(self.run.init_from), os.environ) if self.run.init_from is not None else None
        tokenizer_dir = self.run.tokenizer
        if tokenizer_dir is not None and stat_or_none(tokenizer_dir, "read tokenized corpus") is None:
            raise LstmgenError(
                f"tokenized corpus {tokenizer_dir} does not exist; create it with `lstmgen tokenize CORPUS -o {tokenizer_dir}`"
            )
        for path in self.corpus:
            declare_input(path, "a corpus file")
        declare_input(tokenizer_dir, f"the {ref(RunOptions, 'tokenizer')} directory")
        declare_input(self.init_path, f"the {ref(RunOptions, 'init_from')} model")
        declare_input(self.run.config, f"the {ref(RunOptions, 'config')} file")
        check_output(self.output, BUNDLE, "bundle")
        check_output_directory(self.run_dir, "run directory", members=RUN_FILES)
        if tokenizer_dir is not None and os.path.realpath(tokenizer_dir) == os.path.realpath(self.run_dir / "tokens"):
            raise LstmgenError(
                f"{ref(RunOptions, 'tokenizer')} {tokenizer_dir} is the encoding this run writes; copy it elsewhere first, "
                f"or drop {ref(RunOptions, 'tokenizer')}"
            )

    def _train_config(self) -> TrainConfig:
        """The checkpoint's (or the device's defaults), then the config file's [train], then the options given."""
        from .device import resolve_device
        from .sizing import apply_device_defaults

        given = dict(self.given["train"])
        for name in ("max_time", "checkpoint_every"):
            if isinstance(given.get(name), str):
                given[name] = parse_duration(given[name], declared_by_name(TrainConfig)[name].ref)
        config = dataclasses.replace(self.saved[1]) if self.saved else TrainConfig()
        if not self.saved:
            apply_device_defaults(
                config, resolve_device(given.get("device", config.device))
            )  # the file and the options still win
        apply_settings(config, self.file.get("train", {}), "train")
        if not self.saved and any(name in given for name in LIMITS):
            config.max_time, config.max_steps, config.epochs = None, None, None
        for name, value in given.items():
            setattr(config, name, value)
        if not self.saved and all(getattr(config, name) is None for name in LIMITS):
            config.max_time = DEFAULT_MAX_TIME
        config.validate()
        if self.saved and config.val_fraction != self.saved[1].val_fraction:
            raise LstmgenError(
                f"cannot resume: {ref(TrainConfig, 'val_fraction')} differs (checkpoint {self.saved[1].val_fraction!r}, "
                f"now {config.val_fraction!r}); drop the option or start over with {ref(RunOptions, 'overwrite')}"
            )
        return config

    def _check_model_options(self) -> None:
        """Refuse impossible model options and [model] settings before any work (the vocabulary is known only later)."""
        probe = ModelConfig(vocab_size=2)
        apply_settings(probe, self.file.get("model", {}), "model")
        for name, value in self.given["model"].items():
            setattr(probe, name, value)
        probe.validate()

    def _tokenizer_config(self) -> TokenizerConfig:
        config = TokenizerConfig()
        apply_settings(config, self.file.get("tokenizer", {}), "tokenizer")
        for name, value in self.given["tokenizer"].items():
            setattr(config, name, value)
        config.validate()
        #: documents given (here or in the file) override the convention of `tokenizer` or `init_from`.
        self.documents = self.given["tokenizer"].get("documents", self.file.get("tokenizer", {}).get("documents"))
        return config

    def _init_bundle(self) -> Any:
        """The `init_from` model, whose architecture a run keeps: an option that would change it is refused now."""
        if self.init_path is None:
            return None
        from .bundle import load_bundle

        bundle = load_bundle(self.init_path)
        base = bundle.model_config
        kept = ("embedding_size", "hidden_size", "num_layers", "cell", "tie_weights")
        changed = [
            declared_by_name(ModelConfig)[name]
            for name in kept
            if name in self.given["model"] and self.given["model"][name] != getattr(base, name)
        ]
        if changed:
            shown = [o.ref_to(False) if o.kind == "bool" else o.ref for o in changed]
            raise LstmgenError(
                f"{ref(RunOptions, 'init_from')} keeps the base model's architecture ({base.num_layers}×{base.hidden_size} "
                f"{base.cell}, embedding {base.embedding_size}{', tied' if base.tie_weights else ', untied'} weights); "
                f"drop {', '.join(shown)}"
            )
        return bundle

    # -- the run ----------------------------------------------------------------------------------

    def execute(self, dry_run: bool) -> Any:
        from .rundir import RunLock
        from .signals import termination_raises

        # The lock comes before anything in the run directory is read for reuse or written: a refused run changes nothing.
        lock: Any = RunLock(self.run_dir) if self.group.is_main else contextlib.nullcontext()
        with termination_raises(), lock:
            if self.group.is_main:
                self._refuse_replacing_a_run()
                if self.saved:
                    self._check_resume_inputs()
            try:  # until training starts, a failure removes the run directory this run made
                if self.group.is_main:
                    corpus_data = self._prepare_corpus()
                    _check_corpus_fits_a_batch(corpus_data.split, self.train_config)
                    self.group.barrier()
                else:
                    self.group.barrier()  # rank 0 has written the encoding; the other ranks find it ready
                    corpus_data = self._prepare_corpus()
                model_config = self._model_config(corpus_data)
            except BaseException:
                if self.group.is_main and lock.created:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            if dry_run:
                return _dry_run_report(
                    model_config, self.train_config, corpus_data, self.device, self.speed(model_config)
                )
            return self._train(corpus_data, model_config)

    def _train(self, corpus_data: Any, model_config: ModelConfig) -> Any:
        from .trainer import Trainer

        trainer = Trainer(
            corpus_data,
            model_config,
            self.train_config,
            self.output,
            on_event=self.on_event,
            resume=self.run.resume,
            init_weights=self.init_bundle.tensors if self.init_bundle is not None else None,
            group=self.group,
        )
        try:
            return trainer.run()
        finally:
            if self.group.enabled:
                from .distributed import shutdown

                shutdown()

    def _refuse_replacing_a_run(self) -> None:
        """A fresh run must not replace a trained model or another run's checkpoint unless `overwrite` says so."""
        found = describe_previous_run(self.output)
        if found is None or self.run.resume:
            return
        if self.run.overwrite:
            log.info(f"--overwrite: starting over, replacing what is there: {found}")
            return
        raise LstmgenError(
            f"{found}; continue it with {ref(RunOptions, 'resume')}, write to another {ref(RunOptions, 'output')}, "
            f"or start over with {ref(RunOptions, 'overwrite')}"
        )

    def _check_resume_inputs(self) -> None:
        """Refuse a resume with another corpus or tokenizer before the run's encoding is touched."""
        from .data import corpus_digest, file_sha256
        from .fsutil import read_regular_file

        fingerprint = checkpoint.read_state(self.run_dir / checkpoint.NAME).get("fingerprint") or {}
        expected = fingerprint.get("corpus_sha256")
        if expected is not None and corpus_digest([file_sha256(p) for p in self.corpus]) != expected:
            raise LstmgenError(
                "cannot resume: the corpus differs from the checkpoint's; pass the run's corpus files (same order), "
                f"or start over with {ref(RunOptions, 'overwrite')}"
            )
        proto = None
        if self.init_bundle is not None:
            proto = self.init_bundle.tokenizer.model_proto
        elif self.run.tokenizer is not None:
            proto = read_regular_file(Path(self.run.tokenizer) / "tokenizer.model", 64 << 20, "tokenizer")
        expected = fingerprint.get("tokenizer_sha256")
        if proto is not None and expected is not None and hashlib.sha256(proto).hexdigest() != expected:
            raise LstmgenError(
                f"cannot resume: the tokenizer differs from the checkpoint's; drop {ref(RunOptions, 'tokenizer')}/"
                f"{ref(RunOptions, 'init_from')}, or start over with {ref(RunOptions, 'overwrite')}"
            )

    def _prepare_corpus(self) -> Any:
        """The tokenized corpus: reuse an up-to-date encoding, else tokenize (with the given tokenizer).

        Resuming keeps the run's own tokenizer, whatever the tokenizer options say now."""
        from .data import TokenizedCorpus, file_sha256, reusable_encoding
        from .tokenizer import Tokenizer

        tokens_dir = self.run_dir / "tokens"
        val_fraction, errors, documents = self.train_config.val_fraction, self.run.errors, self.documents
        tokenizer: Any = None
        if self.init_bundle is not None:
            tokenizer = self.init_bundle.tokenizer
            settings = _tokenizer_config_from(self.init_bundle.meta.get("tokenizer", {}).get("settings") or {})
            settings.documents = documents or settings.documents
        elif self.run.tokenizer is not None:
            given = TokenizedCorpus.open(self.run.tokenizer)
            same_files = [f.get("sha256") for f in given.meta.get("files", [])] == [file_sha256(p) for p in self.corpus]
            same_documents = documents is None or given.meta.get("tokenizer", {}).get("documents", "file") == documents
            if same_files and same_documents and given.meta["split"].get("val_fraction") == val_fraction:
                return given
            tokenizer = Tokenizer.load(given.tokenizer_path)
            settings = _tokenizer_config_from(given.meta.get("tokenizer", {}))
            settings.documents = documents or settings.documents
        elif self.run.resume and tokens_dir.exists():
            settings = _tokenizer_config_from(TokenizedCorpus.open(tokens_dir).meta.get("tokenizer", {}))
        else:
            settings = self.tokenizer_config
        found = reusable_encoding(tokens_dir, self.corpus, settings, val_fraction, errors)
        if found is not None and (
            tokenizer is None or found.meta.get("tokenizer_sha256") == hashlib.sha256(tokenizer.model_proto).hexdigest()
        ):
            log.info(f"reusing the encoded corpus in {tokens_dir}")
            return found
        return self._tokenize(settings, tokens_dir, tokenizer)

    def _tokenize(self, settings: TokenizerConfig, directory: Path, tokenizer: Any) -> Any:
        from .data import tokenize_corpus

        self.on_event({"event": "encoding", "training_tokenizer": tokenizer is None})
        started = time.monotonic()
        try:
            return tokenize_corpus(
                self.corpus,
                settings,
                directory,
                self.train_config.val_fraction,
                errors=self.run.errors,
                tokenizer=tokenizer,
                on_progress=lambda done, total: self.on_event(
                    {"event": "encoding-progress", "done": done, "total": total}
                ),
            )
        finally:
            self.on_event({"event": "encoded", "seconds": time.monotonic() - started})

    def _model_config(self, corpus_data: Any) -> ModelConfig:
        """The checkpoint's, the base model's, or one sized for the corpus; then the file's [model] and the options given."""
        from .sizing import budget_dropout, suggest_model

        given = self.given["model"]
        fresh = not self.saved and self.init_bundle is None
        if self.saved:
            config = self.saved[0]
        elif self.init_bundle is not None:
            config = dataclasses.replace(
                self.init_bundle.model_config
            )  # a copy: dropout may change, the base stays as it is
        else:
            config = suggest_model(corpus_data.split, corpus_data.meta["vocab_size"], self.device)
        file_model = dict(self.file.get("model", {}))
        if file_model and fresh:
            if "hidden_size" in file_model and "embedding_size" not in file_model:
                file_model["embedding_size"] = file_model["hidden_size"]
            apply_settings(config, file_model, "model")
        for name, value in given.items():
            setattr(config, name, value)
        if fresh and "hidden_size" in given and "embedding_size" not in given:
            config.embedding_size = given["hidden_size"]
        if fresh and "dropout" not in given and "dropout" not in file_model:
            config.dropout = budget_dropout(config, self.train_config, corpus_data.split, lambda: self.speed(config))
        config.validate()
        return config

    def speed(self, model_config: ModelConfig) -> float:
        """Training tokens/s of the model, measured once per run (all ranks of a distributed run use rank 0's figure)."""
        if self._speed is None:
            from .sizing import measure_tokens_per_second

            self._speed = self.group.broadcast_float(
                measure_tokens_per_second(model_config, self.train_config, self.device)
            )
        return self._speed


def _split_options(options: dict[str, Any]) -> tuple[RunOptions, dict[str, dict[str, Any]]]:
    """The run's own options, and the settings given for each section; None is "not given". Unknown names are refused."""
    sections: dict[str, dict[str, Any]] = {section: {} for section in TRAINING_SECTIONS}
    run: dict[str, Any] = {}
    owners = {o.name: ("run", o) for o in declared(RunOptions)}
    for section, cls in TRAINING_SECTIONS.items():
        owners.update({o.name: (section, o) for o in declared(cls) if o.flag or o.default is not None})
    for name, value in options.items():
        if name not in owners:
            raise LstmgenError(f"unknown option {name!r}; the options are {', '.join(option_names())}")
        if value is None:
            continue
        section, declared_option = owners[name]
        if section == "run":
            run[name] = value
        else:
            if not (declared_option.duration and isinstance(value, str)):
                declared_option.check(value)
            sections[section][name] = value
    run_options = RunOptions(**run)
    run_options.validate()
    return run_options, sections


def _tokenizer_config_from(settings: dict[str, Any]) -> TokenizerConfig:
    return from_dict(TokenizerConfig, {k: v for k, v in settings.items() if k != "errors"}, "tokenizer settings")


def _check_corpus_fits_a_batch(train_tokens: int, config: TrainConfig) -> None:
    if (train_tokens - 1) // config.batch_size < config.seq_len:
        raise LstmgenError(
            f"the training split ({train_tokens} tokens) is shorter than one batch of {config.batch_size} streams × {config.seq_len + 1} tokens; "
            f"give more text or lower {ref(TrainConfig, 'batch_size')} / {ref(TrainConfig, 'seq_len')}"
        )


def _dry_run_report(
    model_config: ModelConfig, train_config: TrainConfig, corpus_data: Any, device: Any, speed: float
) -> dict[str, Any]:
    """The resolved configuration, the parameter count and the measured training speed."""
    import torch

    from .model import LSTMLanguageModel

    return {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "tokenizer": corpus_data.meta.get("tokenizer"),
        "parameters": LSTMLanguageModel(model_config).num_parameters(),
        "train_tokens": corpus_data.split,
        "val_tokens": corpus_data.num_tokens - corpus_data.split,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "estimated_tokens_per_second": round(speed),
    }


# -- what a fresh run would replace ----------------------------------------------------------------


def describe_previous_run(output: Path) -> str | None:
    """What a fresh run into `output` would replace, in words (steps, bits per character, date), or None."""
    from .fsutil import stat_or_none

    run_dir = checkpoint.run_directory(output)
    parts = []
    bundle = stat_or_none(output)
    if bundle is not None and bundle.st_size > 0:
        meta = _bundle_training(output)
        steps = meta.get("steps")
        bpc = meta.get("best_val_bits_per_char")
        facts = [
            f"{bpc:.2f} bits/char" if isinstance(bpc, (int, float)) and math.isfinite(bpc) else "no validation",
            _date(bundle.st_mtime),
        ]
        trained = f"a model trained for {plural(steps, 'step')}" if isinstance(steps, int) else "a model bundle"
        parts.append(f"{output} already holds {trained} ({', '.join(facts)})")
    saved = stat_or_none(run_dir / checkpoint.NAME)
    if saved is not None:
        step = (checkpoint.read_state(run_dir / checkpoint.NAME).get("progress") or {}).get("step")
        at = f"at step {step:,}" if isinstance(step, int) else "(unreadable)"
        parts.append(f"{run_dir} holds the checkpoint of a run {at} ({_date(saved.st_mtime)})")
    return " and ".join(parts) or None


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _bundle_training(path: Path) -> dict[str, Any]:
    """The `training` record of a bundle's metadata, read without the weights ({} when unreadable)."""
    from .registry import bundle_metadata

    try:
        training = bundle_metadata(path).get("training")
    except Exception:  # a damaged bundle is still a bundle: say so without its figures
        return {}
    return training if isinstance(training, dict) else {}
