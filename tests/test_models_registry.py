"""Built-in and user models: where they live, how `-m` resolves, and `lstmgen models`."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from lstmgen import registry
from lstmgen.errors import LstmgenError
from lstmgen.registry import builtin_models, is_model_name, list_models, resolve_model, user_model_dir

from .conftest import cli

MAX_BUILTIN_BYTES = 12 * 1000 * 1000


@pytest.fixture
def home(tmp_path: Path, tiny_bundle: Path) -> Path:
    """An LSTMGEN_HOME whose models directory holds the tiny bundle as `poems`."""
    (tmp_path / "home" / "models").mkdir(parents=True)
    shutil.copy(tiny_bundle, tmp_path / "home" / "models" / "poems.lstmgen")
    return tmp_path / "home"


@pytest.fixture
def builtins(tmp_path: Path, tiny_bundle: Path) -> Path:
    """A stand-in for lstmgen/models/ holding a `shakespeare` and a `tang` bundle."""
    directory = tmp_path / "builtin"
    directory.mkdir()
    for name in ("shakespeare", "tang"):
        shutil.copy(tiny_bundle, directory / f"{name}.lstmgen")
    return directory


# -- the built-ins must ship -------------------------------------------------------------------------


def test_builtin_models_ship() -> None:
    """Fails (on purpose) until lstmgen/models/shakespeare.lstmgen and tang.lstmgen are added."""
    from lstmgen.bundle import load_bundle

    found = builtin_models()
    missing = [name for name in registry.BUILTIN_NAMES if name not in found]
    assert not missing, f"built-in models missing from {registry.builtin_directory()}: {', '.join(missing)}"
    for name in registry.BUILTIN_NAMES:
        path = found[name]
        assert path.is_file(), f"{path} must be one .lstmgen file (package data), not a directory"
        assert path.stat().st_size <= MAX_BUILTIN_BYTES, f"{path} is {path.stat().st_size:,} bytes, more than 12 MB"
        load_bundle(path)


def test_builtin_directory_is_the_package_data_directory() -> None:
    import lstmgen

    assert registry.builtin_directory() == Path(lstmgen.__file__).parent / "models"


def test_constants_match_the_bundle_module() -> None:
    from lstmgen import bundle

    assert registry.META_NAME == bundle.META_NAME and registry.WEIGHTS_NAME == bundle.WEIGHTS_NAME
    assert registry.META_LIMIT == bundle.MEMBER_LIMITS[bundle.META_NAME]


def test_builtin_models_lists_only_bundles_present(tmp_path: Path, builtins: Path) -> None:
    (builtins / "notes.txt").write_text("not a model\n")
    (builtins / ".shakespeare.lstmgen.abc.tmp").write_bytes(b"half written")
    assert builtin_models(builtins) == {"shakespeare": builtins / "shakespeare.lstmgen", "tang": builtins / "tang.lstmgen"}
    assert builtin_models(tmp_path / "missing") == {}


# -- the user's model directory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"LSTMGEN_HOME": "/data/lg", "XDG_DATA_HOME": "/xdg", "HOME": "/home/u"}, "/data/lg/models"),
        ({"XDG_DATA_HOME": "/xdg", "HOME": "/home/u"}, "/xdg/lstmgen/models"),
        ({"XDG_DATA_HOME": "relative/xdg", "HOME": "/home/u"}, "/home/u/.local/share/lstmgen/models"),
        ({"LSTMGEN_HOME": "", "XDG_DATA_HOME": "", "HOME": "/home/u"}, "/home/u/.local/share/lstmgen/models"),
    ],
)
def test_user_model_dir(env: dict[str, str], expected: str) -> None:
    assert user_model_dir(env) == Path(expected)


def test_user_model_dir_without_home_uses_the_account_home() -> None:
    assert user_model_dir({}) == Path.home() / ".local" / "share" / "lstmgen" / "models"


# -- resolving -m ------------------------------------------------------------------------------------


def test_an_existing_path_is_used_as_given(tiny_bundle: Path, builtins: Path) -> None:
    assert resolve_model(str(tiny_bundle), {}, builtins) == tiny_bundle


def test_a_name_finds_the_user_model_before_the_builtin(home: Path, builtins: Path) -> None:
    shutil.copy(home / "models" / "poems.lstmgen", home / "models" / "tang.lstmgen")
    env = {"LSTMGEN_HOME": str(home)}
    assert resolve_model("poems", env, builtins) == home / "models" / "poems.lstmgen"
    assert resolve_model("tang", env, builtins) == home / "models" / "tang.lstmgen"
    assert resolve_model("shakespeare", env, builtins) == builtins / "shakespeare.lstmgen"


def test_a_bundle_directory_in_the_user_dir_has_a_name(home: Path, builtins: Path) -> None:
    directory = home / "models" / "unzipped.lstmgen"
    with zipfile.ZipFile(home / "models" / "poems.lstmgen") as archive:
        archive.extractall(directory)
    assert resolve_model("unzipped", {"LSTMGEN_HOME": str(home)}, builtins) == directory


def test_nothing_given_means_the_environment_then_the_builtin_shakespeare(home: Path, builtins: Path, tiny_bundle: Path) -> None:
    env = {"LSTMGEN_HOME": str(home)}
    assert resolve_model(None, env, builtins) == builtins / "shakespeare.lstmgen"
    assert resolve_model("", env, builtins) == builtins / "shakespeare.lstmgen"
    assert resolve_model(None, {**env, "LSTMGEN_MODEL": str(tiny_bundle)}, builtins) == tiny_bundle
    assert resolve_model(None, {**env, "LSTMGEN_MODEL": "poems"}, builtins) == home / "models" / "poems.lstmgen"
    assert resolve_model("tang", {**env, "LSTMGEN_MODEL": "poems"}, builtins) == builtins / "tang.lstmgen"


def test_nothing_given_without_builtins_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(LstmgenError, match=r"no model given and the built-in model 'shakespeare' is not installed .* pass -m MODEL.lstmgen or set LSTMGEN_MODEL"):
        resolve_model(None, {"LSTMGEN_HOME": str(tmp_path)}, tmp_path / "empty")


def test_unknown_name(home: Path, builtins: Path) -> None:
    with pytest.raises(LstmgenError, match=r"no model named 'foo' .*`lstmgen models` lists them; pass a path to a .lstmgen bundle"):
        resolve_model("foo", {"LSTMGEN_HOME": str(home)}, builtins)


def test_builtin_name_that_is_not_installed(tmp_path: Path) -> None:
    with pytest.raises(LstmgenError, match=r"the built-in model 'tang' is not installed \(no tang.lstmgen in "):
        resolve_model("tang", {"LSTMGEN_HOME": str(tmp_path)}, tmp_path / "empty")


def test_missing_path(tmp_path: Path, builtins: Path) -> None:
    with pytest.raises(LstmgenError, match=r"model .*missing.lstmgen does not exist; check the path"):
        resolve_model(str(tmp_path / "missing.lstmgen"), {}, builtins)
    with pytest.raises(LstmgenError, match=r"model sub/poems does not exist"):
        resolve_model("sub/poems", {}, builtins)


def test_environment_pointing_nowhere_is_named(tmp_path: Path, builtins: Path) -> None:
    with pytest.raises(LstmgenError, match=r"^LSTMGEN_MODEL=gone.lstmgen: model gone.lstmgen does not exist.*fix or unset LSTMGEN_MODEL, or pass -m MODEL$"):
        resolve_model(None, {"LSTMGEN_MODEL": "gone.lstmgen", "LSTMGEN_HOME": str(tmp_path)}, builtins)


def test_a_text_file_is_not_a_model(small_corpus: Path, builtins: Path) -> None:
    with pytest.raises(LstmgenError) as caught:
        resolve_model(str(small_corpus), {}, builtins)
    assert str(caught.value) == f"{small_corpus} is a text file, not a model bundle; train one with `lstmgen train {small_corpus}`"


def test_a_damaged_lstmgen_file_is_left_to_the_bundle_loader(tmp_path: Path, builtins: Path) -> None:
    notes = tmp_path / "notes.lstmgen"
    notes.write_text("just some notes\n")
    assert resolve_model(str(notes), {}, builtins) == notes  # load_bundle then says "looks like a text file"


@pytest.mark.parametrize("value, expected", [("tang", True), ("my-model_2", True), ("tang.lstmgen", False), ("models/tang", False),
                                             ("./tang", False), (".", False), ("..", False), ("", False)])
def test_is_model_name(value: str, expected: bool) -> None:
    assert is_model_name(value) is expected


# -- listing -----------------------------------------------------------------------------------------


def test_list_models_user_first_with_descriptions(home: Path, builtins: Path) -> None:
    from lstmgen.bundle import load_bundle
    from lstmgen.model import LSTMLanguageModel

    (home / "models" / "broken.lstmgen").write_bytes(b"PK\x03\x04 not really a zip")
    (home / "models" / "poems.lstmgen.run").mkdir()
    entries = list_models({"LSTMGEN_HOME": str(home)}, builtins)
    assert [(e.name, e.source) for e in entries] == [("broken", "user"), ("poems", "user"), ("shakespeare", "builtin"), ("tang", "builtin")]
    poems = entries[1]
    bundle = load_bundle(poems.path)
    parameters = LSTMLanguageModel(bundle.model_config).num_parameters()
    config = bundle.model_config
    assert poems.size == poems.path.stat().st_size
    assert poems.description.startswith(f"{config.num_layers}×{config.hidden_size} LSTM, {parameters / 1000:.1f}k parameters, vocabulary {config.vocab_size}, ")
    assert f"{bundle.meta['training']['best_val_bits_per_char']:.3f} bits/char on validation" in poems.description
    assert entries[0].description.startswith("unreadable")
    assert json.loads(json.dumps(poems.as_dict()))["path"] == str(poems.path)


def test_list_models_reads_bundle_directories(home: Path, tmp_path: Path) -> None:
    directory = home / "models" / "unzipped.lstmgen"
    with zipfile.ZipFile(home / "models" / "poems.lstmgen") as archive:
        archive.extractall(directory)
    entries = {e.name: e for e in list_models({"LSTMGEN_HOME": str(home)}, tmp_path / "none")}
    assert entries["unzipped"].description == entries["poems"].description
    assert entries["unzipped"].size == sum(p.stat().st_size for p in directory.iterdir())


# -- the command line --------------------------------------------------------------------------------


def test_models_command_lists_a_user_bundle(home: Path) -> None:
    result = cli("models", env={"LSTMGEN_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "SOURCE", "SIZE", "DESCRIPTION"]
    poems = next(row for row in rows if row.startswith("poems "))
    assert poems.split()[1] == "user" and "parameters" in poems
    assert f"your models: {home / 'models'};" in result.stderr


def test_models_command_json(home: Path) -> None:
    result = cli("models", "--json", env={"LSTMGEN_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert isinstance(entries, list)
    poems = next(e for e in entries if e["name"] == "poems")
    assert poems["source"] == "user" and poems["path"] == str(home / "models" / "poems.lstmgen")
    assert poems["size"] == (home / "models" / "poems.lstmgen").stat().st_size and "vocabulary" in poems["description"]
    assert {e["source"] for e in entries} <= {"user", "builtin"}


def test_models_command_with_an_empty_user_dir(tmp_path: Path) -> None:
    result = cli("models", "--json", env={"LSTMGEN_HOME": str(tmp_path / "nowhere")})
    assert result.returncode == 0, result.stderr
    assert all(e["source"] == "builtin" for e in json.loads(result.stdout))
    assert "which does not exist yet" in result.stderr


def test_commands_take_a_model_name(home: Path, small_corpus: Path) -> None:
    env = {"LSTMGEN_HOME": str(home)}
    sampled = cli("sample", "-m", "poems", "--max-tokens", "5", "--seed", "1", env=env)
    assert sampled.returncode == 0, sampled.stderr
    for args in (["info", "poems", "--json"], ["info", "-m", "poems", "--json"]):
        shown = cli(*args, env=env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["format"] == "lstmgen-bundle"
    evaluated = cli("eval", "-m", "poems", str(small_corpus), "--json", "--no-baselines", env=env)
    assert evaluated.returncode == 0, evaluated.stderr


def _main(args: list[str]) -> int:
    """Run the CLI in this process (so that monkeypatching reaches it); its exit status."""
    import logging

    from lstmgen.cli import main

    logger = logging.getLogger("lstmgen")
    saved = (list(logger.handlers), logger.propagate, logger.level)  # main() points this logger at the captured stderr
    try:
        with pytest.raises(SystemExit) as done:
            main(args)
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    return done.value.code


def test_sample_without_a_model_uses_the_builtin_shakespeare(builtins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(registry, "builtin_directory", lambda: builtins)
    monkeypatch.delenv("LSTMGEN_MODEL", raising=False)
    monkeypatch.setenv("LSTMGEN_HOME", str(tmp_path / "home"))
    (builtins / "tang.lstmgen").unlink()  # the default must not be just any built-in
    assert _main(["sample", "--max-tokens", "8", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert _main(["sample", "-m", str(builtins / "shakespeare.lstmgen"), "--max-tokens", "8", "--seed", "3"]) == 0
    assert capsys.readouterr().out == out != ""


def test_sample_without_a_model_or_builtins_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(registry, "builtin_directory", lambda: tmp_path / "no-models")
    monkeypatch.delenv("LSTMGEN_MODEL", raising=False)
    monkeypatch.setenv("LSTMGEN_HOME", str(tmp_path / "home"))
    assert _main(["sample", "--max-tokens", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: no model given and the built-in model 'shakespeare' is not installed")


def test_root_help_lists_models_and_completion() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for text in ("models", "--install-completion", "--show-completion", "--version"):
        assert text in result.stdout


def test_model_option_help_mentions_names_and_the_default() -> None:
    for command in ("sample", "eval", "inspect", "info"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert "Bundle path or model name (default: $LSTMGEN_MODEL, else the built-in shakespeare)" in text, command
