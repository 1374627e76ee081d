"""Per-layer error of a compression: how far each linear layer's output moved.

Before the stages run, one forward pass of the original model over calibration tokens records
every linear layer's input and output (on the CPU). After the artifact is saved and loaded back,
each layer of the compressed model gets the *original's* input and its output is compared:
relative error = ||y_compressed - y_original||_F / ||y_original||_F. Feeding the original's
input isolates each layer's own damage from the error that earlier layers pass down.

Layers that a structured stage removed are reported as removed; decoder layers are matched
through the stages' `removed_layers` notes (index 5 of a pruned model may be the original's 6);
a layer whose input width changed (pruned MLP channels, heads) is reported as reshaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LAYER_INDEX = re.compile(r"^(?P<prefix>.*\.layers\.)(?P<index>\d+)(?P<rest>\..*)$")
MOST_DAMAGED = 10


@dataclass
class Capture:
    """Each linear layer's input and output; in memory, or in one small file per layer under
    `store` (a disk-offloaded job: 256 tokens of a 1.1B model's 154 layers are 0.85 GB)."""

    tokens: int
    store: Path | None = None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def put(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.store is None:
            self.inputs[name], self.outputs[name] = x, y
            return
        from safetensors.torch import save_file

        path = self.store / f"{len(self.files):05d}.safetensors"
        save_file({"input": x.contiguous(), "output": y.contiguous()}, str(path))
        self.files[name] = path

    def names(self) -> list[str]:
        return list(self.files if self.store is not None else self.inputs)

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.store is None:
            return self.inputs[name], self.outputs[name]
        from safetensors.torch import load_file

        pair = load_file(str(self.files[name]))
        return pair["input"], pair["output"]


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every linear layer but the output head (no method here compresses it; on SmolLM2 it is
    the tied embedding)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")
    }


@torch.no_grad()
def capture(model: torch.nn.Module, token_ids: list[int], store: Path | None = None) -> Capture:
    """Inputs and outputs of every linear layer for one sequence of `token_ids` (kept in files
    under `store` when given)."""
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    result = Capture(tokens=len(token_ids), store=store)
    handles = []
    for name, module in linear_layers(model).items():

        def hook(_m: torch.nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            result.put(
                name,
                args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu(),
                out.detach().reshape(-1, out.shape[-1]).float().cpu(),
            )

        handles.append(module.register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        model(torch.tensor([token_ids], device=device))
    finally:
        for handle in handles:
            handle.remove()
    return result


def layer_origin(stage_notes: list[dict[str, Any]], original_layers: int) -> list[int] | None:
    """For each decoder layer of the compressed model, the original layer it came from; None
    when a stage swapped in another model (a distillation student from elsewhere)."""
    origin = list(range(original_layers))
    for notes in stage_notes:
        if notes.get("student") == "model":
            return None
        removed = set(notes.get("removed_layers") or [])
        origin = [o for i, o in enumerate(origin) if i not in removed]
    return origin


def original_name(name: str, origin: list[int]) -> str | None:
    match = LAYER_INDEX.match(name)
    if not match:
        return name
    index = int(match["index"])
    if index >= len(origin):
        return None
    return f"{match['prefix']}{origin[index]}{match['rest']}"


@torch.no_grad()
def compare(
    compressed: torch.nn.Module, captured: Capture, origin: list[int]
) -> list[dict[str, Any]]:
    """One row per captured (original) layer: its relative output error, or why there is none."""
    device = next(compressed.parameters()).device
    by_original: dict[str, tuple[str, torch.nn.Module]] = {}
    names = set(captured.names())
    for name, module in compressed.named_modules():
        # `next`, not `list`: an offloaded module reads each parameter it yields from disk.
        if name.endswith("lm_head") or next(module.parameters(recurse=True), None) is None:
            continue
        source = original_name(name, origin)
        if source in names:
            by_original[source] = (name, module)
    rows = []
    for source in captured.names():
        x, reference = captured.get(source)
        row: dict[str, Any] = {"layer": source}
        if source not in by_original:
            rows.append({**row, "status": "removed"})
            continue
        name, module = by_original[source]
        dtype = next(module.parameters()).dtype
        if not dtype.is_floating_point:  # packed integer weights: the module dequantizes itself
            dtype = torch.float32
        try:
            y = module(x.to(device=device, dtype=dtype)).float().cpu()
        except RuntimeError:
            rows.append({**row, "compressed_layer": name, "status": "reshaped"})
            continue
        if y.shape != reference.shape:
            rows.append({**row, "compressed_layer": name, "status": "reshaped"})
            continue
        error = float(
            torch.linalg.norm(y - reference) / torch.linalg.norm(reference).clamp_min(1e-12)
        )
        rows.append({**row, "compressed_layer": name, "status": "ok", "relative_error": error})
    return rows


def summarize(rows: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    measured = [r for r in rows if r["status"] == "ok"]
    ranked = sorted(measured, key=lambda r: r["relative_error"], reverse=True)
    errors = [r["relative_error"] for r in measured]
    return {
        "tokens": tokens,
        "method": "relative Frobenius error of each linear layer's output on the original's "
        "input activations (calibration text)",
        "layers": rows,
        "most_damaged": [
            {"layer": r["layer"], "relative_error": r["relative_error"]}
            for r in ranked[:MOST_DAMAGED]
        ],
        "mean_relative_error": sum(errors) / len(errors) if errors else None,
        "counts": {
            status: sum(1 for r in rows if r["status"] == status)
            for status in ("ok", "removed", "reshaped")
        },
    }


def measure(compressed: torch.nn.Module, captured: Capture, origin: list[int]) -> dict[str, Any]:
    return summarize(compare(compressed, captured, origin), captured.tokens)
