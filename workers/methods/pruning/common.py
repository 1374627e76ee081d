"""What the sparsity stages share: which layers they prune, checks before heavy work, the
measured sparsity they report, and keeping a mask through later stages."""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from app.jobs.state import ErrorCode
from app.recipes import SparsityParams, parse_mask_structure
from workers.errors import JobFailure
from workers.methods.base import CompressionMethod
from workers.methods.shared.layers import decoder_layers, require_layers, targeted_linears


def pruned_linears(model: torch.nn.Module, params: SparsityParams) -> list[str]:
    """Targeted Linears inside the decoder blocks (embeddings and lm_head are never pruned)."""
    layers = decoder_layers(model)
    prefix = {f"model.layers.{i}." for i in range(len(layers))}
    return [
        name
        for name, _ in targeted_linears(model, list(params.targets), list(params.ignore))
        if any(name.startswith(p) for p in prefix)
    ]


def layer_index(name: str) -> int:
    return int(name.split("model.layers.", 1)[1].split(".", 1)[0])


def sparsity_of_layer(params: SparsityParams, name: str) -> float:
    if params.layer_sparsity is not None:
        return params.layer_sparsity[layer_index(name)]
    return params.target_sparsity


def preflight_sparsity(method: str, model: torch.nn.Module, params: SparsityParams) -> list[str]:
    """The submission checks again against the real model (sources whose shape the API did not
    know), in seconds, naming the layers."""
    require_layers(method, model, params)
    names = pruned_linears(model, params)
    if not names:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"{method}: targets {params.targets} match no Linear layer inside the decoder layers",
        )
    modules = dict(model.named_modules())
    pattern = parse_mask_structure(params.mask_structure)
    if pattern is not None:
        bad = [n for n in names if modules[n].in_features % pattern[1]]
        if bad:
            sizes = sorted({modules[n].in_features for n in names})
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                f"{method}: M={pattern[1]} of mask_structure {params.mask_structure} does not "
                f"divide the input size of {len(bad)} layers (e.g. {bad[:3]}); input sizes "
                f"{sizes}",
            )
    count = len(decoder_layers(model))
    if params.layer_sparsity is not None and len(params.layer_sparsity) != count:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"{method}: layer_sparsity needs one value per decoder layer: {count}, "
            f"got {len(params.layer_sparsity)}",
        )
    warnings = []
    if pattern is not None and pattern != (2, 4):
        warnings.append(
            f"{method}: only 2:4 runs on sparse tensor cores; {params.mask_structure} "
            "saves size but not time"
        )
    return warnings


def nm_holds(weight: torch.Tensor, n: int, m: int) -> bool:
    """Every group of m consecutive weights of a row has at least n zeros."""
    groups = weight.reshape(weight.shape[0], -1, m)
    return bool(((groups == 0).sum(-1) >= n).all())


@torch.no_grad()
def sparsity_notes(model: torch.nn.Module, names: list[str], params: SparsityParams) -> dict:
    """Measured from the weights: zeros per pruned layer and overall, and whether N:M holds."""
    modules = dict(model.named_modules())
    zeros = total = 0
    worst = 1.0
    pattern = parse_mask_structure(params.mask_structure)
    nm_ok = True
    for name in names:
        weight = modules[name].weight
        layer_zeros = int((weight == 0).sum())
        zeros += layer_zeros
        total += weight.numel()
        worst = min(worst, layer_zeros / weight.numel())
        if pattern is not None:
            nm_ok = nm_ok and nm_holds(weight, *pattern)
    notes: dict[str, Any] = {
        "pruned_layers": len(names),
        "mask_structure": params.mask_structure,
        "target_sparsity": round(params.target_sparsity, 6),
        "measured_sparsity": round(zeros / total, 6),
        "least_sparse_layer": round(worst, 6),
        "zeroed_weights": zeros,
        "storage": params.storage,
    }
    if pattern is not None:
        notes["n_m_holds"] = nm_ok
    return notes


S = TypeVar("S", bound=SparsityParams)


class SparsityMethod(CompressionMethod[S]):
    """Unstructured / N:M pruning methods: the same checks before heavy work."""

    def preflight(self, model: torch.nn.Module, params: S) -> list[str]:
        return preflight_sparsity(self.name, model, params)
