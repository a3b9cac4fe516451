"""CUDA paths: autocast training, checkpoints and bundles that load on a CPU. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lstmgen
from lstmgen.config import ModelConfig, TokenizerConfig, TrainConfig
from lstmgen.data import tokenize_corpus
from lstmgen.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_bundle_loads_on_cpu(small_corpus: Path, tmp_path: Path, precision: str) -> None:
    corpus = tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path / "tok", 0.1)
    model_config = ModelConfig(vocab_size=400, embedding_size=64, hidden_size=64, num_layers=2)
    train_config = TrainConfig(device="cuda", precision=precision, batch_size=16, seq_len=32, max_steps=60, val_every=30, warmup_steps=5)
    output = tmp_path / "gpu.lstmgen"
    result = Trainer(corpus, model_config, train_config, output).run()
    assert result.best_val_loss is not None and result.best_val_loss < 5.5
    on_cpu = lstmgen.load(output, device="cpu")
    assert next(on_cpu.model.parameters()).device.type == "cpu"
    on_gpu = lstmgen.load(output, device="cuda")
    assert len(on_gpu.generate("A", max_tokens=20, seed=1)) > 0
    text = small_corpus.read_text()[:2000]
    assert on_cpu.evaluate(text)["nll"] == pytest.approx(on_gpu.evaluate(text)["nll"], rel=1e-3)


def test_cuda_resume_continues(small_corpus: Path, tmp_path: Path) -> None:
    corpus = tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path / "tok", 0.1)
    model_config = ModelConfig(vocab_size=400, embedding_size=32, hidden_size=32, num_layers=1)
    config = TrainConfig(device="cuda", batch_size=8, seq_len=16, max_steps=20, val_every=10, log_every=1)
    output = tmp_path / "m.lstmgen"
    trainer = Trainer(corpus, model_config, config, output)
    trainer.on_event = lambda e: trainer.request_stop() if e["event"] == "step" and e["step"] >= 7 else None
    trainer.run()
    resumed = Trainer(corpus, model_config, config, output, resume=True).run()
    assert resumed.steps == 20
