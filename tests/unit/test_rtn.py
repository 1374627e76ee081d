"""RTN on a tiny random Llama: the saved artifact loads back and its weights lie on the grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig

from app.recipes import RtnParams
from workers.errors import JobFailure
from workers.methods.base import StageInput
from workers.methods.quantization.rtn import RoundToNearest
from workers.methods.shared.layers import targeted_linears


def quantize(model_dir: Path, out: Path, params: RtnParams) -> tuple[dict, dict]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    original = {
        n: m.weight.detach().clone() for n, m in targeted_linears(model, ["Linear"], ["lm_head"])
    }
    model.to(torch.bfloat16)
    result = RoundToNearest().apply(StageInput(model, None, [], None), params)  # type: ignore[arg-type]
    result.model.save_pretrained(out, save_compressed=True)
    # run_compressed=False: decompress into dense weights so the test can inspect them (the
    # default keeps the packed tensors and decompresses inside each forward).
    loaded = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    restored = {n: m.weight.detach() for n, m in targeted_linears(loaded, ["Linear"], ["lm_head"])}
    return original, restored


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_group_artifact_loads_and_lies_on_a_16_level_grid(
    tiny_model_dir: Path, tmp_path: Path, symmetric: bool
) -> None:
    params = RtnParams(bits=4, group_size=32, symmetric=symmetric)
    original, restored = quantize(tiny_model_dir, tmp_path, params)
    assert set(original) == set(restored) and len(original) == 14  # 7 linears x 2 layers
    for name, weight in restored.items():
        groups = weight.reshape(weight.shape[0], -1, 32)
        levels = max(len(torch.unique(g)) for g in groups.reshape(-1, 32))
        assert levels <= 16, name
        # Round-to-nearest: every weight within one quantization step of the original.
        step = (original[name].reshape(groups.shape).abs().amax(-1, keepdim=True) / 7).max()
        assert (weight - original[name]).abs().max() <= step * 1.05, name
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        packed = handle.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert packed.dtype == torch.int32 and packed.shape == (64, 128 * 4 // 32)


def test_int8_per_channel_stores_8_bits_with_one_scale_per_row(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    original, restored = quantize(tiny_model_dir, tmp_path, RtnParams(bits=8))
    for name, weight in restored.items():
        assert max(len(torch.unique(row)) for row in weight) <= 256
        rel = (weight - original[name]).norm() / original[name].norm()
        assert rel < 0.01, name
    # compressed-tensors packs weight-only INT8 too: four 8-bit values per int32.
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        packed = handle.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
        scale = handle.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
    assert packed.dtype == torch.int32 and packed.shape == (64, 64 * 8 // 32)
    assert scale.shape == (64, 1)


def test_preflight_names_layers_and_valid_group_sizes(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(JobFailure) as caught:
        RoundToNearest().preflight(model, RtnParams(bits=4, group_size=128))
    message = caught.value.message
    assert caught.value.code == "invalid_recipe"
    assert "does not divide" in message and "model.layers.0.mlp.gate_proj" in message
    assert "valid group sizes: [16, 32, 64]" in message
    with pytest.raises(JobFailure, match="match no Linear"):
        RoundToNearest().preflight(model, RtnParams(targets=["re:nothing.*"]))
    # The tiny model's 64-wide layers are legal but not what vLLM's fast kernels want: a warning.
    [warning] = RoundToNearest().preflight(model, RtnParams(bits=8))
    assert "not multiples of 128" in warning
