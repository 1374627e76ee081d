"""Quantization-aware distillation on the tiny teacher, through the worker's own stage and save
code: after a quantization stage the distill stage trains on that grid, so the student gets
closer to the teacher than the quantized model was, every saved weight is still an integer of
the grid (ternary stays in {-1, 0, 1}), the saved integers are the trained ones (the reloaded
logits equal the in-memory ones), learned scales move, and an earlier stage's zeros survive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.utils.quantization_config import CompressedTensorsConfig

from app.recipes import DistillParams, GptqParams, MagnitudeParams, RtnParams, TernaryParams
from squash import load_pretrained
from tests.support.tiny_model import teacher_text
from workers.methods.recipe import run_stages, save_artifact
from workers.methods.shared.layers import targeted_linears
from workers.methods.shared.quantization_aware import fake_quantized_weight, round_ste
from workers.methods.shared.storage_dtype import cast_for_storage

TRAIN = {"seq_length": 64, "batch_size": 8, "learning_rate": 2e-3, "eval_tokens": 2048}


@pytest.fixture(scope="module")
def text(tiny_teacher_dir: Path) -> dict[str, Any]:
    return teacher_text(tiny_teacher_dir, 2048)


def run(
    teacher: Path, text: dict[str, Any], stages: list[tuple[str, Any]], out: Path
) -> tuple[list[dict[str, Any]], torch.Tensor, torch.nn.Module]:
    """Run and save; returns the stage notes, the in-memory logits on a probe (before saving:
    saving packs the weights in place) and the reloaded model."""
    model = load_pretrained(teacher).eval()
    outcome = run_stages(
        model,
        text["tokenizer"],
        stages,
        text["calibration"],
        source_path=teacher,
        eval_ids=text["eval"],
        eval_context_length=128,
    )
    probe = torch.tensor([text["eval"][:64]])
    cast_for_storage(outcome.model)  # what is saved: 16-bit floats, the weights on their grid
    model = outcome.model.float()
    # Buffers (rotary frequencies) are not saved: a load recomputes them from the config in
    # float32, while the storage cast rounded the in-memory ones to 16 bits.
    fresh = dict(load_pretrained(teacher).named_buffers())
    for name, buffer in model.named_buffers():
        if name in fresh:
            buffer.data = fresh[name].clone()
    with torch.no_grad():
        logits = model(probe).logits
    save_artifact(outcome, text["tokenizer"], out)
    loaded = load_pretrained(
        out, quantization_config=CompressedTensorsConfig(run_compressed=False)
    ).eval()
    return outcome.stage_notes, logits, loaded


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in targeted_linears(model, ["Linear"], ["lm_head"])}


def levels_per_group(weight: torch.Tensor, group: int) -> int:
    return max(len(torch.unique(g)) for g in weight.reshape(-1, group))


@pytest.mark.parametrize(
    ("quantize", "levels"),
    [
        (("gptq", GptqParams(bits=2, group_size=32)), 4),
        (("ternary", TernaryParams(group_size=32)), 3),
    ],
)
def test_distillation_after_quantization_trains_on_the_grid(
    tiny_teacher_dir: Path,
    text: dict[str, Any],
    tmp_path: Path,
    quantize: tuple[str, Any],
    levels: int,
) -> None:
    stages = [quantize, ("distill", DistillParams(max_steps=12, **TRAIN))]
    notes, in_memory, loaded = run(tiny_teacher_dir, text, stages, tmp_path)
    trained = notes[-1]
    assert trained["quantization_aware"] is True and trained["quantized_layers"] == 14
    assert trained["kl_to_teacher_after"] < 0.8 * trained["kl_to_teacher_before"], trained
    assert len(trained["loss_curve"]) == 12

    for name, weight in weights(loaded).items():
        assert levels_per_group(weight, 32) <= levels, name
    if quantize[0] == "ternary":
        # Every group's values are -s, 0 or s: the trained weights stayed ternary.
        for name, weight in weights(loaded).items():
            groups = weight.reshape(-1, 32)
            scale = groups.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
            assert set(torch.unique((groups / scale).round()).tolist()) <= {-1.0, 0.0, 1.0}, name
    with torch.no_grad():
        reloaded = loaded(torch.tensor([text["eval"][:64]])).logits
    assert torch.allclose(reloaded, in_memory, rtol=0, atol=1e-4), (
        (reloaded - in_memory).abs().max()
    )


def test_learned_scales_move_and_an_earlier_mask_survives(
    tiny_teacher_dir: Path, text: dict[str, Any], tmp_path: Path
) -> None:
    rtn = RtnParams(bits=3, group_size=32)
    quantized_only = load_pretrained(tiny_teacher_dir).eval()
    run_stages(quantized_only, None, [("magnitude", MagnitudeParams()), ("rtn", rtn)], [])
    before = {
        n: m.weight_scale.detach().clone()
        for n, m in targeted_linears(quantized_only, ["Linear"], ["lm_head"])
    }
    stages = [
        ("magnitude", MagnitudeParams()),
        ("rtn", rtn),
        ("distill", DistillParams(max_steps=8, learn_scales=True, **TRAIN)),
    ]
    notes, _, loaded = run(tiny_teacher_dir, text, stages, tmp_path)
    assert notes[-1]["learned_scales"] == 14
    assert notes[-1]["mask_refilled_weights"] == 0
    moved = 0
    for name, module in targeted_linears(loaded, ["Linear"], ["lm_head"]):
        sparsity = float((module.weight == 0).float().mean())
        assert sparsity >= 0.5, (name, sparsity)
        moved += int(not torch.equal(module.weight_scale.float(), before[name].float()))
    assert moved == 14


def test_the_straight_through_estimator_passes_gradients_to_weight_and_scale() -> None:
    x = torch.tensor([0.4, 1.6], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones(2))

    class Args:
        group_size, symmetric, num_bits = None, True, 4

    class Scheme:
        weights = Args()

    module = torch.nn.Linear(4, 2, bias=False)
    module.weight_scale = torch.nn.Parameter(torch.full((2, 1), 0.1))
    module.quantization_scheme = Scheme()  # type: ignore[assignment]
    fake_quantized_weight(module).sum().backward()
    assert module.weight.grad is not None and module.weight_scale.grad is not None
    assert bool((module.weight.grad != 0).any()) and bool((module.weight_scale.grad != 0).any())
