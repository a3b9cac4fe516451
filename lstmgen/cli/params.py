"""Command-line parameters made from the option declarations (lstmgen.options), so that a flag, its
help, metavar and choices are written once, on the dataclass field they set.

A command is a plain function of keyword arguments; `signature(...)` gives it the parameters Typer
reads (`inspect.signature`), built from declared options and from the command's own `Flag`s.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

import typer

from ..options import Option, declared

_TYPES: dict[str, Any] = {
    "int": Optional[int],
    "float": Optional[float],
    "str": Optional[str],
    "path": Optional[Path],
    "strings": Optional[list[str]],
    "bool": Optional[bool],
}


@dataclasses.dataclass
class Flag:
    """A parameter of one command that configures no core setting (`--json`, `--format`, a file argument)."""

    name: str
    help: str
    flags: tuple[str, ...] = ()
    type: Any = Optional[str]
    default: Any = None
    metavar: str | None = None
    argument: bool = False
    required: bool = False

    def parameter(self) -> inspect.Parameter:
        if self.argument:
            info = typer.Argument(
                ... if self.required else self.default, help=self.help, metavar=self.metavar, show_default=False
            )
        elif self.type is bool:
            info = typer.Option(self.default, *self.flags, help=self.help, show_default=False)
        else:
            info = typer.Option(
                ... if self.required else self.default,
                *self.flags,
                help=self.help,
                metavar=self.metavar,
                show_default=False,
            )
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=self.type)


def option_parameter(option: Option) -> inspect.Parameter:
    """A declared option as a Typer parameter whose default None means "not given" (the core's default applies)."""
    if option.kind == "bool":
        decls = (f"{option.flag}/{option.negative}",) if option.negative else option.flags
        info = typer.Option(None if option.negative else False, *decls, help=option.help_text(), show_default=False)
    else:
        info = typer.Option(
            None, *option.flags, help=option.help_text(), metavar=option.shown_metavar, show_default=False
        )
    annotation = Optional[str] if option.duration else _TYPES[option.kind]
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def options_of(cls: type, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[Option]:
    """The declared options of `cls` that have a flag (all, or those named in `only`), less `skip`."""
    chosen = [o for o in declared(cls) if o.flag and o.name not in set(skip)]
    if only is None:
        return chosen
    by_name = {o.name: o for o in chosen}
    return [by_name[name] for name in only]


def signature(function: Callable[..., Any], *parts: Iterable[Option | Flag]) -> Callable[..., Any]:
    """Give `function(**values)` the parameters of `parts`, in order (arguments first, as Click wants them)."""
    parameters = [
        part.parameter() if isinstance(part, Flag) else option_parameter(part) for group in parts for part in group
    ]
    parameters.sort(key=lambda p: not isinstance(p.default, typer.models.ArgumentInfo))
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__annotations__ = {}
    return function


def given(values: dict[str, Any], options: Iterable[Option]) -> dict[str, Any]:
    """The declared options among `values` that were given (not None; a flag not set counts as not given)."""
    found = {}
    for option in options:
        value = values.get(option.name)
        if value is None or (value is False and not option.negative):  # a plain flag not set is not given
            continue
        found[option.name] = value
    return found


def examples(*lines: str) -> str:
    """An epilog of example command lines."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)
