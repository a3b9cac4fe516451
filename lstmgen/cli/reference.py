"""The README's option tables, generated from the commands (and so from the option declarations).

`python -m lstmgen.cli.reference README.md` rewrites every section marked
`<!-- options:COMMAND:start -->` … `<!-- options:COMMAND:end -->`; a test checks that the README
holds what this generates, so a new option reaches the README without being typed twice.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

SECTION = re.compile(r"(<!-- options:([a-z]+):start -->\n)(.*?)(<!-- options:\2:end -->)", re.DOTALL)


def option_table(command_name: str) -> str:
    """A Markdown table of a command's options: flags with their metavar, and the help text."""
    from .main import app

    command = app.commands[command_name]
    rows = ["| option | meaning |", "|---|---|"]
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        rows.append(f"| `{_escape(_flags(param))}` | {_escape(param.help or '')} |")
    return "\n".join(rows) + "\n"


def _flags(param: Any) -> str:
    names = (
        ", ".join([*param.opts, *param.secondary_opts])
        if not param.secondary_opts
        else " / ".join([", ".join(param.opts), ", ".join(param.secondary_opts)])
    )
    if param.is_flag or param.metavar is None:
        return names
    return f"{names} {param.metavar}"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(text: str) -> str:
    """`text` with every marked option section regenerated."""
    return SECTION.sub(lambda m: m.group(1) + option_table(m.group(2)) + m.group(4), text)


def main(paths: list[str]) -> None:
    from ..fsutil import atomic_write_text

    for path in paths:
        old = Path(path).read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            atomic_write_text(Path(path), new)
            print(f"updated {path}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:] or ["README.md"])
