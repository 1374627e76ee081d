"""Distillation on tiny models, through the worker's own stage code: each loss lowers its
training loss and the student's KL to the teacher on held-out text; a run interrupted and
resumed from its checkpoint ends with the uninterrupted run's weights; earlier zeros survive
training; LoRA trains adapters only; the losses are the divergences they are named after."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from app.config import Settings
from app.recipes import DistillParams, MagnitudeParams
from app.storage import LocalStore
from squash import load_pretrained
from tests.support.tiny_model import teacher_text
from workers.evaluation.perplexity import perplexity
from workers.methods.base import StageInput
from workers.methods.distillation.checkpoint import WEIGHTS, CheckpointStore
from workers.methods.distillation.data import batch_indices, pack
from workers.methods.distillation.losses import divergence, heldout_figures, layer_map
from workers.methods.distillation.models import build_student, load_teacher
from workers.methods.distillation.schedule import lr_factor
from workers.methods.distillation.trainer import StepReport, TrainingRun, train
from workers.methods.recipe import run_stages
from workers.models.datasets import builtin_text, split_tokens

DERIVED = {"kind": "derived", "drop_layers": 1, "mlp_channels": 0.5}
FAST = {"seq_length": 64, "batch_size": 8, "learning_rate": 2e-3, "eval_tokens": 4096}


@pytest.fixture(scope="module")
def text(tiny_teacher_dir: Path) -> dict[str, Any]:
    return teacher_text(tiny_teacher_dir, 4096)


def distill(teacher_dir: Path, text: dict[str, Any], stages: list[tuple[str, Any]]) -> dict:
    model = load_pretrained(teacher_dir).eval()
    outcome = run_stages(
        model,
        text["tokenizer"],
        stages,
        text["calibration"],
        source_path=teacher_dir,
        eval_ids=text["eval"],
        eval_context_length=128,
    )
    return {"model": outcome.model, "notes": outcome.stage_notes[-1]}


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "gkd"])
def test_each_loss_lowers_training_loss_and_heldout_kl(
    loss: str, tiny_teacher_dir: Path, text: dict[str, Any]
) -> None:
    params = DistillParams(
        student=DERIVED,
        loss=loss,
        max_steps=30,
        prompt_tokens=16,
        **FAST,  # type: ignore[arg-type]
    )
    notes = distill(tiny_teacher_dir, text, [("distill", params)])["notes"]
    curve = notes["loss_curve"]
    assert notes["steps"] == 30 and len(curve) == 30
    assert sum(curve[-5:]) / 5 < 0.8 * sum(curve[:5]) / 5, curve
    assert notes["kl_to_teacher_after"] < 0.8 * notes["kl_to_teacher_before"], notes
    assert notes["student_perplexity_after"] < notes["student_perplexity_before"], notes
    assert notes["teacher_perplexity"] < notes["student_perplexity_before"]
    assert 0 < notes["gap_recovered"] <= 1.2


def test_lm_and_hidden_state_losses_train_too(tiny_teacher_dir: Path, text: dict[str, Any]) -> None:
    params = DistillParams(
        student=DERIVED,  # type: ignore[arg-type]
        max_steps=20,
        lm_loss_weight=0.3,
        hidden_loss_weight=1.0,
        **FAST,
    )
    notes = distill(tiny_teacher_dir, text, [("distill", params)])["notes"]
    assert notes["kl_to_teacher_after"] < notes["kl_to_teacher_before"]
    # One student layer maps onto the teacher's last of two.
    assert layer_map(1, 2) == [(1, 2)] and layer_map(2, 4) == [(1, 2), (2, 4)]


def test_divergences_match_their_definitions() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False
    log_s, log_t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    forward = (log_t.exp() * (log_t - log_s)).sum(-1)[mask].mean()
    reverse = (log_s.exp() * (log_s - log_t)).sum(-1)[mask].mean()
    assert torch.allclose(divergence(student, teacher, mask, beta=0.0, temperature=1.0), forward)
    assert torch.allclose(divergence(student, teacher, mask, beta=1.0, temperature=1.0), reverse)
    # Temperature T: KL of the softened distributions, times T^2.
    soft_s, soft_t = F.log_softmax(student / 2, -1), F.log_softmax(teacher / 2, -1)
    soft = (soft_t.exp() * (soft_t - soft_s)).sum(-1)[mask].mean() * 4
    assert torch.allclose(divergence(student, teacher, mask, beta=0.0, temperature=2.0), soft)
    # The JSD lies between 0 and log 2 per token, and is 0 for identical distributions.
    jsd = divergence(student, teacher, mask, beta=0.5, temperature=1.0)
    assert 0 < float(jsd) < float(torch.log(torch.tensor(2.0)))
    assert float(divergence(teacher, teacher, mask, beta=0.5, temperature=1.0)) < 1e-6


def test_batch_order_depends_only_on_seed_and_position() -> None:
    first = [batch_indices(p, sequences=10, batch_size=4, seed=3) for p in range(5)]
    again = [batch_indices(p, sequences=10, batch_size=4, seed=3) for p in (4, 2, 0, 1, 3)]
    assert torch.equal(first[4], again[0]) and torch.equal(first[0], again[2])
    # One epoch (2 batches of 4 out of 10) never repeats a row.
    assert len(set(torch.cat(first[:2]).tolist())) == 8
    assert not torch.equal(batch_indices(0, sequences=10, batch_size=4, seed=4), first[0])
    assert pack(list(range(10)), 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


class Crash(Exception):
    """Stands in for the worker dying: nothing runs after it (no checkpoint on the way out)."""


def _run(
    teacher_dir: Path,
    text: dict[str, Any],
    params: DistillParams,
    checkpoints: CheckpointStore | None,
    crash_at: int | None = None,
    warnings: list[str] | None = None,
    reports: list[StepReport] | None = None,
) -> tuple[torch.nn.Module, Any]:
    warnings = [] if warnings is None else warnings
    stage = StageInput(
        load_pretrained(teacher_dir),
        text["tokenizer"],
        text["calibration"],
        source_path=teacher_dir,
    )
    torch.manual_seed(0)
    teacher = load_teacher(stage, params, torch.device("cpu"), torch.float32)
    student, _ = build_student(stage, params, teacher, torch.device("cpu"))
    # A derived student is cut from the frozen teacher, and still trains every weight.
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    pool, _ = split_tokens(text["tokenizer"](builtin_text("pydoc-topics"))["input_ids"])
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if crash_at is not None and calls["n"] > crash_at:
            raise Crash

    outcome = train(
        TrainingRun(
            student=student,
            teacher=teacher,
            params=params,
            sequences=pack(pool, params.seq_length),
            seed=7,
            checkpoints=checkpoints,
            check=check,
            on_warning=warnings.append,
            on_step=reports.append if reports is not None else None,
            eos_token_id=0,
        )
    )
    return student, outcome


@pytest.mark.parametrize("loss", ["forward_kl", "gkd"])
def test_resumed_run_ends_with_the_uninterrupted_runs_weights(
    loss: str, tiny_teacher_dir: Path, text: dict[str, Any], tmp_path: Path
) -> None:
    params = DistillParams(
        student=DERIVED,  # type: ignore[arg-type]
        loss=loss,  # type: ignore[arg-type]
        lmbda=0.5,
        prompt_tokens=16,
        max_steps=6,
        grad_accum=2,
        checkpoint_every=2,
        lr_schedule="cosine",
        warmup_steps=1,
        **FAST,
    )
    reference, _ = _run(tiny_teacher_dir, text, params, None)

    settings = Settings()
    store = LocalStore(tmp_path / "objects", settings)

    def checkpoints() -> CheckpointStore:
        return CheckpointStore(
            store, "checkpoints/job", tmp_path / "scratch", generation=1, fingerprint="same"
        )

    # Dies in step 5's second micro-batch: the last checkpoint is step 4's.
    with pytest.raises(Crash):
        _run(tiny_teacher_dir, text, params, checkpoints(), crash_at=9)
    resumed, outcome = _run(tiny_teacher_dir, text, params, checkpoints())
    assert outcome.resumed_from_step == 4 and outcome.state.step == 6
    assert outcome.state.micro_batches == 12
    for (name, a), (_, b) in zip(
        reference.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name
    # A retry after training finished loads the final state and trains no more.
    again, finished = _run(tiny_teacher_dir, text, params, checkpoints())
    assert finished.stopped_by == "finished_before" and finished.state.step == 6
    assert all(
        torch.equal(a, b)
        for a, b in zip(resumed.state_dict().values(), again.state_dict().values(), strict=True)
    )


def local_checkpoints(tmp_path: Path, store: type[LocalStore] = LocalStore) -> CheckpointStore:
    return CheckpointStore(
        store(tmp_path / "objects", Settings()), "ck", tmp_path / "s", generation=1, fingerprint="f"
    )


def test_a_corrupted_checkpoint_is_not_trusted(
    tiny_teacher_dir: Path, text: dict[str, Any], tmp_path: Path
) -> None:
    params = DistillParams(student=DERIVED, max_steps=2, checkpoint_every=1, **FAST)  # type: ignore[arg-type]
    checkpoints = local_checkpoints(tmp_path)
    store = checkpoints.store
    _run(tiny_teacher_dir, text, params, checkpoints)
    weights = next((tmp_path / "objects" / "ck").glob(f"*/{WEIGHTS}"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    _, outcome = _run(tiny_teacher_dir, text, params, checkpoints)
    assert outcome.resumed_from_step is None and outcome.state.step == 2
    assert "sha256" in (outcome.resume_note or "")
    other = CheckpointStore(store, "ck", tmp_path / "s", generation=2, fingerprint="other")
    _, outcome = _run(tiny_teacher_dir, text, params, other)
    assert outcome.resumed_from_step is None and "another training setup" in outcome.resume_note


def test_distillation_keeps_the_zeros_of_an_earlier_sparsity_stage(
    tiny_teacher_dir: Path, text: dict[str, Any]
) -> None:
    stages = [
        ("magnitude", MagnitudeParams(sparsity=0.5)),
        ("distill", DistillParams(max_steps=5, **FAST)),
    ]
    result = distill(tiny_teacher_dir, text, stages)
    assert result["notes"]["mask_refilled_weights"] == 0
    assert result["notes"]["kl_to_teacher_after"] < result["notes"]["kl_to_teacher_before"]
    q_proj = result["model"].model.layers[0].self_attn.q_proj.weight
    assert abs(float((q_proj == 0).float().mean()) - 0.5) < 0.01


def test_lora_trains_adapters_only_and_merges(tiny_teacher_dir: Path, text: dict[str, Any]) -> None:
    params = DistillParams(
        student=DERIVED,  # type: ignore[arg-type]
        max_steps=15,
        lora={"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj", "re:mlp\\.down_proj$"]},  # type: ignore[arg-type]
        **{**FAST, "learning_rate": 5e-3},
    )
    result = distill(tiny_teacher_dir, text, [("distill", params)])
    model = result["model"]
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert result["notes"]["kl_to_teacher_after"] < result["notes"]["kl_to_teacher_before"]


class UnreachableStore(LocalStore):
    def put_file(self, key: str, path: Path) -> None:
        raise ConnectionRefusedError("object store unreachable")


def test_a_failed_checkpoint_costs_only_the_resume_point(
    tiny_teacher_dir: Path, text: dict[str, Any], tmp_path: Path
) -> None:
    params = DistillParams(student=DERIVED, max_steps=3, checkpoint_every=1, **FAST)  # type: ignore[arg-type]
    checkpoints = local_checkpoints(tmp_path, UnreachableStore)
    warnings: list[str] = []
    _, outcome = _run(tiny_teacher_dir, text, params, checkpoints, warnings=warnings)
    assert outcome.state.step == 3 and outcome.checkpoint_bytes == 0
    assert len(warnings) == 3 and "checkpoint at step 1 failed" in warnings[0]


def test_wall_clock_budget_stops_training_and_anneals_over_it(
    tiny_teacher_dir: Path, text: dict[str, Any]
) -> None:
    params = DistillParams(
        student=DERIVED,  # type: ignore[arg-type]
        max_steps=100_000,
        max_seconds=1.0,
        lr_schedule="cosine",
        **FAST,
    )
    reports: list[StepReport] = []
    _, outcome = _run(tiny_teacher_dir, text, params, None, reports=reports)
    assert outcome.stopped_by == "max_seconds"
    assert 1 <= outcome.state.step < 100_000 and outcome.state.train_seconds >= 1.0
    # Cosine over the time budget, not over the 100,000 steps that never come: each step's
    # rate follows the seconds used before it, and the last step runs well below the peak.
    rates = [r.learning_rate for r in reports]
    assert rates[0] == params.learning_rate and len(rates) >= 4
    assert all(a >= b for a, b in pairwise(rates))
    assert rates[-1] < 0.5 * params.learning_rate
    for before, report in pairwise(reports):
        expected = params.learning_rate * lr_factor(params, before.step, before.train_seconds)
        assert report.learning_rate == pytest.approx(expected)


def test_schedules_warm_up_and_decay_over_whichever_budget_binds_first() -> None:
    def factor(schedule: str, step: int, seconds: float, max_seconds: float | None) -> float:
        params = DistillParams(
            lr_schedule=schedule,  # type: ignore[arg-type]
            warmup_steps=10,
            max_steps=110,
            max_seconds=max_seconds,
        )
        return lr_factor(params, step, seconds)

    # Warm-up applies to every schedule (transformers' plain "constant" ignores it).
    assert factor("constant", 5, 0.0, None) == 0.5 and factor("constant", 60, 0.0, None) == 1.0
    assert factor("linear", 60, 0.0, None) == pytest.approx(0.5)
    assert factor("cosine", 60, 0.0, None) == pytest.approx(0.5)
    assert factor("cosine", 110, 0.0, None) == pytest.approx(0.0)
    # Half the time gone at step 20: time binds, so cosine is at half its peak.
    assert factor("cosine", 20, 50.0, 100.0) == pytest.approx(0.5)
    assert factor("linear", 20, 75.0, 100.0) == pytest.approx(0.25)
    assert factor("linear", 20, 150.0, 100.0) == 0.0
    # Steps bind when they run out first.
    assert factor("linear", 85, 10.0, 100.0) == pytest.approx(0.25)


def test_heldout_figures_agree_with_the_jobs_perplexity(
    tiny_model_dir: Path, tiny_teacher_dir: Path, text: dict[str, Any]
) -> None:
    student, teacher = load_pretrained(tiny_model_dir), load_pretrained(tiny_teacher_dir)
    ids = text["eval"][:1000]
    figures = heldout_figures(student, teacher, ids, 128)
    for model, value in (
        (student, figures.student_perplexity),
        (teacher, figures.teacher_perplexity),
    ):
        expected = perplexity(model, ids, context_length=128, stride=128).perplexity
        assert value == pytest.approx(expected, rel=1e-6)
    windows = [ids[i : i + 128] for i in range(0, len(ids), 128)]
    kl, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            w = torch.tensor(window)[None]
            mask = torch.ones(1, len(window) - 1, dtype=torch.bool)
            s_logits, t_logits = student(w).logits[:, :-1], teacher(w).logits[:, :-1]
            kl += float(divergence(s_logits, t_logits, mask, beta=0.0, temperature=1.0)) * (
                len(window) - 1
            )
            count += len(window) - 1
    assert figures.kl_to_teacher == pytest.approx(kl / count, rel=1e-5)


class FlakyReadStore(LocalStore):
    def get_bytes(self, key: str) -> bytes:
        raise ConnectionRefusedError("object store unreachable")


def test_an_unreadable_checkpoint_store_retries_the_job_instead_of_starting_over(
    tiny_teacher_dir: Path, text: dict[str, Any], tmp_path: Path
) -> None:
    from workers.errors import TransientFailure

    params = DistillParams(student=DERIVED, max_steps=2, **FAST)  # type: ignore[arg-type]
    checkpoints = local_checkpoints(tmp_path, FlakyReadStore)
    with pytest.raises(TransientFailure, match="cannot read the training checkpoint"):
        _run(tiny_teacher_dir, text, params, checkpoints)
