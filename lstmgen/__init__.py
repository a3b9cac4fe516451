"""lstmgen: train an LSTM language model on your own text and generate from it.

import lstmgen
m = lstmgen.load("shakespeare")            # a model name, as `-m` takes it, or a bundle path
print(m.generate("ROMEO:", max_tokens=50))
lstmgen.train("my.txt", "my.lstmgen", max_time="5m")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["LstmgenError", "LanguageModel", "load", "train", "__version__"]

if TYPE_CHECKING:
    from .api import LanguageModel
    from .errors import LstmgenError


def load(
    model: Any = None, device: str = "cpu", quantize: str | None = None, threads: int | None = None
) -> LanguageModel:
    """Load a model for generation and evaluation: a bundle path or a model name, exactly as `-m` takes it
    (none: $LSTMGEN_MODEL, else the built-in shakespeare).

    `quantize="int8"` runs the model with int8 weights on the CPU (see `lstmgen eval --quantize`).
    """
    from .api import LanguageModel

    return LanguageModel.load(model, device=device, quantize=quantize, threads=threads)


def train(corpus: Any, output: Any = None, **options: Any) -> Any:
    """Train a model, as `lstmgen train` does, with the same options as keywords (see lstmgen.run.train)."""
    from .run import train as train_run

    return train_run(corpus, output, **options)


def __getattr__(name: str) -> Any:
    # Imports stay lazy so that `lstmgen --help` does not pay for torch.
    if name == "LanguageModel":
        from .api import LanguageModel

        return LanguageModel
    if name == "LstmgenError":
        from .errors import LstmgenError

        return LstmgenError
    raise AttributeError(name)
