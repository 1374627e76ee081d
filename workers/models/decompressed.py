"""Load a compressed-tensors artifact without holding it whole: the disk-offloaded mode's load
check and the model its compressed evaluation runs (issue 20).

Every quantized module's stored tensors (`weight_packed`, `weight_scale`, ...) are read from the
artifact's own files and decompressed by compressed-tensors' per-module decompressor (the one
`ModelCompressor.decompress_model`, which transformers calls when it loads the artifact,
applies module by module), with the scale in float32 so the weight is exactly `q * scale`
(what the in-memory load holds: `tests/unit/test_streaming_save.py`). The dense weights go to a
scratch copy, which `open_offloaded` then opens without reading. Memory: one
module, and one small file's tensors. A tensor that is missing, or a module that does not
decompress, fails the load check as transformers' load would.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from workers.formats.loader import trust_remote_code
from workers.methods.shared.storage_dtype import is_weight_quantized
from workers.models.offloaded import checkpoint_tensors, open_offloaded
from workers.models.streaming_save import ShardWriter

QUANTIZATION_CONFIG = "quantization_config"
# Size of one file of the dense scratch copy (its own layout: many small files, one per few
# decoder layers).
DECOMPRESSED_FILE_BYTES = 256 * 2**20


def module_schemes(artifact_dir: Path) -> dict[str, object]:
    """Each quantized module's scheme, as compressed-tensors resolves the artifact's
    `quantization_config` on the model its config builds (on the meta device: no weights)."""
    from accelerate import init_empty_weights
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads((artifact_dir / "config.json").read_text()).get(QUANTIZATION_CONFIG)
    if raw is None:
        return {}
    config = AutoConfig.from_pretrained(str(artifact_dir), trust_remote_code=trust_remote_code())
    if hasattr(config, QUANTIZATION_CONFIG):
        delattr(config, QUANTIZATION_CONFIG)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code())
    quantization = QuantizationConfig.model_validate(raw)
    apply_quantization_config(model, quantization)
    fallback = quantization.format
    schemes: dict[str, object] = {}
    for name, module in model.named_modules():
        if is_weight_quantized(module):
            scheme = module.quantization_scheme
            scheme.format = scheme.format or fallback
            schemes[name] = scheme
    return schemes


@torch.no_grad()
def decompress_artifact(artifact_dir: Path, out_dir: Path) -> None:
    """A dense copy of the artifact in `out_dir` (config.json without the quantization
    config; quantized weights in float32, the rest as stored)."""
    from compressed_tensors.compressors import BaseCompressor
    from safetensors import safe_open

    schemes = module_schemes(artifact_dir)
    files = checkpoint_tensors(artifact_dir)
    by_module: dict[str, list[str]] = defaultdict(list)
    for name in files:
        owner = name.rsplit(".", 1)[0]
        module = next((m for m in _parents(owner) if m in schemes), None)
        by_module[module if module is not None else name].append(name)
    writer = ShardWriter(out_dir, DECOMPRESSED_FILE_BYTES)
    for key in sorted(by_module, key=_layer_order):
        state: dict[str, torch.Tensor] = {}
        for name in by_module[key]:
            with safe_open(str(files[name]), "pt") as handle:
                state[name] = handle.get_tensor(name)
        if key in schemes:
            scheme = schemes[key]
            local = {name.removeprefix(f"{key}."): tensor for name, tensor in state.items()}
            if "weight_scale" in local:
                local["weight_scale"] = local["weight_scale"].float()
            compressor = BaseCompressor.get_value_from_registry(scheme.format)  # type: ignore[attr-defined]
            dense = compressor.decompress(local, scheme)
            state = {f"{key}.{name}": tensor for name, tensor in dense.items()}
            state = {n: t for n, t in state.items() if not _is_quantization_tensor(n)}
        writer.add(state)
        del state
    writer.close()
    config = json.loads((artifact_dir / "config.json").read_text())
    config.pop(QUANTIZATION_CONFIG, None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = artifact_dir / "generation_config.json"
    if generation.exists():
        (out_dir / generation.name).write_text(generation.read_text())


def open_artifact_offloaded(
    artifact_dir: Path, scratch: Path, *, onload_device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The artifact decompressed into `scratch`/dense and opened disk-offloaded."""
    dense = scratch / "dense"
    decompress_artifact(artifact_dir, dense)
    return open_offloaded(dense, scratch / "offload", onload_device=onload_device, dtype=dtype)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(len(parts), 0, -1)]


def _layer_order(name: str) -> tuple[int, str]:
    """Modules in the order of the model (layer 2 before layer 10), so each file holds
    neighbouring layers."""
    parts = name.split(".")
    numbers = [int(p) for p in parts if p.isdigit()]
    return (numbers[0] if numbers else -1, name)


def _is_quantization_tensor(name: str) -> bool:
    """What compressed-tensors keeps beside a decompressed weight (its scale, zero point):
    the dense model has no such parameter."""
    return name.rsplit(".", 1)[-1].startswith("weight_")
