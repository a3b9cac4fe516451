"""The SentencePiece model as data: pieces, scores, types and the settings encoding depends on.

The web page encodes prompts without SentencePiece, so it needs the model's piece table and the
few settings that decide how text is encoded. They are read here from the serialized
`ModelProto` with a minimal protobuf reader (no `protobuf` package), and checked: the page
reproduces exactly the encoder lstmgen trains (identity normalisation, no dummy prefix, spaces as
U+2581, byte fallback; docs/bundle-format.md §5), and refuses any other.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import LstmgenError

# SentencePiece.Type (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
META = "\u2581"


@dataclass
class PieceTable:
    """What encoding and decoding need from a SentencePiece model."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: str
    #: Characters lstmgen splits off and encodes as their UTF-8 byte pieces (lstmgen.tokenizer.Tokenizer).
    escaped: list[str]

    def byte_ids(self) -> list[int]:
        """The id of the byte piece `<0xHH>` for every byte value (all 256 exist in lstmgen's models)."""
        found = {piece: index for index, (piece, kind) in enumerate(zip(self.pieces, self.types)) if kind == BYTE}
        ids = []
        for value in range(256):
            name = f"<0x{value:02X}>"
            if name not in found:
                raise LstmgenError(f"the tokenizer has no byte piece {name}; retrain it with `lstmgen tokenize`")
            ids.append(found[name])
        return ids

    def token_bytes(self, index: int) -> bytes:
        """docs/bundle-format.md §5: byte pieces are their byte, control and unknown pieces nothing, others their text."""
        kind, piece = self.types[index], self.pieces[index]
        if kind == BYTE:
            return bytes([int(piece[3:5], 16)])
        if kind in (CONTROL, UNKNOWN):
            return b""
        return piece.replace(META, " ").encode("utf-8")


def read_piece_table(model_proto: bytes) -> PieceTable:
    """Parse and check a serialized SentencePiece model (one LstmgenError for anything the page cannot reproduce)."""
    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    trainer: dict[int, Any] = {}
    normalizer: dict[int, Any] = {}
    try:
        for number, value in _fields(model_proto):
            if number == 1 and isinstance(value, bytes):
                piece = dict(_fields(value))
                text = piece.get(1, b"")
                pieces.append(text.decode("utf-8") if isinstance(text, bytes) else "")
                score = piece.get(2, 0.0)
                scores.append(float(score) if isinstance(score, float) else 0.0)
                kind = piece.get(3, NORMAL)
                types.append(int(kind) if isinstance(kind, int) else NORMAL)
            elif number == 2 and isinstance(value, bytes):
                trainer.update(_fields(value))
            elif number == 3 and isinstance(value, bytes):
                normalizer.update(_fields(value))
    except (ValueError, UnicodeDecodeError, struct.error):
        raise LstmgenError("the bundle's tokenizer is not a readable SentencePiece model") from None
    model_type = MODEL_TYPES.get(int(trainer.get(3, 1)), "unknown")
    settings = {
        "normalization": (normalizer.get(2, b"") == b"", "it normalises text (not identity normalisation)"),
        "dummy prefix": (not normalizer.get(3, 1), "it adds a dummy prefix"),
        "whitespace": (not normalizer.get(4, 1), "it removes extra whitespace"),
        "escape": (bool(normalizer.get(5, 1)), "it does not write spaces as U+2581"),
        "suffix": (not trainer.get(24, 0), "it treats whitespace as a suffix"),
        "byte fallback": (bool(trainer.get(35, 0)), "it has no byte fallback"),
        "model type": (model_type in ("unigram", "bpe", "char"), f"its model type is {model_type}"),
    }
    for passed, reason in settings.values():
        if not passed:
            raise LstmgenError(
                f"the bundle's tokenizer cannot be reproduced in a web page: {reason}; "
                "export a model whose tokenizer lstmgen trained"
            )
    escaped = [META] if META in pieces else [META, " "]
    table = PieceTable(pieces, scores, types, model_type, escaped)
    table.byte_ids()
    return table


def _fields(data: bytes) -> Iterator[tuple[int, bytes | int | float]]:
    """(field number, value) of a protobuf message's top level: bytes, varints, and fixed32 as a float32."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire = key & 7
        value: bytes | int | float
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated protobuf field")
            value, position = data[position : position + length], position + length
        elif wire == 5:
            (value,) = struct.unpack_from("<f", data, position)
            position += 4
        elif wire == 1:
            (value,) = struct.unpack_from("<d", data, position)
            position += 8
        else:
            raise ValueError("unsupported protobuf wire type")
        yield key >> 3, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
