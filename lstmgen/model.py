"""The network: embedding → multi-layer LSTM → dropout → (projection) → tied linear head."""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]

#: The start id (the tokenizer's BOS). It reads as an all-zero input vector: a fresh state plus a
#: neutral input, whatever the (tied, rarely trained) embedding row of the id has drifted to.
START_ID = 1


class LSTMLanguageModel(nn.Module):
    """Next-token model whose forward takes and returns the recurrent state.

    Carrying the state lets training run truncated BPTT over contiguous streams and lets sampling
    step one token at a time without re-reading the prompt. Tensor names and the exact equations
    are specified in docs/bundle-format.md.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.input_dropout = nn.Dropout(config.dropout)
        self.rnn = nn.LSTM(
            input_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.output_dropout = nn.Dropout(config.dropout)
        head_input = config.head_input_size
        self.projection = nn.Linear(config.hidden_size, head_input, bias=False) if head_input != config.hidden_size else None
        self.head = nn.Linear(head_input, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.05)
        nn.init.zeros_(self.head.bias)
        if not self.config.tie_weights:
            nn.init.normal_(self.head.weight, std=0.05)
        hidden = self.config.hidden_size
        for name, parameter in self.rnn.named_parameters():
            if name.startswith("bias_ih"):
                nn.init.zeros_(parameter)
                parameter.data[hidden : 2 * hidden] = 1.0  # forget-gate bias 1: remember by default
            elif name.startswith("bias_hh"):
                nn.init.zeros_(parameter)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.embedding.weight.device
        dtype = self.embedding.weight.dtype
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def features(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Head inputs of shape (batch, time, head_input) and the new state."""
        x = self.embedding(tokens).masked_fill((tokens == START_ID).unsqueeze(-1), 0.0)
        x = self.input_dropout(x)
        output, state = self.rnn(x, state)
        output = self.output_dropout(output)
        if self.projection is not None:
            output = self.projection(output)
        return output, state

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits of shape (batch, time, vocab) and the new state (h, c), each (layers, batch, hidden)."""
        features, state = self.features(tokens, state)
        return self.head(features), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    return state[0].detach(), state[1].detach()
