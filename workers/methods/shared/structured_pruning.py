"""The structured-pruning core: measure head / channel / decoder-layer importance on calibration
text and remove the least important (see `workers/methods/pruning/structured.py` for the method
and how importance is defined). Shared because a distill stage derives its student with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.recipes import StructuredParams
from workers.errors import JobFailure
from workers.methods.shared.layers import blocks, decoder_layers
from workers.models.hf import hf_config

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Importance:
    layer: list[float] = field(default_factory=list)  # block influence per decoder layer
    heads: list[torch.Tensor] = field(default_factory=list)  # per layer: [query heads]
    channels: list[torch.Tensor] = field(default_factory=list)  # per layer: [intermediate]


def _shape(model: torch.nn.Module) -> tuple[int, int, int]:
    config = hf_config(model)
    heads, kv = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def check_architecture(model: torch.nn.Module, params: StructuredParams) -> None:
    layers = decoder_layers(model)
    first = layers[0]
    attention, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    if not all(hasattr(attention, n) for n in ATTENTION) or not all(hasattr(mlp, n) for n in MLP):
        raise JobFailure(
            ErrorCode.UNSUPPORTED,
            "structured: needs Llama-style blocks (self_attn.q/k/v/o_proj, "
            f"mlp.gate/up/down_proj); {type(first).__name__} has another layout",
        )
    heads, kv, _ = _shape(model)
    group = heads // kv
    problems = []
    if params.query_heads_per_group >= group:
        problems.append(f"query_heads_per_group must be below {group} (query heads per group)")
    if params.kv_groups >= kv:
        problems.append(f"kv_groups must be below the model's {kv} key/value groups")
    if params.layers >= len(layers):
        problems.append(f"layers must be below the model's {len(layers)} decoder layers")
    if problems:
        raise JobFailure(ErrorCode.INVALID_RECIPE, "structured: " + "; ".join(problems))


@torch.no_grad()
def measure_importance(model: torch.nn.Module, samples: list[list[int]]) -> Importance:
    layers = blocks(model)
    heads, _, head_dim = _shape(model)
    count = len(layers)
    influence = [0.0] * count
    tokens_seen = [0] * count
    head_scores = [torch.zeros(heads) for _ in range(count)]
    channel_sq = [torch.zeros(layers[i].mlp.down_proj.in_features) for i in range(count)]
    handles = []

    def block_hook(index: int):
        def hook(_m: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            inputs = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            cosine = torch.nn.functional.cosine_similarity(
                inputs.float().flatten(0, -2), out.float().flatten(0, -2), dim=-1
            )
            influence[index] += float((1 - cosine).sum())
            tokens_seen[index] += cosine.numel()

        return hook

    def o_proj_hook(index: int, o_proj: torch.nn.Linear):
        def hook(_m: torch.nn.Module, args: tuple) -> None:
            x = args[0].float().flatten(0, -2)  # [tokens, heads * head_dim]
            weight = o_proj.weight.float()
            for head in range(heads):
                cols = slice(head * head_dim, (head + 1) * head_dim)
                head_scores[index][head] += float((x[:, cols] @ weight[:, cols].T).square().sum())

        return hook

    def down_proj_hook(index: int):
        def hook(_m: torch.nn.Module, args: tuple) -> None:
            channel_sq[index] += args[0].float().flatten(0, -2).square().sum(0).cpu()

        return hook

    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(block_hook(index), with_kwargs=True))
        o_proj = layer.self_attn.o_proj
        handles.append(o_proj.register_forward_pre_hook(o_proj_hook(index, o_proj)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(down_proj_hook(index)))
    device = next(model.parameters()).device
    try:
        for sample in samples:
            model(torch.tensor([sample], device=device))
    finally:
        for handle in handles:
            handle.remove()
    result = Importance()
    for index, layer in enumerate(layers):
        result.layer.append(influence[index] / max(tokens_seen[index], 1))
        result.heads.append(head_scores[index])
        column_norms = layer.mlp.down_proj.weight.float().norm(dim=0).cpu()
        result.channels.append(channel_sq[index].sqrt() * column_norms)
    return result


def _rows(linear: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    out = torch.nn.Linear(
        linear.in_features,
        len(keep),
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    out.weight.data = linear.weight.data[keep].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data[keep].clone()
    return out


def _columns(linear: torch.nn.Linear, keep: torch.Tensor) -> torch.nn.Linear:
    out = torch.nn.Linear(
        len(keep),
        linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    out.weight.data = linear.weight.data[:, keep].clone()
    if linear.bias is not None:
        out.bias.data = linear.bias.data.clone()
    return out


def _head_rows(heads: list[int], head_dim: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(
        [h * head_dim + d for h in heads for d in range(head_dim)], device=device, dtype=torch.long
    )


def kept_heads(
    scores: torch.Tensor, kv: int, params: StructuredParams
) -> tuple[list[int], list[int]]:
    """(kept key/value groups, kept query heads ordered by group): grouped-query attention maps
    query head i to key/value head i // (query heads per group), so the kept query heads stay
    grouped under their own key/value head, in order."""
    group = len(scores) // kv
    by_group = scores.reshape(kv, group)
    groups = sorted(by_group.sum(1).argsort(descending=True)[: kv - params.kv_groups].tolist())
    keep_per_group = group - params.query_heads_per_group
    queries: list[int] = []
    for g in groups:
        best = sorted(by_group[g].argsort(descending=True)[:keep_per_group].tolist())
        queries.extend(g * group + q for q in best)
    return groups, queries


@torch.no_grad()
def prune(
    model: torch.nn.Module, importance: Importance, params: StructuredParams
) -> dict[str, Any]:
    layers = blocks(model)
    heads, kv, head_dim = _shape(model)
    order = sorted(range(len(layers)), key=lambda i: importance.layer[i])
    removed_layers = sorted(order[: params.layers])
    kept_layers = [i for i in range(len(layers)) if i not in removed_layers]
    new_heads, new_kv = heads, kv
    intermediate = layers[0].mlp.down_proj.in_features
    new_channels = params.kept_channels(intermediate) if params.mlp_channels else intermediate
    for index in kept_layers:
        layer = layers[index]
        attention, mlp = layer.self_attn, layer.mlp
        device = attention.q_proj.weight.device
        if params.query_heads_per_group or params.kv_groups:
            groups, queries = kept_heads(importance.heads[index], kv, params)
            q_rows = _head_rows(queries, head_dim, device)
            kv_rows = _head_rows(groups, head_dim, device)
            attention.q_proj = _rows(attention.q_proj, q_rows)
            attention.k_proj = _rows(attention.k_proj, kv_rows)
            attention.v_proj = _rows(attention.v_proj, kv_rows)
            attention.o_proj = _columns(attention.o_proj, q_rows)
            new_heads, new_kv = len(queries), len(groups)
            attention.num_key_value_groups = new_heads // new_kv
        if new_channels != intermediate:
            keep = importance.channels[index].argsort(descending=True)[:new_channels]
            keep = keep.sort().values.to(device)
            mlp.gate_proj = _rows(mlp.gate_proj, keep)
            mlp.up_proj = _rows(mlp.up_proj, keep)
            mlp.down_proj = _columns(mlp.down_proj, keep)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = new_channels
    survivors = [layers[i] for i in kept_layers]
    for new_index, layer in enumerate(survivors):
        layer.self_attn.layer_idx = new_index
    model.get_submodule("model").layers = torch.nn.ModuleList(survivors)
    config = hf_config(model)
    layer_types = getattr(config, "layer_types", None)
    config.num_hidden_layers = len(kept_layers)
    if layer_types:
        config.layer_types = [layer_types[i] for i in kept_layers]
    config.head_dim = head_dim  # no longer hidden_size // num_attention_heads
    config.num_attention_heads, config.num_key_value_heads = new_heads, new_kv
    config.intermediate_size = new_channels
    return {
        "removed_layers": removed_layers,
        "layer_influence": [round(v, 6) for v in importance.layer],
        "num_hidden_layers": [len(layers), len(kept_layers)],
        "num_attention_heads": [heads, new_heads],
        "num_key_value_heads": [kv, new_kv],
        "intermediate_size": [intermediate, new_channels],
    }
