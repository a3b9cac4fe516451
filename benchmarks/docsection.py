"""Write a benchmark's results into its marked section of a Markdown file: one marker style for every benchmark,
`<!-- NAME:start -->` … `<!-- NAME:end -->`, written atomically."""

from __future__ import annotations

from pathlib import Path

from lstmgen.fsutil import atomic_writer


def write_section(doc: Path, name: str, body: str, intro: str = "") -> None:
    """Put `body` in the section NAME of `doc` (appended when the markers are missing; `intro` starts a missing file)."""
    if not doc.exists():
        with atomic_writer(doc) as handle:
            handle.write(intro.encode("utf-8"))
    replace_section(doc, f"<!-- {name}:start -->", f"<!-- {name}:end -->", body if body.endswith("\n") else body + "\n")


def replace_section(doc: Path, begin: str, end: str, body: str) -> None:
    """Put `body` between the `begin` and `end` markers (appended at the end when they are missing), atomically."""
    text = doc.read_text(encoding="utf-8")
    if begin not in text:
        text = text.rstrip() + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with atomic_writer(doc) as handle:
        handle.write(f"{head}{begin}\n{body}{end}{tail}".encode("utf-8"))
