"""Training: it learns, it resumes exactly, it refuses unsafe resumes, it locks its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lstmgen import trainer as trainer_module
from lstmgen.bundle import load_bundle
from lstmgen.config import ModelConfig, TokenizerConfig, TrainConfig
from lstmgen.data import tokenize_corpus
from lstmgen.errors import LstmgenError
from lstmgen.rundir import RunLock, run_directory
from lstmgen.schedule import learning_rate
from lstmgen.trainer import Trainer

STEPS = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path):
    return tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path_factory.mktemp("tok"), 0.1)


def _configs(corpus, **train) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(vocab_size=corpus.meta["vocab_size"], embedding_size=24, hidden_size=24, num_layers=2, dropout=0.2)
    options = dict(batch_size=4, seq_len=16, max_steps=STEPS, val_every=5, log_every=1, warmup_steps=3, seed=5, threads=2, val_max_tokens=2000)
    options.update(train)
    return model, TrainConfig(**options)


def _train(corpus, output: Path, stop_at: int | None = None, resume: bool = False, **train) -> Trainer:
    model_config, train_config = _configs(corpus, **train)
    trainer = Trainer(corpus, model_config, train_config, output, resume=resume)

    def on_event(event: dict) -> None:
        if stop_at is not None and event["event"] == "step" and event["step"] >= stop_at:
            trainer.request_stop()

    trainer.on_event = on_event
    trainer.run()
    return trainer


def _deterministic_metrics(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_directory(output) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_second", "seconds")} for r in records]


def test_training_lowers_the_loss(corpus, tmp_path: Path) -> None:
    trainer = _train(corpus, tmp_path / "m.lstmgen", max_steps=30, val_every=10)
    records = [json.loads(x) for x in (run_directory(tmp_path / "m.lstmgen") / "metrics.jsonl").read_text().splitlines()]
    periodic = [r for r in records if r["type"] == "val" and not r.get("final")]
    (final,) = [r for r in records if r.get("final")]
    assert periodic[-1]["val_loss"] < periodic[0]["val_loss"]
    assert trainer.progress.step == 30
    # The bundle records the final validation: the best periodic weights read again, over more text.
    best = min(periodic, key=lambda r: r["val_loss"])
    assert final["step"] == best["step"]
    bundle = load_bundle(tmp_path / "m.lstmgen")
    assert bundle.meta["training"]["best_val_loss"] == pytest.approx(final["val_loss"])
    assert bundle.meta["training"]["best_val_step"] == best["step"]


@pytest.mark.parametrize("k", [2, 5, 7])
def test_resume_is_bitwise_exact(corpus, tmp_path: Path, k: int) -> None:
    straight = tmp_path / "straight.lstmgen"
    _train(corpus, straight)
    resumed = tmp_path / "resumed.lstmgen"
    first = _train(corpus, resumed, stop_at=k)
    assert first.progress.step == k
    _train(corpus, resumed, resume=True)
    a = load_bundle(straight).tensors
    b = load_bundle(resumed).tensors
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _deterministic_metrics(straight) == _deterministic_metrics(resumed)


def test_resume_refuses_a_changed_model(corpus, tmp_path: Path) -> None:
    output = tmp_path / "m.lstmgen"
    _train(corpus, output, stop_at=2)
    model_config, train_config = _configs(corpus)
    model_config.hidden_size = 32
    with pytest.raises(LstmgenError, match=r"^cannot resume: hidden_size differs \(checkpoint 24, now 32\)") as refused:
        Trainer(corpus, model_config, train_config, output, resume=True).run()
    # Python names the keyword argument, the command line the flag.
    assert "--hidden-size differs (checkpoint 24, now 32)" in refused.value.for_command_line()
    assert str(refused.value).endswith("start over with overwrite=True")


def test_resume_allows_changing_the_step_budget(corpus, tmp_path: Path) -> None:
    output = tmp_path / "m.lstmgen"
    _train(corpus, output, stop_at=4)
    trainer = _train(corpus, output, resume=True, max_steps=8)
    assert trainer.progress.step == 8


def test_resume_refuses_a_different_corpus(corpus, tmp_path: Path) -> None:
    output = tmp_path / "m.lstmgen"
    _train(corpus, output, stop_at=2)
    other_text = tmp_path / "other.txt"
    other_text.write_text("completely different words\n" * 2000)
    other = tokenize_corpus([other_text], TokenizerConfig(vocab_size=400), tmp_path / "tok2", 0.1)
    model_config, train_config = _configs(other)
    with pytest.raises(LstmgenError, match="cannot resume"):
        Trainer(other, model_config, train_config, output, resume=True).run()


def test_resume_without_checkpoint(corpus, tmp_path: Path) -> None:
    model_config, train_config = _configs(corpus)
    with pytest.raises(LstmgenError, match="nothing to resume"):
        Trainer(corpus, model_config, train_config, tmp_path / "none.lstmgen", resume=True).run()


def test_lock_prevents_two_runs(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        with pytest.raises(LstmgenError, match="already writing"):
            with RunLock(tmp_path):
                pass


def test_learning_rate_schedule() -> None:
    config = TrainConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(config, 9, 0.0) == pytest.approx(1.0)
    assert learning_rate(config, 100, 0.5) == pytest.approx(0.55)
    assert learning_rate(config, 100, 1.0) == pytest.approx(0.1)


def test_fine_tuning_starts_from_the_base_weights(corpus, tmp_path: Path) -> None:
    base = tmp_path / "base.lstmgen"
    _train(corpus, base, max_steps=20)
    bundle = load_bundle(base)
    model_config, train_config = _configs(corpus, max_steps=1, learning_rate=1e-9, warmup_steps=0)
    tuned = tmp_path / "tuned.lstmgen"
    Trainer(corpus, model_config, train_config, tuned, init_weights=bundle.tensors).run()
    tuned_tensors = load_bundle(tuned).tensors
    for name, tensor in bundle.tensors.items():
        assert torch.allclose(tensor, tuned_tensors[name], atol=1e-6), name


def test_not_enough_disk_space_is_reported_before_training(corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    model_config, train_config = _configs(corpus)
    with pytest.raises(LstmgenError, match="not enough disk space"):
        Trainer(corpus, model_config, train_config, tmp_path / "m.lstmgen").run()
    assert not (tmp_path / "m.lstmgen").exists()


def test_validation_runs_every_few_percent_of_a_time_budget(corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset --val-every: a validation each 3 % of the budget, so the progress line's figure is never older."""
    from lstmgen import trainer as trainer_module

    clock = {"now": 0.0}
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock["now"])
    original_step = Trainer._train_step

    def timed_step(self, *args):  # every step "takes" 1 s of a 200 s budget
        clock["now"] += 1.0
        return original_step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", timed_step)
    _train(corpus, tmp_path / "m.lstmgen", max_steps=None, max_time=200.0, val_every=None, log_every=50, seq_len=8)
    records = [json.loads(x) for x in (run_directory(tmp_path / "m.lstmgen") / "metrics.jsonl").read_text().splitlines()]
    periodic = [r["step"] for r in records if r["type"] == "val" and not r.get("final")]
    assert periodic[0] == 6 and periodic[-1] == 200
    assert max(b - a for a, b in zip(periodic, periodic[1:])) <= 6
    assert [r.get("final") for r in records if r["type"] == "val"][-1] is True  # then the whole held-out split


def test_costly_validations_come_less_often(corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a validation costs more than 3 % of the training between two (a short run), they space out."""
    from lstmgen import trainer as trainer_module

    clock = {"now": 0.0}
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock["now"])
    original_step, original_validate = Trainer._train_step, Trainer._validate

    def timed_step(self, *args):  # every step "takes" 1 s of a 200 s budget
        clock["now"] += 1.0
        return original_step(self, *args)

    def slow_validate(self) -> None:  # every validation "takes" 2 s: 3 % of 67 s of training
        clock["now"] += 2.0
        original_validate(self)

    monkeypatch.setattr(Trainer, "_train_step", timed_step)
    monkeypatch.setattr(Trainer, "_validate", slow_validate)
    _train(corpus, tmp_path / "m.lstmgen", max_steps=None, max_time=200.0, val_every=None, log_every=50, seq_len=8)
    records = [json.loads(x) for x in (run_directory(tmp_path / "m.lstmgen") / "metrics.jsonl").read_text().splitlines()]
    periodic = [r["step"] for r in records if r["type"] == "val" and not r.get("final")]
    assert periodic[0] == 6
    assert all(b - a >= 60 for a, b in zip(periodic[:-1], periodic[1:-1]))  # at least 2 s / 3 % = 67 s apart
    assert 2 * len(periodic) <= 0.05 * 200 + 2  # validating took about 3 % of the time (plus the last one)


@pytest.mark.parametrize("cost", [trainer_module.FINAL_VALIDATION_COST, 1e9])
def test_final_validation_reads_the_held_out_split_with_the_best_weights(
    corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cost: float
) -> None:
    """The final figure is `eval` of the written bundle on the tokens its scope names.

    A short run reads the part of the split it can afford (a few % of its time); given the time, it
    reads the whole split.
    """
    from lstmgen.evaluation import bounds_size, evaluate_tokens

    monkeypatch.setattr(trainer_module, "FINAL_VALIDATION_COST", cost)
    trainer = _train(corpus, tmp_path / "m.lstmgen", max_steps=30, val_every=10)
    bundle = load_bundle(tmp_path / "m.lstmgen")
    validation = bundle.meta["training"]["validation"]
    tokens = trainer.val_tokens
    if cost > 1:
        assert validation["scope"] == "held-out split"
        num_bytes, num_chars = trainer.val_bytes, trainer.val_chars
    else:
        count = validation["tokens"]
        assert validation["scope"] == f"first {count:,} tokens of the held-out split"
        assert count < len(tokens) - 1
        tokens = tokens[: count + 1]
        num_bytes, num_chars = bounds_size(trainer.tokenizer, tokens, [(0, len(tokens) - 1)], trainer.documents)
    model = bundle.build_model()
    again = evaluate_tokens(model, tokens, num_bytes, num_chars, validation["streams"], fresh_starts=trainer.fresh_starts)
    assert validation["loss"] == pytest.approx(again["nll"], rel=1e-5)
    assert validation["bits_per_char"] == pytest.approx(again["bits_per_char"], rel=1e-5)


def test_device_defaults_keep_cpu_batches_and_widen_gpu_ones() -> None:
    from lstmgen.sizing import apply_device_defaults

    cpu = TrainConfig()
    apply_device_defaults(cpu, torch.device("cpu"))
    assert (cpu.batch_size, cpu.seq_len, cpu.learning_rate) == (TrainConfig().batch_size, TrainConfig().seq_len, TrainConfig().learning_rate)
    gpu = TrainConfig()
    apply_device_defaults(gpu, torch.device("cuda"))
    assert (gpu.batch_size, gpu.seq_len) == (128, 128)


def test_long_budgets_raise_dropout() -> None:
    """Runs that will read the corpus ≥ 15 times get dropout 0.3; shorter runs keep the model's."""
    from lstmgen.sizing import LONG_RUN_DROPOUT, budget_dropout

    model = ModelConfig(vocab_size=300, embedding_size=16, hidden_size=16, num_layers=1, dropout=0.2)
    def unmeasured() -> float:
        raise AssertionError("a step or epoch budget needs no speed")

    short = TrainConfig(batch_size=4, seq_len=8, max_steps=100)  # 3,200 tokens
    assert budget_dropout(model, short, train_tokens=1000, speed=unmeasured) == 0.2
    long = TrainConfig(batch_size=4, seq_len=8, max_steps=1000)  # 32,000 tokens = 32 passes
    assert budget_dropout(model, long, train_tokens=1000, speed=unmeasured) == LONG_RUN_DROPOUT
    assert budget_dropout(model, TrainConfig(epochs=20), train_tokens=1000, speed=unmeasured) == LONG_RUN_DROPOUT
    # A time budget is turned into tokens by the measured speed (here: a fake; a run measures once and all ranks agree on it).
    timed = TrainConfig(batch_size=4, seq_len=8, max_time=10.0)
    assert budget_dropout(model, timed, 1000, lambda: 1000.0) == 0.2  # 10 passes
    assert budget_dropout(model, timed, 1000, lambda: 2000.0) == LONG_RUN_DROPOUT  # 20 passes
    assert budget_dropout(ModelConfig(vocab_size=300, dropout=0.5), long, 1000, unmeasured) == 0.5  # never lowered
