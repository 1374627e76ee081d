"""The sparse-bitmask layout restores every tensor exactly (a negative zero comes back as +0),
for each dtype it handles, and keeps a tensor dense where the bitmask would not be smaller."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from safetensors.torch import load_file, save_file

from workers.formats import sparse_bitmask


def sparse(shape: tuple[int, int], density: float, dtype: torch.dtype) -> torch.Tensor:
    torch.manual_seed(0)
    values = torch.randn(shape) * (torch.rand(shape) < density)
    return values.to(dtype)


def test_roundtrip_of_every_supported_dtype(tmp_path: Path) -> None:
    ints3 = (torch.randint(-4, 4, (16, 64)) * (torch.rand(16, 64) < 0.4)).to(torch.int8)
    tensors = {
        "a.weight": sparse((16, 64), 0.5, torch.bfloat16),
        "b.weight": sparse((16, 64), 0.3, torch.float8_e4m3fn),
        "c.weight": (torch.randint(-127, 128, (16, 64)) * (torch.rand(16, 64) < 0.5)).to(
            torch.int8
        ),
        "d.weight_packed": pack_to_int32(ints3, 3),
        "d.weight_shape": torch.tensor([16, 64]),
        "d.weight_scale": torch.rand(16, 1, dtype=torch.bfloat16),
        "e.weight": sparse((16, 64), 0.95, torch.bfloat16),  # too dense: stays as is
        "norm.weight": torch.ones(64),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    manifest = sparse_bitmask.convert(tmp_path, ["a", "b", "c", "d", "e"])
    assert set(manifest["tensors"]) == {"a.weight", "b.weight", "c.weight", "d.weight_packed"}
    assert manifest["tensors"]["d.weight_packed"]["bits"] == 3
    assert not (tmp_path / "model.safetensors").exists()
    stored = load_file(str(tmp_path / sparse_bitmask.WEIGHTS))
    assert "e.weight" in stored and "a.weight" not in stored
    assert json.loads((tmp_path / sparse_bitmask.MANIFEST).read_text()) == manifest

    restored = sparse_bitmask.expand(tmp_path)
    assert set(restored) == set(tensors)
    for name, tensor in tensors.items():
        assert restored[name].dtype == tensor.dtype, name
        if tensor.is_floating_point():
            assert torch.equal(restored[name].float(), tensor.float()), name
        else:
            assert torch.equal(restored[name], tensor), name


def test_sparse_file_is_smaller(tmp_path: Path) -> None:
    weight = sparse((256, 256), 0.5, torch.bfloat16)
    save_file({"x.weight": weight}, str(tmp_path / "model.safetensors"))
    dense_bytes = (tmp_path / "model.safetensors").stat().st_size
    sparse_bitmask.convert(tmp_path, ["x"])
    # half the 16-bit values plus one bit per weight: 9/16 of the dense bytes
    assert (tmp_path / sparse_bitmask.WEIGHTS).stat().st_size < 0.6 * dense_bytes
