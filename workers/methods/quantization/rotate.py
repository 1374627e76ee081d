"""Hadamard rotations fused into the weights (SpinQuant's R1 and R2) before a quantization stage.

Example recipe: `[{"method": "rotate"}, {"method": "gptq", "params": {"bits": 3}}]`

llm-compressor's SpinQuantModifier does the work: it folds each RMSNorm's scale into the Linear
layers after it and fuses each rotation and its inverse into the weights on either side (in
float64). It unties the LM head from the embeddings first, but R1 turns both into the same
`E @ R1` (up to float rounding), so a tied pair is tied again afterwards: one table in memory
and in the checkpoint, and a later distill stage trains them as one, as the original did.

With only R1 and R2 nothing is left to compute at run time, so the artifact is a plain
checkpoint of the same architecture: it loads in transformers and serves in vLLM with the usual
kernels. Two changes to the library's steps:

- it also centers the embeddings (subtracts each row's mean), a step QuaRot needs for
  LayerNorm models; under RMSNorm that changes the model's outputs, so it is skipped here and the
  rotated model computes what the original did (the tests check its logits);
- its transform config would be saved in `config.json`, where a runtime that reads it could
  apply the already-fused rotations a second time; it is dropped (the notes say what ran).
"""

from __future__ import annotations

from typing import Any

import torch

from app.jobs.state import ErrorCode
from app.planning.model_facts import facts_from_config
from app.recipes import RotateParams
from workers.errors import JobFailure
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.models.hf import pretrained

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Rotated on their output side, where a bias would need rotating as well.
OUTPUT_ROTATED = ("v_proj", "o_proj", "down_proj")


def _config_sizes(model: torch.nn.Module) -> tuple[int, int]:
    facts = facts_from_config(pretrained(model).config.to_dict())
    return facts.hidden_size, facts.head_dim


def _architecture_errors(model: torch.nn.Module) -> list[str]:
    names = [name for name, _ in model.named_modules()]
    missing = [p for p in PROJECTIONS if not any(n.endswith(f".{p}") for n in names)]
    errors = [f"no {', '.join(missing)} layers"] if missing else []
    biased = sorted(
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.endswith(OUTPUT_ROTATED)
        and module.bias is not None
    )
    if biased:
        errors.append(f"{sorted(set(biased))} have a bias")
    norms = {type(m).__name__ for n, m in model.named_modules() if n.endswith("layernorm")}
    if any("RMSNorm" not in norm for norm in norms):
        errors.append(f"its norms are {sorted(norms)}, not RMSNorm")
    return errors


def _modifier(params: RotateParams) -> Any:
    from llmcompressor.modifiers.transform import SpinQuantModifier

    class FusedRotations(SpinQuantModifier):
        def _center_embeddings(self, model: Any) -> None:
            """Not under RMSNorm: see the module docstring."""

    return FusedRotations(
        rotations=list(params.rotations),
        transform_type=params.transform_type,
        transform_block_size=params.block_size,
    )


@torch.no_grad()
def _retie(model: Any) -> bool:
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight.shape != embeddings.weight.shape:
        return False
    # The two products differ by float32 rounding only (computed along different paths).
    tolerance = 1e-5 * float(embeddings.weight.abs().max())
    if float((head.weight - embeddings.weight).abs().max()) > tolerance:
        return False
    from compressed_tensors.offload import OffloadCache

    # oneshot leaves compressed-tensors' offload wrappers on the modules, where a plain
    # assignment copies; by reference, as llm-compressor's own re-tying at save does.
    with OffloadCache.disable_onloading():
        head.weight = embeddings.weight
    model.config.tie_word_embeddings = True
    return True


class Rotate(CompressionMethod[RotateParams]):
    name = "rotate"
    params_type = RotateParams

    def preflight(self, model: torch.nn.Module, params: RotateParams) -> list[str]:
        problems = _architecture_errors(model)
        if problems:
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                "rotate needs a Llama-style decoder (RMSNorm, q/k/v/o and gate/up/down "
                f"projections, no output-side bias); this model: {'; '.join(problems)}",
            )
        hidden, head_dim = _config_sizes(model)
        sizes = params.size_errors(hidden, head_dim)
        if sizes:
            raise JobFailure(
                ErrorCode.INVALID_RECIPE,
                "rotate: " + "; ".join(f"{name}: {why}" for name, why in sizes.items()),
            )
        return []

    def apply(self, stage: StageInput, params: RotateParams) -> StageResult:
        from compressed_tensors.base import TRANSFORM_CONFIG_NAME
        from llmcompressor import oneshot

        model = pretrained(stage.model)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        hidden, head_dim = _config_sizes(model)
        oneshot(model=model, recipe=_modifier(params))
        if hasattr(model, TRANSFORM_CONFIG_NAME):
            delattr(model, TRANSFORM_CONFIG_NAME)
        retied = tied and _retie(model)
        return StageResult(
            model=stage.model,
            notes={
                "rotations": list(params.rotations),
                "transform_type": params.transform_type,
                "r1_size": params.block_size or hidden if "R1" in params.rotations else None,
                "r2_size": head_dim if "R2" in params.rotations else None,
                "lm_head": "tied" if retied else ("untied" if tied else "separate"),
            },
        )
