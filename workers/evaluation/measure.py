"""Sizes, parameter counts and greedy generations, all measured from real files and models."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workers.models.hf import pretrained, tied_output_name


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files (safetensors, or a GGUF file) in a model directory."""
    return sum(f.stat().st_size for f in [*path.glob("*.safetensors"), *path.glob("*.gguf")])


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def saved_checkpoint_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Size of the model saved as a safetensors checkpoint with its float tensors in `dtype`
    (the model itself is not changed)."""
    # Convert each storage once, so tied weights (SmolLM2's embedding and lm_head) stay shared
    # and are saved once, as save_pretrained does for the model itself.
    converted: dict[int, torch.Tensor] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            key = tensor.data_ptr()
            if key not in converted:
                converted[key] = tensor.to(dtype)
            tensor = converted[key]
        state[name] = tensor
    with tempfile.TemporaryDirectory() as tmp:
        pretrained(model).save_pretrained(tmp, state_dict=state)
        return weight_bytes(Path(tmp))


# Parameters compressed-tensors adds beside a quantized weight: storage overhead (counted in
# the checkpoint size and bits per weight), not model parameters.
QUANTIZATION_PARAMETERS = ("_scale", "_zero_point", "_g_idx", "_global_scale")
FLOATING_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


def is_offloaded(model: torch.nn.Module) -> bool:
    """Whether the model's weights live on disk (the disk-offloaded mode). Not any
    compressed-tensors cache: a model transformers loads, or llm-compressor dispatches, keeps
    its tensors in memory behind CPU / device caches (the job's in-memory load check does)."""
    from compressed_tensors.offload.cache import DiskCache

    return any(isinstance(m._parameters, DiskCache) for m in model.modules())


def _model_parameters(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Unique parameters (tied embeddings once), without quantization scales / zero points,
    one at a time (an offloaded model reads each from disk as it is reached)."""
    seen: set[int] = set()
    skipped = _tied_output_parameters(model) if is_offloaded(model) else set()
    for name, param in model.named_parameters(remove_duplicate=True):
        if name.endswith(QUANTIZATION_PARAMETERS) or name in skipped or id(param) in seen:
            continue
        seen.add(id(param))
        yield param


def _tied_output_parameters(model: torch.nn.Module) -> set[str]:
    """The tied output embedding's parameter names (counted once, as the input embedding)."""
    name = tied_output_name(model)
    if name is None:
        return set()
    output = model.get_submodule(name)
    return {f"{name}.{p}" for p, _ in output.named_parameters(recurse=False)}


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in _model_parameters(model))


def nonzero_parameter_count(model: torch.nn.Module) -> int:
    """Parameters that are not zero: what pruning removed shows here, not in the count."""
    return sum(int(torch.count_nonzero(p)) for p in _model_parameters(model))


def checkpoint_bytes_as(model_dir: Path, dtype: torch.dtype) -> int:
    """Size of the directory's safetensors checkpoint with its floating tensors in `dtype`,
    from the files' headers (no weight read): the files' own size when they already store
    that dtype (the disk-offloaded mode's figure; `saved_checkpoint_bytes` needs the whole
    model in memory)."""
    from app.planning.model_facts import read_safetensors_header

    element = torch.empty(0, dtype=dtype).element_size()
    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        with file.open("rb") as handle:
            header = 8 + int.from_bytes(handle.read(8), "little")
        total += header
        for tensor in read_safetensors_header(file).values():
            floating = tensor.dtype in FLOATING_DTYPES
            total += tensor.elements * element if floating else tensor.nbytes
    return total


@torch.no_grad()
def greedy_generations(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Each prompt's greedy continuation. A disk-offloaded model reads every weight per
    generated token, so its prompts go in one left-padded batch (one read per token for all)."""
    if is_offloaded(model) and len(prompts) > 1:
        return _batched_generations(model, tokenizer, prompts, max_new_tokens)
    outputs = []
    device = next(model.parameters()).device
    lm: Any = model  # `generate` comes from the architecture's class (GenerationMixin)
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        generated = lm.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
        )
        new_tokens = generated[0, inputs["input_ids"].shape[1] :]
        outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return outputs


def _batched_generations(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int
) -> list[str]:
    device = next(model.parameters()).device
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    width = max(len(ids) for ids in encoded)
    pad = 0  # as the unbatched path's pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    lm: Any = model
    generated = lm.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in generated]


QUANTIZED_WEIGHT_PARTS = (
    "weight",
    "weight_packed",
    "weight_scale",
    "weight_zero_point",
    "weight_shape",
    "weight_g_idx",
    "weight_global_scale",
)


def quantized_weight_storage(path: Path) -> dict[str, float | int]:
    """Bits on disk per quantized weight, read from the safetensors files themselves.

    A layer counts as quantized when it has a `weight_scale`; its storage is every `weight*`
    tensor it saved (packed integers, scales, zero points, shape), and in a sparse artifact the
    bitmask and nonzero values that replace its weight. Returns the number of such layers, their
    weights, their bytes and bits per weight; zeros when nothing is quantized.
    """
    import json

    from safetensors import safe_open

    from workers.formats import gguf

    manifest = path / "squash_format.json"
    layout = json.loads(manifest.read_text()) if manifest.exists() else {}
    if layout.get("format") == gguf.FORMAT:
        return gguf.storage(gguf.artifact_file(path))
    sparse = layout.get("tensors", {})
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                base, suffix = key, ""
                for ending in (".bitmask", ".values"):
                    if key.endswith(ending) and key[: -len(ending)] in sparse:
                        base, suffix = key[: -len(ending)], ending
                layer, _, part = base.rpartition(".")
                if part in QUANTIZED_WEIGHT_PARTS:
                    parts.setdefault(layer, {})[part + suffix] = handle.get_tensor(key)
    weights = stored = layers = 0
    for layer, tensors in parts.items():
        if "weight_scale" not in tensors:
            continue
        layers += 1
        if "weight_shape" in tensors:
            weights += int(torch.prod(tensors["weight_shape"].long()))
        elif "weight" in tensors:
            weights += tensors["weight"].numel()
        else:
            weights += int(torch.prod(torch.tensor(sparse[f"{layer}.weight"]["shape"])))
        stored += sum(t.numel() * t.element_size() for t in tensors.values())
    return {
        "quantized_layers": layers,
        "quantized_weights": weights,
        "quantized_bytes": stored,
        "bits_per_weight": round(8 * stored / weights, 4) if weights else 0.0,
    }


def unquantized_tensors(path: Path, largest: int = 5) -> dict[str, object]:
    """Tensors of a saved model that stay in floating point (embeddings, norms, unquantized
    layers), read from the safetensors headers: what bounds the compression ratio, e.g.
    SmolLM2's tied embedding (28M of 135M parameters)."""
    import json

    from safetensors import safe_open

    from workers.formats import gguf

    manifest = path / "squash_format.json"
    layout = json.loads(manifest.read_text()) if manifest.exists() else {}
    if layout.get("format") == gguf.FORMAT:
        return gguf.float_tensors(gguf.artifact_file(path), largest)
    sparse = layout.get("tensors", {})
    shapes: dict[str, tuple[list[int], str]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                piece = handle.get_slice(key)
                shapes[key] = (list(piece.get_shape()), str(piece.get_dtype()))
    quantized_layers = {key.rpartition(".")[0] for key in shapes if key.endswith(".weight_scale")}
    found: list[dict[str, Any]] = []
    for key, (shape, dtype) in shapes.items():
        base = key.removesuffix(".values").removesuffix(".bitmask")
        if key.endswith(".bitmask") or base.rpartition(".")[0] in quantized_layers:
            continue
        if dtype not in ("F32", "F16", "BF16", "F64"):
            continue
        numel = 1
        for dim in sparse.get(base, {}).get("shape", shape):
            numel *= dim
        found.append({"name": base, "parameters": numel, "dtype": dtype})
    found.sort(key=lambda item: item["parameters"], reverse=True)
    return {
        "tensors": len(found),
        "parameters": sum(item["parameters"] for item in found),
        "largest": found[:largest],
    }
