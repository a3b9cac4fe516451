"""Generation extras: one-batch generate_batch, int8 quantization, the REPL, option validation."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmgen
from lstmgen.errors import LstmgenError
from lstmgen.sampling import SamplingOptions

from .conftest import ROOT


@pytest.fixture(scope="module")
def lm(tiny_bundle: Path):
    return lstmgen.load(tiny_bundle)


@pytest.fixture(scope="module")
def lm8(tiny_bundle: Path):
    """int8 whatever it measures here (these tests are about its numbers; tests/test_quantization.py about the choice)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSTMGEN_INT8", "always")
        return lstmgen.load(tiny_bundle, quantize="int8")


PROMPTS = ["", "ROMEO:", "To be, or not to be, that is the question", "K", "First Citizen:\nBefore we proceed any further"]


def _alone(model, prompt: str, index: int, **options) -> str:
    """Prompt `prompt` generated on its own as sample `index` (what generate_batch must match)."""
    stream = model._sampler.stream(prompt, model_options(**options), num_samples=1, first_index=index)
    return next(item for _, item in stream if not isinstance(item, str)).text


def model_options(**options) -> SamplingOptions:
    from lstmgen.api import _options

    return _options(options)


# -- generate_batch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["float", "int8"])
@pytest.mark.parametrize(
    "options",
    [
        {"max_tokens": 30, "seed": 4},
        {"max_tokens": 40, "seed": 9, "temperature": 0.7, "top_k": 20, "top_p": 0.9},
        {"max_tokens": 40, "seed": 2, "stop": ["e"], "max_chars": 25, "repetition_penalty": 1.3},
        {"max_tokens": 25, "temperature": 0},
    ],
)
def test_generate_batch_equals_one_at_a_time(lm, lm8, which: str, options: dict) -> None:
    model = lm if which == "float" else lm8
    batch = model.generate_batch(PROMPTS, **options)
    assert batch == [_alone(model, prompt, i, **options) for i, prompt in enumerate(PROMPTS)]
    assert model.generate_batch([PROMPTS[1]], **options)[0] == model.generate(PROMPTS[1], **options)


def test_generate_batch_steps_all_prompts_together(lm, monkeypatch) -> None:
    sizes: list[int] = []
    original = lm._sampler.stepper.step

    def spy(tokens, state):
        sizes.append(tokens.shape[0])
        return original(tokens, state)

    monkeypatch.setattr(lm._sampler.stepper, "step", spy)
    samples = lm.sample_batch(PROMPTS, max_tokens=12, seed=1)
    assert len(samples) == len(PROMPTS)
    assert sizes and sizes[0] == len(PROMPTS)  # one batch, not one run per prompt
    assert len(sizes) <= 11  # and one step per token, shrinking only when samples finish


def test_generate_batch_rejects_bad_prompts(lm) -> None:
    for prompts in ([], "ROMEO:", ["ok", 3]):
        with pytest.raises(LstmgenError):
            lm.generate_batch(prompts, max_tokens=3)


# -- int8 ---------------------------------------------------------------------------------------------


def test_int8_is_exact_between_batch_sizes_and_prompt_reading(lm8) -> None:
    """Per-row int8 activations and int32 sums: a row's numbers never depend on its batch."""
    stepper = lm8._sampler.stepper
    ids = torch.tensor([lm8._sampler.prompt_ids("ROMEO: What, ho! apothecary!")])
    logits, _ = stepper.forward(ids)
    state = stepper.int8.initial_state(1)
    for t in range(ids.shape[1]):
        step_logits, state = stepper.step(ids[:, t], state)
        assert torch.equal(step_logits[0], logits[0, t])
    many = ids.repeat(3, 1)
    many[1, 5:] = 7
    batch_logits, _ = stepper.forward(many)
    assert torch.equal(batch_logits[0], logits[0]) and torch.equal(batch_logits[2], logits[0])


def test_int8_logits_close_to_float(lm, lm8) -> None:
    ids = torch.tensor([lm._sampler.prompt_ids("KING RICHARD III:\nNow is the winter of our discontent")])
    float_logits, _ = lm._sampler.stepper.forward(ids)
    int8_logits, _ = lm8._sampler.stepper.forward(ids)
    scale = float_logits.abs().max()
    assert (float_logits - int8_logits).abs().max() < 0.05 * scale
    assert lm8._sampler.stepper.weight_bytes < lm._sampler.stepper.weight_bytes / 3


def test_int8_eval_costs_little(lm, lm8) -> None:
    text = (ROOT / "corpora" / "tinyshakespeare.txt").read_text()[100_000:104_000]
    full, quantized = lm.evaluate(text), lm8.evaluate(text)
    assert quantized["tokens"] == full["tokens"]
    assert abs(quantized["bits_per_byte"] - full["bits_per_byte"]) < 0.02 * full["bits_per_byte"]


def test_float_step_agrees_with_model_forward(lm) -> None:
    # The float fast step must give nn.LSTM's numbers (up to rounding) for every token.
    ids = torch.tensor([lm._sampler.prompt_ids("BRUTUS: Romans, countrymen")])
    logits, _ = lm.model(ids)
    state = None
    stepper = lm._sampler.stepper
    for t in range(ids.shape[1]):
        if state is None:
            state = lm.model.initial_state(1)
        step_logits, state = stepper.step(ids[:, t], state)
        assert torch.allclose(step_logits[0], logits[0, t], atol=1e-5, rtol=1e-4)


def test_quantize_argument_is_checked(tiny_bundle: Path) -> None:
    with pytest.raises(LstmgenError, match="^quantize must be"):  # Python errors name the keyword argument
        lstmgen.load(tiny_bundle, quantize="int4")
    assert lstmgen.load(tiny_bundle, quantize="none").quantize is None


# -- hypothesis: batching never changes a sample (int8: exact by construction) ----------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 5, 50]),
    top_p=st.sampled_from([1.0, 0.95, 0.5, 0.05]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
    penalty=st.sampled_from([1.0, 1.2, 3.0]),
    window=st.integers(1, 40),
    count=st.integers(1, 4),
)
def test_batch_of_n_equals_n_single_runs(lm8, seed, temperature, top_k, top_p, min_p, penalty, window, count) -> None:
    options = dict(max_tokens=15, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=penalty, repetition_window=window)
    batch = lm8.sample_many("ROMEO:", count, **options)
    assert [s.text for s in batch] == [_alone(lm8, "ROMEO:", i, **options) for i in range(count)]
    for s in batch:
        assert s.text == lm8.tokenizer.decode(s.tokens)
        assert s.log_prob <= 0


# -- CLI: --quantize, validation ----------------------------------------------------------------------


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (fast for options refused before any model is loaded)."""
    from lstmgen.cli import main

    with pytest.raises(SystemExit) as done:
        main(list(args))
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temp", "-0.5"], "--temp must be"),
        (["--temp", "inf"], "--temp must be"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.01"], "--top-p must be in (0, 1]"),
        (["--top-k", "-1"], "--top-k must be"),
        (["--min-p", "1"], "--min-p must be"),
        (["--min-p", "-0.1"], "--min-p must be"),
        (["--repetition-penalty", "0.9"], "--repetition-penalty must be"),
        (["--repetition-window", "0"], "--repetition-window must be"),
        (["--max-tokens", "-1"], "--max-tokens must be"),
        (["--max-chars", "-1"], "--max-chars must be"),
        (["--stop", ""], "--stop needs"),
        (["-n", "0"], "--num-samples must be"),
        (["--seed", "-1"], "--seed must be"),
        (["--format", "xml"], "--format must be"),
        (["--quantize", "int4"], "--quantize must be"),
        (["--quantize", "int8", "--device", "cuda"], "runs on the CPU"),
        (["--threads", "0"], "--threads must be"),
        (["--device", "tpu"], "--device must be"),
        (["--interactive", "--prompt", "x"], "--interactive reads"),
        (["--top-k", "many"], "--top-k"),
    ],
)
def test_sample_refuses_impossible_values(capsys, tiny_bundle: Path, args: list[str], message: str) -> None:
    code, out, err = _main(capsys, "sample", "-m", str(tiny_bundle), *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.parametrize("args, message", [(["--quantize", "fp4"], "--quantize must be"), (["--threads", "-2"], "--threads must be")])
def test_eval_refuses_impossible_values(capsys, tiny_bundle: Path, small_corpus: Path, args: list[str], message: str) -> None:
    code, out, err = _main(capsys, "eval", "-m", str(tiny_bundle), str(small_corpus), *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_quantized_sample_and_eval(tiny_bundle: Path, tmp_path: Path) -> None:
    from .conftest import cli

    text = tmp_path / "held-out.txt"
    text.write_text((ROOT / "corpora" / "tinyshakespeare.txt").read_text()[200_000:203_000])
    always = {"LSTMGEN_INT8": "always"}  # int8 even where it measures slower (see tests/test_quantization.py)
    result = cli("eval", "-m", str(tiny_bundle), str(text), "--quantize", "int8", "--json", "--threads", "1", env=always)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["quantize"] == "int8" and report["bits_per_byte"] > 0
    sample = cli("sample", "-m", str(tiny_bundle), "--quantize", "int8", "--prompt", "ROMEO:", "--seed", "5", "--max-tokens", "20",
                 env=always)
    assert sample.returncode == 0, sample.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSTMGEN_INT8", "always")
        expected = lstmgen.load(tiny_bundle, quantize="int8").generate("ROMEO:", seed=5, max_tokens=20)
    assert sample.stdout == "ROMEO:" + expected + ("" if expected.endswith("\n") else "\n")


# -- the REPL ------------------------------------------------------------------------------------------


def _repl(tiny_bundle: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lstmgen", "sample", "-m", str(tiny_bundle), "--interactive", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})


def test_interactive_continues_each_line(tiny_bundle: Path, lm) -> None:
    process = _repl(tiny_bundle, "--seed", "3", "--max-tokens", "12", "--temp", "0.8")
    out, err = process.communicate(b"ROMEO:\nJULIET: O\n\n:q\nnever read\n", timeout=120)
    assert process.returncode == 0, err
    expected = ""
    for prompt in ("ROMEO:", "JULIET: O", ""):
        text = lm.generate(prompt, seed=3, max_tokens=12, temperature=0.8)
        expected += prompt + text + ("" if (prompt + text).endswith("\n") else "\n")
    assert out.decode() == expected  # same options and seed: the same text as a one-shot `sample`
    assert b"Traceback" not in err


def test_interactive_eof_and_jsonl(tiny_bundle: Path) -> None:
    process = _repl(tiny_bundle, "--seed", "1", "--max-tokens", "5", "--format", "jsonl", "-n", "2")
    out, err = process.communicate(b"KING:", timeout=120)  # no newline, then EOF (Ctrl-D)
    assert process.returncode == 0, err
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert [(r["index"], r["prompt"]) for r in records] == [(0, "KING:"), (1, "KING:")]


def _read_some(stream, timeout: float = 120, so_far: bytes = b"") -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output after {so_far!r}"
    return os.read(stream.fileno(), 65536)


def _drain(stream) -> None:
    while select.select([stream], [], [], 0.2)[0]:
        if not os.read(stream.fileno(), 65536):
            return


def test_ctrl_c_stops_one_generation_not_the_repl(tiny_bundle: Path) -> None:
    process = _repl(tiny_bundle, "--max-tokens", "100000000", "--no-echo-prompt")
    err = b""
    try:
        for count, prompt in enumerate((b"First\n", b"Second\n"), start=1):
            process.stdin.write(prompt)
            process.stdin.flush()
            _read_some(process.stdout, so_far=err)  # it is generating (and would for hours)
            process.send_signal(signal.SIGINT)
            while err.count(b"(stopped)") < count:
                err += _read_some(process.stderr, so_far=err)
            _drain(process.stdout)
        process.stdin.write(b":q\n")
        process.stdin.flush()
        process.wait(timeout=120)
        err += process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert err.count(b"(stopped)") == 2 and b"Traceback" not in err, err
