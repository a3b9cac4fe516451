"""Options declared once, on the dataclass field they set.

A configuration field carries an `Option`: its help text for people, its command-line flag, how
its valid values read, whether it may change when a run resumes. Everything else is derived from
the declaration: the command-line parameters (lstmgen.cli.params), validation and its messages
(which name the flag on the command line and the keyword argument in Python), the keyword
arguments of `lstmgen.train`, the config file's keys, the resume compatibility check and the
option tables of the README (checked by a test). Adding an option is adding one field.

This module imports nothing heavy: `lstmgen --help` builds its parameters from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

from .errors import LstmgenError, option_mark


@dataclasses.dataclass(frozen=True)
class Option:
    """How one configuration field is offered to people (see the module docstring)."""

    help: str
    #: The command-line flag; "" derives it from the field name (`seq_len` -> `--seq-len`); None: no flag
    #: (the field is set from a config file or a keyword argument only).
    flag: str | None = ""
    short: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: How valid values read in a message ("must be RULE, not X"), when the range alone says too little.
    rule: str | None = None
    #: The value is a duration: a flag takes `90s`, `5m`, `2h`, a config file a number of seconds or such a string.
    duration: bool = False
    #: May differ between a checkpoint and the run that resumes it (training options only).
    resumable: bool = False
    #: Shown in the help as the default, instead of the field's default value.
    default_text: str | None = None
    #: For a boolean: the flag that sets it to False (`--no-tie-weights`).
    negative: str | None = None
    #: Filled in from the field by `declared`.
    name: str = ""
    kind: str = ""
    default: Any = None
    optional: bool = False

    @property
    def ref(self) -> str:
        """This option as a message names it: the keyword in Python, the flag on the command line.

        A boolean reads as set (`overwrite=True` / `--overwrite`): messages name a switch to tell the reader to use it."""
        if self.kind == "bool":
            return self.ref_to(True)
        return option_mark(self.name, self.short or self.flag or self.name)

    def ref_to(self, value: bool) -> str:
        """A boolean option set to `value`, as a message tells the reader to set it (`--no-x` / `x=False`)."""
        flag = self.flag if value or not self.negative else self.negative
        return option_mark(f"{self.name}={value}", flag or f"{self.name}={value}")

    @property
    def flags(self) -> tuple[str, ...]:
        """Every name the command line accepts for it (short form first)."""
        return tuple(f for f in (self.short, self.flag, *self.aliases) if f)

    @property
    def shown_metavar(self) -> str:
        if self.metavar:
            return self.metavar
        if self.choices:
            return "|".join(self.choices)
        return (
            {"int": "N", "float": "NUMBER", "str": "TEXT", "strings": "TEXT", "path": "PATH"}.get(self.kind, "VALUE")
            if not self.duration
            else "DURATION"
        )

    def help_text(self) -> str:
        """The help line: the declared text, then the default (unless the text says it already)."""
        if self.kind == "bool" or "(default" in self.help:
            return self.help
        shown = (
            self.default_text
            if self.default_text is not None
            else None
            if self.default is None
            else _shown(self.default, self.duration)
        )
        return f"{self.help} (default: {shown})" if shown is not None else self.help

    def describe(self) -> str:
        """What a valid value is, as a message says it after "must be"."""
        if self.rule:
            return self.rule
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            return f"a whole number from {_number(self.low)} to {_number(self.high)}"
        if self.kind == "float":
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"a number in {left}{self.low:g}, {self.high:g}{right}"
        if self.kind == "strings":
            return "a list of non-empty strings"
        return "a path" if self.kind == "path" else "a string"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.choices:
            return isinstance(value, str) and value in self.choices
        if self.kind == "int":
            return isinstance(value, int) and not isinstance(value, bool) and _within(self, value)
        if self.kind == "float":
            return (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and _within(self, value)
            )
        if self.kind == "strings":
            return (
                not isinstance(value, str)
                and isinstance(value, Sequence)
                and all(isinstance(s, str) and s for s in value)
            )
        if self.kind == "path":
            return isinstance(value, (str, os.PathLike))
        return isinstance(value, str)

    def check(self, value: Any) -> None:
        """Raise LstmgenError naming this option and what would be valid, unless `value` is."""
        if not self.accepts(value):
            raise LstmgenError(f"{self.ref} must be {self.describe()}, not {value!r}")


def option(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **declaration: Any
) -> Any:
    """A dataclass field that carries its `Option` (keyword arguments: Option's fields)."""
    metadata = {"option": Option(**declaration)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: Any) -> tuple[Option, ...]:
    """The options of a config dataclass, completed from their fields (name, kind, flag, default)."""
    found = []
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get("option")
        if declaration is None:
            continue
        annotation = str(f.type)
        kind = _kind(annotation)
        flag = declaration.flag
        if flag == "":
            flag = "--" + f.name.replace("_", "-")
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()
            if f.default_factory is not dataclasses.MISSING
            else None
        )
        found.append(
            dataclasses.replace(
                declaration, name=f.name, kind=kind, flag=flag, default=default, optional="None" in annotation
            )
        )
    return tuple(found)


def declared_by_name(cls: Any) -> dict[str, Option]:
    return {o.name: o for o in declared(cls)}


def ref(cls: Any, name: str) -> str:
    """The field `name` of `cls` as a message names it (see Option.ref)."""
    return declared_by_name(cls)[name].ref


def validate(config: Any) -> None:
    """Check every declared field of a config dataclass; the first bad one raises."""
    for declared_option in declared(type(config)):
        declared_option.check(getattr(config, declared_option.name))


def _kind(annotation: str) -> str:
    if "bool" in annotation:
        return "bool"
    if "Sequence" in annotation or "tuple" in annotation or "list" in annotation:
        return "strings"
    if "float" in annotation:
        return "float"
    if "int" in annotation:
        return "int"
    if "Path" in annotation:
        return "path"
    return "str"


def _within(declared_option: Option, value: float) -> bool:
    low, high = declared_option.low, declared_option.high
    if low is not None and (value <= low if declared_option.low_open else value < low):
        return False
    return not (high is not None and (value >= high if declared_option.high_open else value > high))


def _number(value: float | None) -> str:
    return "any" if value is None else str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value: Any, duration: bool) -> str:
    if duration and isinstance(value, (int, float)):
        return format_duration(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def format_duration(seconds: float) -> str:
    """600 -> 10m, 90 -> 90s, 5400 -> 1h30m."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs or not seconds else ""]
    return "".join(parts)
