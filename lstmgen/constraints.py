"""Constraints applied while sampling: a mask over the next token, driven by a state machine over the text so far.

A `CharMachine` knows the shape a text must take (a poem's verses, an acrostic's lines) one character at a
time: which character may come next, when the text may end, and the fewest tokens that can still finish
it. `TokenConstraint` lifts it to a model's tokens. A token is allowed only when every character it
writes is accepted *and* the text can still be finished within the tokens left, so the sampler never
reaches a dead end:

- a multi-character piece is fed character by character: a piece that writes the required character and
  then text that breaks the form is masked;
- a byte-fallback piece is allowed only when its bytes begin a character the machine accepts and that
  has no piece of its own (the code points it can still become are searched for one), and while a
  character is incomplete only the bytes that continue it validly are allowed, so no invalid UTF-8 (no
  U+FFFD) and no spelling the tokenizer never writes is produced;
- an ASCII byte piece whose character has a piece of its own is never allowed (the tokenizer never
  writes it, so the model has not learnt it as an input);
- the end-of-text token is allowed exactly when the machine says the text is complete.

Masks depend on the machine's `key` of a state (plus how tight the token budget is), so they are computed
once per kind of state and cached. A machine may also offer `char_mask`, the acceptance of every
single-character piece at once (vectorised), since those are most of a Chinese vocabulary.

The machine also marks unit boundaries (`boundary`: a verse or a line just ended): the sampler may
backtrack to the last boundary when a constraint leaves the model almost no probability (see
lstmgen.sampling), and text is final (streamed) only up to it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .tokenizer import Tokenizer

#: Largest slack (tokens left beyond the fewest needed) a mask distinguishes: beyond it the budget never restricts.
SLACK_CAP = 8
#: Code points tried when looking for a character that a byte prefix could still become (a bounded search:
#: a prefix whose characters are all beyond it is masked, which is safe — it only removes options).
SCAN_LIMIT = 4096
#: Masks kept per constraint.
CACHE_SIZE = 4096


class CharMachine:
    """A text shape, one character at a time. States must be hashable and never mutated."""

    #: How much `remaining` may grow with one character (it should mostly shrink): bounds the budget's effect.
    max_growth: int = 1
    #: The prompt is the text's beginning and must fit the shape (else it is context and `start` places the text).
    reads_prompt: bool = True

    def start(self, prompt: str) -> Any:
        """The state before the prompt (`reads_prompt`) or after it."""
        raise NotImplementedError

    def feed(self, state: Any, char: str) -> Any | None:
        """The state after `char`, or None when `char` breaks the shape or leaves it impossible to finish."""
        raise NotImplementedError

    def can_end(self, state: Any) -> bool:
        """The text is complete: end-of-text may come now."""
        raise NotImplementedError

    def remaining(self, state: Any) -> int:
        """Tokens that surely suffice to finish the text from here, end-of-text included: a count that some
        completion achieves (so a budget of that many tokens never leaves the sampler stuck)."""
        raise NotImplementedError

    def key(self, state: Any) -> Hashable:
        """States with equal keys accept the same characters, also within a token budget, given the same slack
        (tokens left beyond `remaining`): masks are cached by the key and the slack."""
        return state

    def boundary(self, state: Any) -> bool:
        """A unit (verse, line) has just ended: the text up to here is final."""
        return False

    def bind(self, chars: Sequence[str], longest: int = 1, any_char: bool = False) -> None:
        """Called once with the characters of the single-character pieces (in the order `char_mask` answers
        for), the most characters one piece writes, and whether byte pieces can spell any character."""

    def char_mask(self, state: Any) -> np.ndarray | None:
        """Optional: `feed(state, c) is not None` for every bound character at once, or None (then feed is used)."""
        return None

    def char_ranges(self, state: Any) -> Sequence[tuple[int, int]] | None:
        """Optional: inclusive code-point ranges outside which `feed` accepts nothing (narrows byte-prefix searches)."""
        return None


class Cursor(NamedTuple):
    """Where one sample stands: the machine's state and the bytes of a character not yet complete."""

    state: Any
    pending: bytes = b""


class PromptMismatch(Exception):
    """The prompt itself does not fit the shape: `index` is the first character that breaks it."""

    def __init__(self, index: int, char: str) -> None:
        super().__init__(f"character {index + 1} ({char!r})")
        self.index = index
        self.char = char


def _utf8_length(lead: int) -> int:
    """Bytes of the character a lead byte starts, or 0 when it starts none."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _prefix_range(prefix: bytes, total: int) -> tuple[int, int]:
    """The code points whose UTF-8 encoding (`total` bytes) begins with `prefix` (inclusive; may be empty)."""
    lead_bits = {2: 0x1F, 3: 0x0F, 4: 0x07}[total]
    value = prefix[0] & lead_bits
    for byte in prefix[1:]:
        value = (value << 6) | (byte & 0x3F)
    missing = total - len(prefix)
    low, high = value << (6 * missing), ((value + 1) << (6 * missing)) - 1
    valid = {2: (0x80, 0x7FF), 3: (0x800, 0xFFFF), 4: (0x10000, 0x10FFFF)}[total]
    return max(low, valid[0]), min(high, valid[1])


class TokenConstraint:
    """A `CharMachine` over a tokenizer's pieces: masks of allowed next tokens, and the state after a token."""

    def __init__(self, machine: CharMachine, tokenizer: Tokenizer) -> None:
        self.machine = machine
        self.vocab_size = tokenizer.vocab_size
        self.eos_id = tokenizer.eos_id
        specials = set(tokenizer.special_ids)
        self.token_text: list[str | None] = [None] * self.vocab_size  # decoded text of whole-character pieces
        self.token_byte: list[int | None] = [None] * self.vocab_size  # the byte of an incomplete-UTF-8 piece
        own_pieces: set[str] = set()
        raw: list[bytes] = [tokenizer.token_bytes(i) for i in range(self.vocab_size)]
        byte_pieces = set()
        for token, data in enumerate(raw):
            if token in specials or not data:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                if len(data) == 1:
                    self.token_byte[token] = data[0]
                continue
            if len(data) == 1 and _is_byte_piece(tokenizer, token):
                byte_pieces.add(token)
            else:
                own_pieces.add(text)
            self.token_text[token] = text
        # An ASCII byte piece for a character that has its own piece is never written by the tokenizer.
        for token in byte_pieces:
            if self.token_text[token] in own_pieces:
                self.token_text[token] = None
        single = [(t, s) for t, s in enumerate(self.token_text) if s is not None and len(s) == 1]
        self.single_ids = torch.tensor([t for t, _ in single], dtype=torch.long)
        self.single_chars = [s for _, s in single]
        self.multi = [(t, s) for t, s in enumerate(self.token_text) if s is not None and len(s) > 1]
        self.leads = [(t, b) for t, b in enumerate(self.token_byte) if b is not None and _utf8_length(b)]
        self.continuations = [(t, b) for t, b in enumerate(self.token_byte) if b is not None and 0x80 <= b <= 0xBF]
        #: Characters written by a piece of their own (one token each).
        self.own_chars = frozenset(s for s in own_pieces if len(s) == 1)
        lead_bytes = {b for _, b in self.leads}
        any_char = {b for _, b in self.continuations} == set(range(0x80, 0xC0)) and lead_bytes >= set(range(0xC2, 0xF5))
        machine.bind(self.single_chars, max((len(text) for _, text in self.multi), default=1), any_char)
        self._cache: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    # -- states ------------------------------------------------------------------------------------------

    def start(self, prompt: str = "") -> Cursor:
        """The cursor after the prompt, which must itself fit the shape (PromptMismatch otherwise)."""
        state = self.machine.start(prompt)
        for index, char in enumerate(prompt if self.machine.reads_prompt else ""):
            state = self.machine.feed(state, char)
            if state is None:
                raise PromptMismatch(index, char)
        return Cursor(state)

    def remaining(self, cursor: Cursor) -> int:
        """Tokens that surely finish the text (end-of-text included): the machine's count, plus the bytes of a
        character in progress (counted again: an over-estimate that only matters to the cache)."""
        return self.machine.remaining(cursor.state) + (4 - len(cursor.pending) if cursor.pending else 0)

    def advance(self, cursor: Cursor, token: int) -> Cursor:
        """The cursor after `token` (which its mask allowed)."""
        if token == self.eos_id:
            return cursor
        text = self.token_text[token]
        if text is not None:
            state = cursor.state
            for char in text:
                state = self.machine.feed(state, char)
                if state is None:
                    raise AssertionError(f"token {token} was not allowed")
            return Cursor(state)
        byte = self.token_byte[token]
        if byte is None:
            raise AssertionError(f"token {token} writes nothing")
        data = cursor.pending + bytes([byte])
        if len(data) < _utf8_length(data[0]):
            return Cursor(cursor.state, data)
        state = self.machine.feed(cursor.state, data.decode("utf-8"))
        if state is None:
            raise AssertionError(f"token {token} was not allowed")
        return Cursor(state)

    def boundary(self, cursor: Cursor) -> bool:
        return not cursor.pending and self.machine.boundary(cursor.state)

    def finished(self, cursor: Cursor) -> bool:
        return not cursor.pending and self.machine.can_end(cursor.state)

    # -- masks -------------------------------------------------------------------------------------------

    def mask(self, cursor: Cursor, tokens_left: int) -> torch.Tensor:
        """(vocab,) bool: the tokens that may come next with `tokens_left` tokens to go (end-of-text included).

        Never all False while `remaining(cursor) <= tokens_left`, which the sampler checks at the start and
        every allowed token keeps true."""
        machine = self.machine
        slack = tokens_left - self.remaining(cursor)
        key = (machine.key(cursor.state), cursor.pending, min(slack, SLACK_CAP + machine.max_growth))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        allowed = np.zeros(self.vocab_size, dtype=bool)
        after = tokens_left - 1  # tokens left once this one is written
        state = cursor.state
        if cursor.pending:
            total = _utf8_length(cursor.pending[0])
            for token, byte in self.continuations:
                allowed[token] = self._bytes_ok(state, cursor.pending + bytes([byte]), total, after)
        else:
            fast = machine.char_mask(state) if slack >= 1 + machine.max_growth else None
            if fast is not None:
                allowed[self.single_ids.numpy()] = fast
            else:
                for token, char in zip(self.single_ids.tolist(), self.single_chars):
                    allowed[token] = self._text_ok(state, char, after)
            for token, text in self.multi:
                allowed[token] = self._text_ok(state, text, after)
            for token, byte in self.leads:
                allowed[token] = self._bytes_ok(state, bytes([byte]), _utf8_length(byte), after)
            allowed[self.eos_id] = machine.can_end(state)
        result = torch.from_numpy(allowed)
        self._cache[key] = result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _text_ok(self, state: Any, text: str, after: int) -> bool:
        for char in text:
            state = self.machine.feed(state, char)
            if state is None:
                return False
        return self.machine.remaining(state) <= after

    def _bytes_ok(self, state: Any, data: bytes, total: int, after: int) -> bool:
        """Can the bytes `data` (of a `total`-byte character) still become an accepted character in time?"""
        if len(data) == total:
            try:
                char = data.decode("utf-8")
            except UnicodeDecodeError:
                return False
            return char not in self.own_chars and self._text_ok(state, char, after)
        missing = total - len(data)
        low, high = _prefix_range(data, total)
        ranges = self.machine.char_ranges(state)
        spans = [(max(low, a), min(high, b)) for a, b in (ranges if ranges is not None else [(low, high)])]
        tried = 0
        for first, last in spans:
            for point in range(first, last + 1):
                char = chr(point)
                # Surrogates are no characters; a character with a piece of its own is never written in bytes.
                if 0xD800 <= point <= 0xDFFF or char in self.own_chars:
                    continue
                tried += 1
                if tried > SCAN_LIMIT:
                    return False
                next_state = self.machine.feed(state, char)
                if next_state is not None and self.machine.remaining(next_state) + missing <= after:
                    return True
        return False


def _is_byte_piece(tokenizer: Tokenizer, token: int) -> bool:
    """A byte-fallback piece (`<0x41>`), as opposed to a piece whose text happens to be one byte."""
    piece = tokenizer.piece(token)
    return piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6
