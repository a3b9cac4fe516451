"""The package version, in a module that imports nothing (`lstmgen --version` and the bundle read it)."""

__version__ = "0.1.0"
