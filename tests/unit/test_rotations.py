"""The `rotate` stage (fused Hadamard rotations before quantization) on a tiny random Llama:
alone it leaves the model's outputs unchanged; before GPTQ the artifact loads in plain
transformers with the in-memory logits and integers on the grid; bad settings and orders are
refused at submission, and models it cannot rotate in the worker's preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from app.recipes import (
    BUILTIN_SHAPES,
    GptqParams,
    MethodParams,
    RotateParams,
    StageIn,
    validate_recipe,
)
from app.recipes.rotation import STORED_HADAMARD_SIZES
from tests.support.recipes import assert_refused
from tests.unit.test_quantization_methods import calibration_samples, compress, dense_weights
from workers.errors import JobFailure
from workers.methods.catalog import get_method
from workers.methods.recipe import run_stages


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randint(0, 500, (2, 48), generator=torch.Generator().manual_seed(0))


def test_rotation_alone_keeps_the_function_and_moves_every_weight(
    tiny_model_dir: Path, probe: torch.Tensor
) -> None:
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = original(probe).logits
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    outcome = run_stages(model, None, [("rotate", RotateParams())], [])
    with torch.no_grad():
        actual = outcome.model(probe).logits
    # Same function up to float rounding (the library's embedding centering would break this).
    assert torch.allclose(actual, expected, rtol=0, atol=1e-4), (actual - expected).abs().max()
    rotated = outcome.model
    assert not torch.allclose(
        rotated.model.layers[0].self_attn.q_proj.weight,
        original.model.layers[0].self_attn.q_proj.weight,
    )
    # R1 turns the tied embeddings and LM head into the same matrix: still one table.
    assert rotated.lm_head.weight.data_ptr() == rotated.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(rotated.lm_head.weight, original.lm_head.weight)
    assert torch.equal(
        rotated.model.layers[1].input_layernorm.weight,
        torch.ones_like(rotated.model.layers[1].input_layernorm.weight),
    )  # the norm's scale now lives in q/k/v
    notes = outcome.stage_notes[0]
    assert notes["rotations"] == ["R1", "R2"] and notes["lm_head"] == "tied"
    assert (notes["r1_size"], notes["r2_size"]) == (64, 16)


def test_rotated_gptq_artifact_loads_in_plain_transformers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    samples = calibration_samples(tiny_model_dir)
    probe = torch.tensor([samples[0][:48]])
    stages: list[tuple[str, MethodParams]] = [
        ("rotate", RotateParams(block_size=32)),
        ("gptq", GptqParams(bits=4, group_size=32)),
    ]
    in_memory, _ = compress(tiny_model_dir, "", GptqParams(), samples, tmp_path, probe, stages)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert not config["quantization_config"].get("transform_config")  # fused: none at run time
    for name, weight in dense_weights(tmp_path).items():
        assert max(len(torch.unique(g)) for g in weight.reshape(-1, 32)) <= 16, name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        actual = reloaded(probe).logits
    assert in_memory is not None
    assert torch.allclose(actual, in_memory, rtol=0, atol=1e-4), (actual - in_memory).abs().max()


def test_recipes_with_rotations_are_checked_at_submission() -> None:
    shape = BUILTIN_SHAPES["smollm2-135m-instruct"]  # hidden 576 = 36 x 16, head size 64
    rotate = StageIn(method="rotate")
    gptq = StageIn(method="gptq", params={"group_size": 64})
    assert [s.method for s in validate_recipe([rotate, gptq], shape=shape)] == ["rotate", "gptq"]
    # Hidden-state matching after a rotation: the job's model teaches, rotated the same way.
    matched = StageIn(method="distill", params={"hidden_loss_weight": 1.0})
    assert len(validate_recipe([rotate, gptq, matched], shape=shape)) == 3
    other_teacher = {
        "hidden_loss_weight": 1.0,
        "teacher": {"kind": "builtin", "name": "smollm2-135m-instruct"},
    }

    cases = [
        ([rotate], "recipe[0].method", "add a quantization stage"),
        ([gptq, rotate], "recipe[1].method", "a rotation comes first"),
        (
            [StageIn(method="rotate", params={"transform_type": "hadamard"}), gptq],
            "recipe[0].params.transform_type",
            "block sizes that fit: [8, 16, 32, 64]",
        ),
        (
            [StageIn(method="rotate", params={"block_size": 100}), gptq],
            "recipe[0].params.block_size",
            "must divide the hidden size 576",
        ),
        (
            [StageIn(method="rotate", params={"rotations": ["R1", "R1"]}), gptq],
            "recipe[0].params.rotations",
            "each rotation at most once",
        ),
        (
            [rotate, gptq, StageIn(method="distill", params=other_teacher)],
            "recipe[2].params.hidden_loss_weight",
            "rotated hidden states with the teacher's unrotated ones",
        ),
    ]
    assert_refused(cases, shape)


def test_preflight_refuses_models_it_cannot_rotate(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    method = get_method("rotate")
    assert method.preflight(model, RotateParams()) == []
    with pytest.raises(JobFailure, match="block_size: must divide the hidden size 64"):
        method.preflight(model, RotateParams(block_size=48))
    layer = model.model.layers[0].self_attn
    layer.o_proj = torch.nn.Linear(64, 64, bias=True)
    with pytest.raises(JobFailure, match=r"\['o_proj'\] have a bias"):
        method.preflight(model, RotateParams())


def test_stored_hadamard_sizes_match_the_library() -> None:
    """The API checks sizes without torch, against the sizes compressed-tensors ships."""
    from compressed_tensors.transform.utils import hadamard

    path = Path(hadamard.__file__).with_name("hadamards.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert {int(k) for k in handle.keys()} == STORED_HADAMARD_SIZES  # noqa: SIM118


def test_a_distill_teacher_is_rotated_like_its_student(
    tiny_model_dir: Path, probe: torch.Tensor
) -> None:
    """After a rotate stage, the distill stage's teacher (the job's model) goes through the
    same rotation: its hidden states are the rotated student's, in the rotated basis, which is
    what hidden-state matching compares."""
    from workers.methods.recipe import teacher_alignment

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()

    stages: list[tuple[str, MethodParams]] = [("rotate", RotateParams())]
    student = run_stages(load(), None, stages, []).model
    align = teacher_alignment(stages, None, None)
    assert align is not None and teacher_alignment([], None, None) is None
    teacher = align(load())
    with torch.no_grad():
        ours = student(probe, output_hidden_states=True).hidden_states
        theirs = teacher(probe, output_hidden_states=True).hidden_states
        unrotated = load()(probe, output_hidden_states=True).hidden_states
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.allclose(a, b, rtol=0, atol=1e-4), (index, (a - b).abs().max())
    spread = unrotated[1].abs().max()
    assert (ours[1] - unrotated[1]).abs().max() > 0.1 * spread  # another basis
