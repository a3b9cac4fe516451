"""lstmgen: train an LSTM language model on your own text and generate from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LstmgenError", "LanguageModel", "load", "__version__"]

if TYPE_CHECKING:
    from .api import LanguageModel
    from .errors import LstmgenError


def load(path: Any, device: str = "cpu", quantize: str | None = None) -> LanguageModel:
    """Load a `.lstmgen` bundle (or a directory holding its three files) for generation and evaluation.

    `quantize="int8"` runs the model with int8 weights on the CPU (faster; see `lstmgen eval --quantize`).
    """
    from .api import LanguageModel

    return LanguageModel.load(path, device=device, quantize=quantize)


def __getattr__(name: str) -> Any:
    # Imports stay lazy so that `lstmgen --help` does not pay for torch.
    if name == "LanguageModel":
        from .api import LanguageModel

        return LanguageModel
    if name == "LstmgenError":
        from .errors import LstmgenError

        return LstmgenError
    raise AttributeError(name)
