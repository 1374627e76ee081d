"""A GGUF file's tensor table read from its header alone: name, type, element and byte counts.

Why not gguf-py's `GGUFReader`: it parses every metadata value element by element through
numpy memmap views, ~6 s for SmolLM2's file (its tokenizer's 49,152-entry vocabulary and merges
dominate), and a GGUF job asked for the table three times (stage notes, storage, float tensors).
Here the metadata is skipped with `struct` (each value's size is known from its type) and only
the tensor infos are decoded: milliseconds. The layout is GGUF v2/v3's, little-endian
(https://github.com/ggml-org/ggml/blob/master/docs/gguf.md); the block and type sizes are
gguf-py's own table, so a type it knows is sized as it sizes it (`test_gguf.py` checks the two
readers agree).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO, Any

MAGIC = b"GGUF"
# GGUF value types -> byte size of one scalar (8 = string, 9 = array are handled apart).
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9


def _unpack(handle: IO[bytes], fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _skip_value(handle: IO[bytes], value_type: int) -> None:
    if value_type == STRING:
        handle.seek(_unpack(handle, "<Q"), 1)
    elif value_type == ARRAY:
        item_type, count = _unpack(handle, "<I"), _unpack(handle, "<Q")
        if item_type in SCALAR_SIZES:
            handle.seek(SCALAR_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, item_type)
    elif value_type in SCALAR_SIZES:
        handle.seek(SCALAR_SIZES[value_type], 1)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")


def _string(handle: IO[bytes]) -> str:
    return handle.read(_unpack(handle, "<Q")).decode("utf-8")


def tensor_table(file: Path) -> list[dict[str, Any]]:
    """Every tensor in the file: name, type as written, elements and bytes."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with file.open("rb") as handle:
        if handle.read(4) != MAGIC:
            raise ValueError(f"{file.name} is not a GGUF file")
        version = _unpack(handle, "<I")
        if version not in (2, 3):
            raise ValueError(f"{file.name}: GGUF version {version} is not supported")
        tensors, fields = _unpack(handle, "<Q"), _unpack(handle, "<Q")
        for _ in range(fields):
            handle.seek(_unpack(handle, "<Q"), 1)  # the key
            _skip_value(handle, _unpack(handle, "<I"))
        table = []
        for _ in range(tensors):
            name = _string(handle)
            dims = [_unpack(handle, "<Q") for _ in range(_unpack(handle, "<I"))]
            kind = GGMLQuantizationType(_unpack(handle, "<I"))
            handle.seek(8, 1)  # the data offset
            elements = 1
            for dim in dims:
                elements *= dim
            block, type_size = GGML_QUANT_SIZES[kind]
            table.append(
                {
                    "name": name,
                    "type": kind.name,
                    "elements": elements,
                    "bytes": elements * type_size // block,
                }
            )
    return table
