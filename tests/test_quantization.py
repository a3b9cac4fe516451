"""int8 kernels and the int8-or-float32 choice (issue 15 §3), with injected timings: no test here times anything.

Both kernels of an int8 product compute the same integer sums, so which one runs never changes a number;
where the int8 model is slower than the float one for a use, float32 runs with one warning on stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstmgen
from lstmgen import quantization
from lstmgen.quantization import Int8LSTMLanguageModel, Int8Linear, choose_kernel, fastest, quantize_activations

from .conftest import ROOT


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    """Every test starts with no kernel chosen, $LSTMGEN_INT8 unset and timings that must be injected."""
    monkeypatch.setattr(quantization, "_KERNEL_CHOICES", {})
    monkeypatch.delenv("LSTMGEN_INT8", raising=False)

    def no_timing(*args, **kwargs):
        raise AssertionError("a test timed something: inject the timings")

    monkeypatch.setattr(quantization, "measure", no_timing)


def timings(**seconds: float):
    """A stand-in for quantization.measure: each candidate took these seconds; records the candidates it saw."""
    seen: list[list[str]] = []

    def measure(candidates, **settings):
        seen.append(list(candidates))
        for run in candidates.values():  # the candidates must run (a broken one would fail here)
            run()
        return {name: [seconds[name], seconds[name] * 1.5] for name in candidates}

    measure.seen = seen  # type: ignore[attr-defined]
    return measure


def _force(model: Int8LSTMLanguageModel, kernel: str) -> None:
    linears = [linear for pair in model.layers for linear in pair] + [model.head]
    for linear in linears:
        linear.kernels = dict.fromkeys(quantization.ROW_BUCKETS, kernel)


# -- the kernels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [7, 512, EXACT := quantization.EXACT_FLOAT_DEPTH, EXACT + 1, 2500])
def test_both_kernels_give_the_same_sums(depth: int) -> None:
    """Float32 over int8 values is exact up to EXACT_FLOAT_DEPTH terms; deeper products are summed in slices."""
    generator = torch.Generator().manual_seed(depth)
    linear = Int8Linear(torch.randn(48, depth, generator=generator) * 3, torch.randn(48, generator=generator))
    # rows at full scale: every value ±127, the largest sums the kernels can meet
    x = torch.cat([torch.randn(5, depth, generator=generator), torch.ones(1, depth), -torch.ones(1, depth)])
    values, _ = quantize_activations(x)
    exact = torch._int_mm(values.to(torch.int8), linear.weight_t)
    assert torch.equal(linear.sums(values, "int8"), exact.float())
    assert torch.equal(linear.sums(values, "float"), exact.float())
    assert len(linear.float_slices()) == -(-depth // quantization.EXACT_FLOAT_DEPTH)


def test_model_numbers_do_not_depend_on_the_kernel(lm) -> None:
    int8 = Int8LSTMLanguageModel(lm.model)
    tokens = torch.tensor([lm._sampler.prompt_ids("ROMEO: What, ho! apothecary!")] * 3)
    results = {}
    for kernel in quantization.KERNELS:
        _force(int8, kernel)
        logits, _ = int8(tokens)
        state, steps = int8.initial_state(3), []
        for t in range(tokens.shape[1]):
            step_logits, state = int8.step(tokens[:, t], state)
            steps.append(step_logits)
        assert torch.equal(torch.stack(steps, dim=1), logits)  # stepping equals reading the sequence
        results[kernel] = logits
    assert torch.equal(results["int8"], results["float"])
    float_logits, _ = lm.model(tokens)
    assert (float_logits - results["int8"]).abs().max() < 0.05 * float_logits.abs().max()


# -- choosing a kernel ----------------------------------------------------------------------------------


def test_fastest_prefers_the_first_within_the_margin() -> None:
    assert fastest({"int8": [2.0, 1.0], "float": [0.95]}) == "float"
    assert fastest({"int8": [1.0], "float": [0.95]}, margin=0.9) == "int8"
    assert fastest({"int8": [1.0], "float": [0.85, 3.0]}, margin=0.9) == "float"
    assert fastest({"int8": [1.0], "float": [1.0]}) == "int8"


@pytest.mark.parametrize("int8_time, float_time, expected", [(1.0, 0.5, "float"), (1.0, 0.95, "int8"), (0.3, 1.0, "int8")])
def test_kernel_is_measured_once_per_shape(monkeypatch, int8_time: float, float_time: float, expected: str) -> None:
    monkeypatch.setattr(quantization, "int8_gemm_is_native", lambda: True)
    measure = timings(int8=int8_time, float=float_time)
    monkeypatch.setattr(quantization, "measure", measure)
    first, second = Int8Linear(torch.randn(64, 32)), Int8Linear(torch.randn(64, 32))
    first(torch.randn(3, 32))
    second(torch.randn(2, 32))
    assert first.kernels == second.kernels == {4: expected}  # 3 rows: the bucket of 4
    assert measure.seen == [["int8", "float"]]  # the second layer of that shape reuses the choice
    first(torch.randn(1, 32))
    assert len(measure.seen) == 2 and set(first.kernels) == {1, 4}


def test_without_a_native_int8_gemm_the_float_kernel_runs_unmeasured(monkeypatch) -> None:
    """Without AVX512-VNNI (or with oneDNN off) torch's _int_mm is a scalar loop: never measured, never used."""
    monkeypatch.setattr(quantization, "int8_gemm_is_native", lambda: False)
    linear = Int8Linear(torch.randn(64, 32))
    assert choose_kernel(linear, 16) == "float"


def test_int8_gemm_is_native_follows_the_cpu_and_onednn(monkeypatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False, raising=False)
    assert not quantization.int8_gemm_is_native()
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    assert quantization.int8_gemm_is_native() == (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not quantization.int8_gemm_is_native()


def test_reduced_float32_precision_keeps_the_int8_kernel(monkeypatch) -> None:
    monkeypatch.setattr(quantization, "int8_gemm_is_native", lambda: True)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert choose_kernel(Int8Linear(torch.randn(64, 32)), 16) == "int8"


# -- int8 or float32 per use ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tiny_bundle: Path):
    return lstmgen.load(tiny_bundle)


def _load(tiny_bundle: Path, monkeypatch, int8: float, float32: float):
    monkeypatch.setattr(quantization, "int8_gemm_is_native", lambda: True)
    measure = timings(int8=int8, float=int8, float32=float32)
    monkeypatch.setattr(quantization, "measure", measure)
    return lstmgen.load(tiny_bundle, quantize="int8"), measure


def test_slower_int8_falls_back_to_float32_with_one_warning(tiny_bundle: Path, lm, monkeypatch, caplog) -> None:
    lm8, measure = _load(tiny_bundle, monkeypatch, int8=3.0, float32=1.0)
    with caplog.at_level(logging.WARNING, logger="lstmgen"):
        texts = [lm8.generate("ROMEO:", seed=seed, max_tokens=15) for seed in (1, 2)]
        texts += [s.text for s in lm8.sample_many("ROMEO:", 3, seed=1, max_tokens=15)]
    assert texts[:3] == [lm.generate("ROMEO:", seed=seed, max_tokens=15) for seed in (1, 2, 1)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "int8 generation measured 3.00x slower than float32" in warnings[0]
    assert "LSTMGEN_INT8=always" in warnings[0]
    assert ["int8", "float32"] in measure.seen and lm8.quantize_ran("generation") is None


def test_faster_int8_runs_int8_silently(tiny_bundle: Path, monkeypatch, caplog) -> None:
    lm8, _ = _load(tiny_bundle, monkeypatch, int8=1.0, float32=1.0)  # a tie keeps int8
    with caplog.at_level(logging.WARNING, logger="lstmgen"):
        text = lm8.generate("ROMEO:", seed=3, max_tokens=15)
        result = lm8.evaluate("ROMEO: What, ho! apothecary!\n")
    assert not caplog.records
    monkeypatch.setenv("LSTMGEN_INT8", "always")
    forced = lstmgen.load(tiny_bundle, quantize="int8")
    assert text == forced.generate("ROMEO:", seed=3, max_tokens=15)
    assert result == forced.evaluate("ROMEO: What, ho! apothecary!\n")
    assert lm8.quantize_ran("generation") == lm8.quantize_ran("evaluation") == "int8"


def test_always_never_measures_the_models(tiny_bundle: Path, monkeypatch) -> None:
    monkeypatch.setenv("LSTMGEN_INT8", "always")
    monkeypatch.setattr(quantization, "int8_gemm_is_native", lambda: False)  # kernels chosen without timing
    lm8 = lstmgen.load(tiny_bundle, quantize="int8")
    lm8.generate("ROMEO:", seed=3, max_tokens=5)
    lm8.evaluate("ROMEO:\n")
    assert lm8._sampler.stepper.runs_int8 == {"generation": True, "evaluation": True}


def test_evaluation_decides_apart_from_generation(tiny_bundle: Path, lm, monkeypatch, tmp_path: Path) -> None:
    from lstmgen.evaluation import evaluate_files

    lm8, _ = _load(tiny_bundle, monkeypatch, int8=2.0, float32=1.0)
    text = tmp_path / "held-out.txt"
    text.write_text((ROOT / "corpora" / "tinyshakespeare.txt").read_text()[300_000:302_000])
    [found] = evaluate_files(lm8, [text], with_baselines=False)
    [expected] = evaluate_files(lm, [text], with_baselines=False)
    assert found.result["quantize"] == "none" and found.result["quantize_requested"] == "int8"
    assert found.result["bits_per_byte"] == expected.result["bits_per_byte"]
    assert lm8._sampler.stepper.runs_int8 == {"evaluation": False}


# -- the command line -------------------------------------------------------------------------------------

_CLI_WITH_TIMINGS = """
import sys
from lstmgen import quantization
def measure(candidates, **settings):  # injected timings: the int8 model 3x slower than float32
    for run in candidates.values():
        run()
    return {name: [{"int8": 3.0, "float32": 1.0}.get(name, 1.0)] for name in candidates}
quantization.measure = measure
from lstmgen.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_cli_says_once_on_stderr_that_float32_ran(tiny_bundle: Path, small_corpus: Path, command: str) -> None:
    args = ["--max-tokens", "30", "-n", "3", "--seed", "1"] if command == "sample" else [str(small_corpus), "--json"]
    run = subprocess.run(
        [sys.executable, "-c", _CLI_WITH_TIMINGS, command, "-m", str(tiny_bundle), "--quantize", "int8", *args],
        capture_output=True, text=True, env={**__import__("os").environ, "NO_COLOR": "1"}, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    use = "generation" if command == "sample" else "evaluation"
    assert lines == [f"warning: int8 {use} measured 3.00x slower than float32 here; running float32 instead "
                     "(LSTMGEN_INT8=always keeps int8)"], run.stderr
    if command == "eval":
        report = json.loads(run.stdout)
        assert report["quantize"] == "none" and report["quantize_requested"] == "int8"
    else:
        assert run.stdout.strip()
