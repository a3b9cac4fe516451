"""The quality harness scores every contestant on exactly the text lstmgen itself holds out."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmgen.config import TokenizerConfig
from lstmgen.data import tokenize_corpus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("quality", None)


def test_split_is_lstmgens_own(quality, small_corpus: Path, tmp_path: Path) -> None:
    corpus = tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path / "tok", 0.1)
    split = quality.Split.of(small_corpus)
    assert split.train_text + split.val_text == small_corpus.read_text()
    assert len(split.val_text) == corpus.meta["split"]["val_chars"]
    assert len(split.train_text.encode()) == corpus.meta["split"]["train_bytes"]


def test_gpt_scoring_counts_every_position_once(quality) -> None:
    """Sliding-window scoring equals one full-context pass when the text fits one context."""
    torch.manual_seed(0)
    model = quality.SmallGPT(vocab=50, width=32, layers=1, context=64, dropout=0.0).eval()
    tokens = np.random.default_rng(0).integers(0, 50, 60).astype(np.uint16)
    with torch.no_grad():
        ids = torch.from_numpy(tokens.astype(np.int64))
        logits = model(ids[:-1].unsqueeze(0))[0]
        full = float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))
    assert quality.gpt_nll(model, tokens) == pytest.approx(full, rel=1e-5)
    longer = np.random.default_rng(1).integers(0, 50, 500).astype(np.uint16)
    assert math.isfinite(quality.gpt_nll(model, longer))


def test_gpt_width_matches_the_parameter_count(quality) -> None:
    width = quality.gpt_width(4_800_000, 1152, 4, 256)
    model = quality.SmallGPT(1152, width, 4, 256, 0.0)
    assert sum(p.numel() for p in model.parameters()) == quality.gpt_parameters(1152, width, 4, 256)
    assert abs(quality.gpt_parameters(1152, width, 4, 256) - 4_800_000) < 0.1 * 4_800_000
