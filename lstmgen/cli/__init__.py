"""The command line: one module per command group, each command parses, calls one core function, prints."""

from .main import app, main

__all__ = ["app", "main"]
