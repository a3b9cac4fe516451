"""Options declared once (lstmgen.options): flags, help, validation, resume checks and names all come from the fields."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from lstmgen.checkpoint import check_compatible
from lstmgen.config import (TRAINING_SECTIONS, InferenceOptions, ModelConfig, RunOptions, SamplingOptions, TokenizerConfig,
                            TrainConfig, to_dict)
from lstmgen.errors import LstmgenError
from lstmgen.options import declared, option, validate

from .conftest import cli


def _flags(command: str) -> set[str]:
    from lstmgen.cli import app

    return {flag for param in app.commands[command].params for flag in (*param.opts, *param.secondary_opts)}


def test_every_declared_option_is_a_flag_of_its_commands() -> None:
    train = _flags("train")
    for cls in (RunOptions, *TRAINING_SECTIONS.values()):
        for declared_option in declared(cls):
            if declared_option.flag:
                assert declared_option.flag in train, (cls.__name__, declared_option.name)
    assert {"--reset-every", "--lr", "--layers", "--no-tie-weights", "--resume", "--overwrite"} <= train
    sample = _flags("sample")
    assert {o.flag for cls in (SamplingOptions, InferenceOptions) for o in declared(cls)} <= sample
    assert {"--temperature", "-n", "--format"} <= sample


def test_a_new_field_is_a_new_option() -> None:
    """What one field declares is all an option needs: validation and its message come from it."""

    @dataclasses.dataclass
    class Probe:
        label_smoothing: float = option(0.0, low=0.0, high=1.0, high_open=True, help="Share of the target's probability spread over the vocabulary.")

    (declared_option,) = declared(Probe)
    assert (declared_option.flag, declared_option.kind, declared_option.shown_metavar) == ("--label-smoothing", "float", "NUMBER")
    with pytest.raises(LstmgenError) as refused:
        validate(Probe(label_smoothing=1.5))
    assert str(refused.value) == "label_smoothing must be a number in [0, 1), not 1.5"
    assert refused.value.for_command_line() == "--label-smoothing must be a number in [0, 1), not 1.5"


@pytest.mark.parametrize("field, value, keyword, flag", [
    ("learning_rate", 0.1, "learning_rate", "--lr"),
    ("num_layers", 3, "num_layers", "--layers"),
    ("reset_every", 0, "reset_every", "--reset-every"),
])
def test_resume_names_the_real_option(field: str, value: object, keyword: str, flag: str) -> None:
    """Resuming with a changed option says which, by its flag on the command line (not `--learning-rate`)."""
    model, train = ModelConfig(vocab_size=400), TrainConfig()
    saved = {"model": to_dict(model), "train": to_dict(train)}
    section = "model" if field in to_dict(model) else "train"
    current = {"model": to_dict(model), "train": to_dict(train)}
    current[section][field] = value
    with pytest.raises(LstmgenError) as refused:
        check_compatible(saved, current)
    assert str(refused.value).startswith(f"cannot resume: {keyword} differs")
    assert refused.value.for_command_line().startswith(f"cannot resume: {flag} differs")
    assert refused.value.for_command_line().endswith("start over with --overwrite")


def test_options_that_may_change_on_resume_are_declared_so() -> None:
    resumable = {o.name for o in declared(TrainConfig) if o.resumable}
    assert resumable == {"max_time", "max_steps", "epochs", "log_every", "checkpoint_every", "device", "threads", "val_every", "precision",
                         "compile"}
    model, train = ModelConfig(vocab_size=400), TrainConfig()
    current = {"model": to_dict(model), "train": {**to_dict(train), "max_steps": 99, "threads": 1}}
    check_compatible({"model": to_dict(model), "train": to_dict(train)}, current)


def test_python_errors_name_keywords_and_the_command_line_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LstmgenError, match=r"^temperature must be a number from 0 \(greedy\) to 100, not -1$"):
        SamplingOptions(temperature=-1).validate()
    with pytest.raises(LstmgenError, match="^vocab_size must be a whole number from 8"):
        TokenizerConfig(vocab_size=2).validate()
    from lstmgen.cli import main

    with pytest.raises(SystemExit):
        main(["sample", "--temp", "-1"])
    assert capsys.readouterr().err == "error: --temp must be a number from 0 (greedy) to 100, not -1.0\n"


def test_help_reads_as_written_for_people() -> None:
    for command in ("", "tokenize", "train", "sample", "eval", "info", "models", "convert", "inspect"):
        text = cli(*([command] if command else []), "--help").stdout
        for leak in ("<str>", "<int>", "<float>", "<path>", "<list[", "{files}", "{corpus}", "<bool>"):
            assert leak not in text, (command, leak)
    top = cli("--help").stdout
    convert = next(line for line in top.splitlines() if line.strip().startswith("convert"))
    assert convert.rstrip().endswith(".") and "e.g" not in convert
    train = " ".join(cli("train", "--help").stdout.split())
    assert "--model-type unigram|bpe|char" in train and "--device auto|cpu|cuda|mps" in train and "CORPUS..." in train
    assert "Usage: lstmgen eval [OPTIONS] FILE..." in cli("eval", "--help").stdout


def test_help_imports_no_torch() -> None:
    """`lstmgen --help` and a command's help stay fast: the option declarations are torch-free."""
    code = ("import sys\nfrom lstmgen.cli import main\n"
            "for args in (['--help'], ['train', '--help'], ['sample', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
