"""The documentation runs: every code block of README.md and docs/*.md that is meant to run is run here,
and the README's option tables are the ones the option declarations generate.

A block is not run only when it says so: a `text` block (output, a transcript, equations) or a block
right after `<!-- not run: REASON -->` (it installs packages, trains for minutes, needs a GPU...).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, TANG

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!-- not run: (.+?) -->$")
RUNNABLE = ("python", "sh", "toml")


@dataclasses.dataclass
class Block:
    path: Path
    line: int
    language: str
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("```"):
            language, start = lines[index][3:].strip(), index
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            marker = NOT_RUN.match(lines[start - 1]) if start else None
            found.append(Block(path, start + 1, language, "\n".join(lines[start + 1 : end]) + "\n", marker.group(1) if marker else None))
            index = end
        index += 1
    return found


ALL = [block for path in DOCS for block in blocks(path)]
TO_RUN = [block for block in ALL if block.language != "text" and block.not_run is None]


def test_every_block_says_what_it_is() -> None:
    """A block either runs, or is marked as text or as not run with its reason: nothing is skipped silently."""
    for block in ALL:
        assert block.language in (*RUNNABLE, "text"), f"{block.id}: tag the block with its language (python, sh, toml or text)"
        assert block.not_run is None or block.language != "text", f"{block.id}: a text block is never run; drop the marker"
    assert {b.id for b in TO_RUN} >= {"README.md:" + str(b.line) for b in ALL if b.path.name == "README.md" and b.language == "python"}
    assert len(TO_RUN) >= 5


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory like a fresh clone's, with the few files the snippets name."""
    directory = tmp_path_factory.mktemp("docs")
    (directory / "corpora").symlink_to(ROOT / "corpora")
    (directory / "my-poems.txt").write_text("\n\n".join(TANG.read_text(encoding="utf-8").split("\n\n")[:12]) + "\n", encoding="utf-8")
    return directory


def _environment(workspace: Path) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "LSTMGEN_HOME": str(workspace / "home"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("LSTMGEN_MODEL", None)
    return env


@pytest.mark.parametrize("block", TO_RUN, ids=[b.id for b in TO_RUN])
def test_block_runs(block: Block, workspace: Path) -> None:
    if block.language == "toml":
        _check_config(block, workspace)
        return
    command = [sys.executable, "-c", block.code] if block.language == "python" else ["bash", "-euo", "pipefail", "-c", block.code]
    done = subprocess.run(command, cwd=workspace, env=_environment(workspace), capture_output=True, timeout=600)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stderr.decode(errors='replace')[-3000:]}"
    assert b"Traceback" not in done.stderr


def _check_config(block: Block, workspace: Path) -> None:
    """A config file shown in the docs is one `lstmgen train --config` accepts: every table and setting is valid."""
    from lstmgen.config import TRAINING_SECTIONS, apply_settings, load_config_file

    path = workspace / f"block-{block.line}.toml"
    path.write_text(block.code, encoding="utf-8")
    for section, settings in load_config_file(path).items():
        apply_settings(TRAINING_SECTIONS[section]() if section != "model" else TRAINING_SECTIONS[section](vocab_size=2), settings, section)


def test_readme_option_tables_are_generated_from_the_declarations() -> None:
    """Run `python -m lstmgen.cli.reference README.md` after adding an option."""
    from lstmgen.cli.reference import SECTION, render

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert {m.group(2) for m in SECTION.finditer(text)} >= {"train", "sample"}
    assert render(text) == text, "the README's option tables are out of date: run python -m lstmgen.cli.reference README.md"


def test_marked_sections_have_one_style_and_benchmarks_write_them_through_docsection() -> None:
    for path in DOCS:
        kinds = re.findall(r"<!-- [a-z:-]+?:([a-z]+) -->", path.read_text(encoding="utf-8"))
        assert set(kinds) <= {"start", "end"}, (path.name, set(kinds))
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        code = script.read_text(encoding="utf-8")
        assert set(re.findall(r"<!-- [a-z{}-]+:([a-z]+) -->", code)) <= {"start", "end"}, script.name
        if script.name != "docsection.py" and ("<!--" in code or "docs/" in code and ".md" in code and "write" in code):
            assert "docsection" in code, f"{script.name} writes a docs section without benchmarks/docsection.py"
