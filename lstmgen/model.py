"""The network: embedding → multi-layer recurrent cell → dropout → (projection) → tied linear head.

The cell is `ModelConfig.cell`: `lstm` (torch.nn.LSTM), `gru` (torch.nn.GRU) or `paper` (the design
document's LSTM, lstmgen.cells.PaperLSTM). The recurrent state is always a tuple of tensors of
shape (layers, batch, hidden): (h, c) for lstm, (h,) for gru and paper (cells.STATE_NAMES).
"""

from __future__ import annotations

import torch
from torch import nn

from . import cells
from .config import ModelConfig

State = tuple[torch.Tensor, ...]

#: The start id (the tokenizer's BOS). It reads as an all-zero input vector: a fresh state plus a
#: neutral input, whatever the (tied, rarely trained) embedding row of the id has drifted to.
START_ID = 1


class LSTMLanguageModel(nn.Module):
    """Next-token model whose forward takes and returns the recurrent state.

    Carrying the state lets training run truncated BPTT over contiguous streams and lets sampling
    step one token at a time without re-reading the prompt. Tensor names and the exact equations
    are specified in docs/bundle-format.md (per cell).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.cell = config.cell
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.input_dropout = nn.Dropout(config.dropout)
        self.rnn = cells.build_rnn(
            config.cell, config.embedding_size, config.hidden_size, config.num_layers, config.dropout
        )
        self.output_dropout = nn.Dropout(config.dropout)
        head_input = config.head_input_size
        self.projection = (
            nn.Linear(config.hidden_size, head_input, bias=False) if head_input != config.hidden_size else None
        )
        self.head = nn.Linear(head_input, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.05)
        nn.init.zeros_(self.head.bias)
        if not self.config.tie_weights:
            nn.init.normal_(self.head.weight, std=0.05)
        cells.init_rnn(self.rnn, self.cell, self.config.hidden_size)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        device = device if device is not None else self.embedding.weight.device
        return cells.initial_state(
            self.cell, self.config.num_layers, batch_size, self.config.hidden_size, device, self.embedding.weight.dtype
        )

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens).masked_fill((tokens == START_ID).unsqueeze(-1), 0.0)

    def features(
        self, tokens: torch.Tensor, state: State | None = None, resets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Head inputs of shape (batch, time, head_input) and the new state.

        `resets` (optional, shape (k, 2), sorted by the second column) lists (row, position)
        pairs: that row's state is zeroed just before the position is read (a fresh start inside
        the window; training uses it to teach the model to begin text). The window is then run in
        pieces between the reset positions, with the same result as separate calls.
        """
        x = self.input_dropout(self.embed(tokens))
        if resets is None or len(resets) == 0:
            output, state = cells.run_rnn(self.rnn, self.cell, x, state)
        else:
            output, state = self._run_with_resets(x, state, resets)
        output = self.output_dropout(output)
        if self.projection is not None:
            output = self.projection(output)
        return output, state

    def _run_with_resets(
        self, x: torch.Tensor, state: State | None, resets: torch.Tensor
    ) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        resets = torch.as_tensor(resets, dtype=torch.long).cpu()
        pieces: list[torch.Tensor] = []
        begin = 0
        for position in torch.unique_consecutive(resets[:, 1]).tolist():
            if position > begin:
                piece, state = cells.run_rnn(self.rnn, self.cell, x[:, begin:position], state)
                pieces.append(piece)
            keep = torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype)
            keep[resets[resets[:, 1] == position, 0].to(x.device)] = 0.0
            state = tuple(part * keep for part in state)
            begin = position
        piece, state = cells.run_rnn(self.rnn, self.cell, x[:, begin:], state)
        pieces.append(piece)
        return torch.cat(pieces, dim=1), state

    def forward(
        self, tokens: torch.Tensor, state: State | None = None, resets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Logits of shape (batch, time, vocab) and the new state (a tuple, see the module doc)."""
        features, state = self.features(tokens, state, resets)
        return self.head(features), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    return cells.detach_state(state)


def carry_names(cell: str) -> tuple[str, ...]:
    """Checkpoint tensor names of a carried state, in tuple order: carry.h, carry.c for lstm; carry.h otherwise."""
    return tuple(f"carry.{name}" for name in cells.STATE_NAMES[cell])
