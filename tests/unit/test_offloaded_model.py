"""A model opened disk-offloaded (`workers/models/offloaded.py`) reads no weight while opening,
computes exactly what the in-memory model computes, gets the same scales and weights from an
llm-compressor stage,
keeps the checkpoint's files untouched when a stage changes weights, and refuses a checkpoint
that lacks a parameter instead of running with a random one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from workers.formats.loader import load_pretrained
from workers.models.offloaded import NotOffloadable, open_offloaded

CPU = torch.device("cpu")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rtn(model: torch.nn.Module) -> None:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    weights = QuantizationArgs(num_bits=4, group_size=32, strategy="group", symmetric=True)
    groups = {"w4": QuantizationScheme(targets=["Linear"], weights=weights)}
    oneshot(model=model, recipe=QuantizationModifier(config_groups=groups, ignore=["lm_head"]))


def test_opening_reads_no_weight_and_the_logits_equal_the_in_memory_models(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = open_offloaded(tiny_model_dir, tmp_path / "offload", onload_device=CPU)
    offloaded = [
        tensor
        for module in model.modules()
        for tensor in getattr(module._parameters, "offloaded_values", {}).values()
        if tensor is not None  # a Linear's absent bias
    ]
    assert offloaded, "no parameter went to the disk cache"
    assert all(tensor.device.type == "meta" for tensor in offloaded)
    ids = torch.randint(0, 400, (2, 48), generator=torch.Generator().manual_seed(0))
    reference = load_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_a_stage_on_the_offloaded_model_equals_the_in_memory_one_and_spares_the_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    files = {file: _sha256(file) for file in tiny_model_dir.glob("*.safetensors")}
    model = open_offloaded(tiny_model_dir, tmp_path / "offload", onload_device=CPU)
    reference = load_pretrained(tiny_model_dir).eval()
    _rtn(model)
    _rtn(reference)
    # The stage's results, read through the disk cache: every quantized layer's scale, zero
    # point and weight equal the in-memory run's.
    expected = {
        f"{name}.{part}": getattr(module, part)
        for name, module in reference.named_modules()
        if hasattr(module, "weight_scale")
        for part in ("weight", "weight_scale", "weight_zero_point")
    }
    assert len(expected) == 3 * 14  # 7 Linears per decoder layer, 2 layers, lm_head ignored
    for name, module in model.named_modules():
        for part in ("weight", "weight_scale", "weight_zero_point"):
            if f"{name}.{part}" in expected:
                assert torch.equal(getattr(module, part), expected.pop(f"{name}.{part}")), name
    assert not expected, f"not quantized when offloaded: {sorted(expected)}"
    # The fake-quantized forward reads `weight` twice; from disk, the second read is a fresh
    # tensor without the quantized values, so a quantized offloaded model is run with the
    # onloaded tensors kept (compressed-tensors' `disable_offloading`), as the library's
    # sequential pipeline does for the layer it calibrates.
    from compressed_tensors.offload import disable_offloading

    ids = torch.randint(0, 400, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), disable_offloading():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert {file: _sha256(file) for file in files} == files


def test_a_checkpoint_without_a_parameter_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(NotOffloadable, match=r"model\.norm\.weight"):
        open_offloaded(broken, tmp_path / "offload", onload_device=CPU)
