"""Sparse artifacts on disk: each pruned weight tensor keeps only its nonzeros plus a 1-bit
mask, so size on disk reflects the sparsity, also on top of quantization.

Why our own: compressed-tensors 0.19 (the version llm-compressor 0.14 needs) removed its
sparse compressors (`sparse-bitmask`, `sparse-24-bitmask`; "Sparse compression is no longer
supported"), and vLLM dropped the 2:4 kernels with them. The layout follows the old
`sparse-bitmask` one: per tensor `<name>.bitmask` (uint8, rows x ceil(cols / 8), bit order
little) and `<name>.values` (the nonzeros in row-major order).

Works on the tensors as saved, after quantization packed them:
- 16-bit float, int8 (W8A8) and fp8 weights: the nonzero elements, bit for bit (a pruned
  weight stored as -0.0 comes back as +0.0);
- `weight_packed` (INT2-8 pack-quantized): the nonzero integers, packed again at the same
  width. The mask is integer != 0, so a pruned weight must quantize to 0 (symmetric schemes).
A tensor is converted only where that is smaller; everything else is copied as is, and
`squash_format.json` lists what was converted. `expand` restores the exact dense tensors, which
load with transformers (`loader.load_pretrained` does this for the user).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FORMAT = "squash-sparse-bitmask"
VERSION = 1
MANIFEST = "squash_format.json"
WEIGHTS = "model.sparse.safetensors"
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _read_all(out_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(out_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _packed_bits(packed_columns: int, columns: int) -> int | None:
    candidates = [b for b in range(1, 9) if -(-columns * b // 32) == packed_columns]
    return candidates[0] if len(candidates) == 1 else None


def _encode(
    tensor: torch.Tensor, bits: int | None, shape: list[int]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )
    from compressed_tensors.utils import pack_bitmasks

    if bits is not None:
        dense = unpack_from_int32(tensor, bits, torch.Size(shape))
        mask = dense != 0
        nonzeros = dense[mask]
        values = pack_to_int32(nonzeros.reshape(1, -1), bits) if nonzeros.numel() else nonzeros
        dense_bits = bits
    else:
        mask = tensor.float() != 0
        values = tensor.view(_RAW[tensor.element_size()])[mask]
        dense_bits = 8 * tensor.element_size()
    count = int(mask.sum())
    if count * dense_bits + mask.numel() >= mask.numel() * dense_bits:
        return None  # not sparse enough to be smaller
    parts = {"bitmask": pack_bitmasks(mask.to(torch.uint8)), "values": values}
    meta = {"dtype": str(tensor.dtype), "shape": shape, "bits": bits, "nonzeros": count}
    return parts, meta


def convert(out_dir: Path, layers: list[str]) -> dict[str, Any]:
    """Rewrite the saved checkpoint in `out_dir` with the given layers' weights stored sparse."""
    from safetensors.torch import save_file

    tensors = _read_all(out_dir)
    converted: dict[str, Any] = {}
    for layer in layers:
        if f"{layer}.weight_packed" in tensors:
            key = f"{layer}.weight_packed"
            shape = [int(v) for v in tensors[f"{layer}.weight_shape"].tolist()]
            bits = _packed_bits(tensors[key].shape[-1], shape[-1])
            if bits is None:
                continue
        elif f"{layer}.weight" in tensors:
            key, bits = f"{layer}.weight", None
            shape = list(tensors[key].shape)
        else:
            continue
        encoded = _encode(tensors[key], bits, shape)
        if encoded is None:
            continue
        parts, meta = encoded
        del tensors[key]
        for part, value in parts.items():
            tensors[f"{key}.{part}"] = value.contiguous()
        converted[key] = meta
    for file in out_dir.glob("*.safetensors*"):
        file.unlink()  # shards and their index, replaced by one file
    save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    manifest = {"format": FORMAT, "version": VERSION, "weights": WEIGHTS, "tensors": converted}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def expand(path: Path) -> dict[str, torch.Tensor]:
    """The dense tensors of a sparse artifact, exactly as the checkpoint held them before."""
    from compressed_tensors.compressors.pack_quantized.helpers import (
        pack_to_int32,
        unpack_from_int32,
    )
    from compressed_tensors.utils import unpack_bitmasks
    from safetensors.torch import load_file

    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} artifact")
    tensors = load_file(str(path / manifest["weights"]))
    for key, meta in manifest["tensors"].items():
        shape, bits = meta["shape"], meta["bits"]
        mask = unpack_bitmasks(tensors.pop(f"{key}.bitmask"), shape)
        values = tensors.pop(f"{key}.values")
        if bits is not None:
            nonzeros = (
                unpack_from_int32(values, bits, torch.Size([1, meta["nonzeros"]])).reshape(-1)
                if meta["nonzeros"]
                else torch.zeros(0, dtype=torch.int8)
            )
            dense = torch.zeros(shape, dtype=torch.int8)
            dense[mask] = nonzeros
            tensors[key] = pack_to_int32(dense, bits)
        else:
            dtype = getattr(torch, meta["dtype"].removeprefix("torch."))
            raw = torch.zeros(shape, dtype=values.dtype)
            raw[mask] = values
            tensors[key] = raw.view(dtype)
    return tensors
