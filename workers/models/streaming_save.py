"""Save a disk-offloaded, quantized model shard by shard: the disk-offloaded mode's save, which
may never hold the whole model (issue 20).

The in-memory save goes through llm-compressor's `save_pretrained` wrapper, which compresses
every module in place and then hands the whole state dict to transformers; on an offloaded
model that wrapper converts to accelerate's offloading and back, and failed on ours (a meta
tensor it cannot copy). Here each module is read once (its tensors onloaded from the offload
folder), brought onto its grid exactly as `cast_for_storage` does in memory, compressed with
compressed-tensors' own per-module compressor (`BaseCompressor.compress`, the function the
wrapper's `compress_module` calls) and added to the current shard; a shard is written with
safetensors when the next module would take it past `max_shard_bytes`. Memory: one module's
tensors plus one shard's compressed tensors.

The files are the ones the in-memory save writes (same tensor names, dtypes and integers:
`tests/unit/test_streaming_save.py`), the shard layout and index follow transformers'
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`),
and config.json gets compressed-tensors' `quantization_config`, so plain transformers and vLLM
load the artifact.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

from workers.methods.shared.storage_dtype import is_weight_quantized, on_grid_state
from workers.models.hf import hf_config, tied_output_name

INDEX = "model.safetensors.index.json"


class ShardWriter:
    """Tensors in, safetensors shards of at most `max_shard_bytes` out (a tensor larger than
    that is a shard of its own), named and indexed as transformers names them.

    Nothing waits in memory: each tensor's bytes go to a spill file as they come, and a shard is
    written when it is full (its header, then the tensors copied from the spill in the order
    safetensors' own `save_file` writes them, so a shard holds the bytes `save_file` would have
    written). Holding a shard's tensors until then kept 0.76 GB of a 1.1B model's packed
    weights in memory during the save."""

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir, self.max_shard_bytes = out_dir, max_shard_bytes
        out_dir.mkdir(parents=True, exist_ok=True)
        self.spill_path = out_dir / ".spill"
        self.spill = self.spill_path.open("wb")
        self.pending: list[tuple[str, str, list[int], int, int]] = []  # name, dtype, shape, at, n
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """One module's tensors: kept in one shard together."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.pending and self.pending_bytes + size > self.max_shard_bytes:
            self.flush()
        for name, tensor in tensors.items():
            flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            at = self.spill.tell()
            self.spill.write(flat.numpy().data)  # the tensor's own bytes, no copy
            dtype = SAFETENSORS_DTYPES[tensor.dtype]
            self.pending.append((name, dtype, list(tensor.shape), at, flat.numel()))
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        self.spill.flush()
        order = dtype_order(frozenset(dtype for _, dtype, _, _, _ in self.pending))
        entries = sorted(self.pending, key=lambda e: (order[e[1]], e[0]))
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, _, size in entries:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
        path = self.out_dir / f".shard-{len(self.written):05d}.safetensors"
        with path.open("wb") as shard, self.spill_path.open("rb") as spill:
            shard.write(len(encoded).to_bytes(8, "little") + encoded)
            for _, _, _, at, size in entries:
                spill.seek(at)
                while size:
                    chunk = spill.read(min(size, COPY_CHUNK))
                    shard.write(chunk)
                    size -= len(chunk)
        self.written.append((path, sorted(name for name, *_ in self.pending)))
        self.pending, self.pending_bytes = [], 0
        self.spill.seek(0)
        self.spill.truncate()

    def close(self) -> list[Path]:
        """Write the last shard, give every shard its final name, write the index when there
        is more than one; returns the shard files."""
        self.flush()
        self.spill.close()
        self.spill_path.unlink()
        count = len(self.written)
        if count == 1:
            final = self.out_dir / "model.safetensors"
            self.written[0][0].rename(final)
            return [final]
        weight_map: dict[str, str] = {}
        files = []
        for number, (path, names) in enumerate(self.written, start=1):
            final = self.out_dir / f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return files


COPY_CHUNK = 16 * 2**20


def _safetensors_dtypes() -> dict[torch.dtype, str]:
    from safetensors.torch import _TYPES

    return {dtype: name for name, dtype in _TYPES.items() if isinstance(dtype, torch.dtype)}


SAFETENSORS_DTYPES = _safetensors_dtypes()


@cache
def dtype_order(dtypes: frozenset[str]) -> dict[str, int]:
    """The order in which safetensors lays out tensors of these dtypes (it sorts by dtype,
    then name), asked of safetensors itself on one-element tensors rather than restated."""
    from safetensors.torch import _TYPES, save

    probe = {dtype: torch.zeros(1, dtype=_TYPES[dtype]) for dtype in sorted(dtypes)}
    raw = save(probe, metadata={"format": "pt"})
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    return {name: rank for rank, name in enumerate(k for k in header if k != "__metadata__")}


def persistent_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters and saved buffers (onloaded: one read each)."""
    state = {name: p.data for name, p in module._parameters.items() if p is not None}
    skipped: set[str] = getattr(module, "_non_persistent_buffers_set", set())
    state.update(
        {
            name: b.data
            for name, b in module._buffers.items()
            if b is not None and name not in skipped
        }
    )
    return state


def tied_output(model: torch.nn.Module) -> str | None:
    """The tied output embedding's module name unless it was quantized (then it is a tensor of
    its own): saved once, as the input embedding, as transformers does."""
    name = tied_output_name(model)
    if name is None or getattr(model.get_submodule(name), "quantization_scheme", None):
        return None
    return name


@torch.no_grad()
def save_offloaded(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    max_shard_bytes: int,
    dtype: torch.dtype = torch.bfloat16,
) -> list[Path]:
    """Compress and write `model` (quantized by an llm-compressor stage, offloaded or not) to
    `out_dir`; returns the weight files."""
    from compressed_tensors.compressors import BaseCompressor, ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus

    compressor = ModelCompressor.from_pretrained_model(model)  # sets each scheme's format
    writer = ShardWriter(out_dir, max_shard_bytes)
    skip = tied_output(model)
    # The modules left in 16 bits first (the embeddings: the largest tensors), while the shard
    # is still empty; then the quantized ones, whose packed tensors wait in the shard. On the
    # 1.1B model, model order peaked at 1.12 GB: the output head read last, in float32, beside
    # 0.6 GB of packed layers. (safetensors orders a file's tensors itself: same bytes.)
    modules = [(n, m) for n, m in model.named_modules(remove_duplicate=True) if n != skip]
    modules.sort(key=lambda item: is_weight_quantized(item[1]))
    for name, module in modules:
        state = persistent_state(module)
        if not state:
            continue
        if is_weight_quantized(module) and "weight_scale" in state:
            scheme = module.quantization_scheme
            state = on_grid_state(state, scheme, dtype)
            state = BaseCompressor.get_value_from_registry(scheme.format.value).compress(
                state, scheme
            )
        else:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        prefix = f"{name}." if name else ""
        writer.add({prefix + key: tensor.cpu() for key, tensor in state.items()})
        del state
    files = writer.close()
    if compressor.quantization_config is not None:
        # What `ModelCompressor.compress_model` records: readers decompress on load.
        compressor.quantization_config.quantization_status = QuantizationStatus.COMPRESSED
    write_config(model, out_dir, compressor)
    return files


def write_config(model: torch.nn.Module, out_dir: Path, compressor: Any) -> None:
    """config.json (in the storage dtype, with the quantization config compressed-tensors
    reads) and generation_config.json."""
    config = hf_config(model)
    original = config.dtype
    config.dtype = torch.bfloat16
    try:
        config.save_pretrained(str(out_dir))
    finally:
        config.dtype = original
    generation: Any = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(out_dir))
    compressor.update_config(str(out_dir))
