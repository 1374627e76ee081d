"""The teacher and the student of a distill stage, and LoRA adapters when asked for."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch

from app.config import Settings, get_settings
from app.jobs.state import ErrorCode
from app.recipes import DerivedStudent, DistillParams, LoraSpec, ModelStudent, PreviousStudent
from workers.errors import JobFailure
from workers.formats.loader import load_pretrained, trust_remote_code
from workers.methods.base import StageInput
from workers.methods.shared.quantization_aware import quantized_linears, set_trainable
from workers.methods.shared.structured_pruning import check_architecture, measure_importance, prune
from workers.models.hf import hf_config
from workers.models.sources import resolve_model


def _settings(stage: StageInput) -> Settings:
    return stage.ctx.settings if stage.ctx else get_settings()


def _resolve(stage: StageInput, source: dict[str, Any] | None, role: str) -> Path:
    if source is None:
        if stage.source_path is None:
            raise JobFailure(ErrorCode.INVALID_RECIPE, f"no {role} model: name one")
        return stage.source_path
    scratch = (stage.scratch or Path(_settings(stage).work_dir)) / role
    return resolve_model(source, _settings(stage), scratch).path


def _load(path: Path, role: str, device: torch.device) -> torch.nn.Module:
    try:
        return load_pretrained(path).to(device)
    except JobFailure:
        raise
    except Exception as exc:
        raise JobFailure(ErrorCode.INVALID_MODEL, f"the {role} model does not load: {exc}") from exc


def load_teacher(
    stage: StageInput, params: DistillParams, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Frozen, in eval mode, in the compute dtype: it only runs forward passes. When the stage
    is the recipe's first (a derived or other student) and the teacher is the job's model, the
    model the stage received is that teacher, unchanged: no second load."""
    if params.teacher is None and not isinstance(params.student, PreviousStudent):
        teacher = stage.model.to(device, dtype).eval()
    else:
        source = params.teacher.model_dump() if params.teacher is not None else None
        teacher = _load(_resolve(stage, source, "teacher"), "teacher", device)
        if params.teacher is None and stage.align_teacher is not None:
            # An earlier rotate stage put the student's residual stream in another basis (the
            # logits are unchanged): the job's model goes through it too, so hidden states
            # compare.
            teacher = stage.align_teacher(teacher)
        teacher = teacher.to(dtype).eval()
    teacher.requires_grad_(False)
    return teacher


def build_student(
    stage: StageInput, params: DistillParams, teacher: torch.nn.Module, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model that trains, in float32 (the optimizer's master weights), every weight
    trainable (a derived student is a copy of the frozen teacher), and notes on it."""
    student, notes = _pick_student(stage, params, teacher, device)
    student = student.float()
    if quantized_linears(student):  # after a quantization stage: train on its grid
        notes.update(set_trainable(student, params.learn_scales))
        return student, notes
    return student.requires_grad_(True), notes


def _pick_student(
    stage: StageInput, params: DistillParams, teacher: torch.nn.Module, device: torch.device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    spec = params.student
    if isinstance(spec, DerivedStudent):
        student = copy.deepcopy(teacher).float()
        cut = spec.structured
        check_architecture(student, cut)
        if not stage.calibration_ids:
            raise JobFailure(ErrorCode.INVALID_RECIPE, "a derived student needs calibration text")
        with torch.no_grad():
            notes = prune(student, measure_importance(student, stage.calibration_ids), cut)
        return student, {"student": "derived", **notes}
    if isinstance(spec, ModelStudent):
        path = _resolve(stage, spec.model.model_dump(), "student")
        student = _load(path, "student", device).float()
        check_vocabulary(student, teacher)
        check_tokenizer(path, stage.tokenizer)
        return student, {"student": "model"}
    return stage.model.float(), {"student": "previous"}


def check_vocabulary(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    sizes = (hf_config(student).vocab_size, hf_config(teacher).vocab_size)
    if sizes[0] != sizes[1]:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"the student's vocabulary ({sizes[0]} tokens) differs from the teacher's "
            f"({sizes[1]}): distillation needs one tokenizer",
        )


def check_tokenizer(student_path: Path, tokenizer: Any) -> None:
    """Equal vocabulary sizes are not enough: token i must be the same string for both."""
    from transformers import AutoTokenizer

    try:
        student_tokenizer = AutoTokenizer.from_pretrained(
            str(student_path), trust_remote_code=trust_remote_code()
        )
    except (OSError, ValueError) as exc:
        raise JobFailure(
            ErrorCode.INVALID_MODEL, f"the student model has no loadable tokenizer: {exc}"
        ) from exc
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            "the student's tokenizer differs from the teacher's (same size, other tokens): "
            "distillation needs one tokenizer",
        )


def check_hidden_sizes(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    sizes = (hf_config(student).hidden_size, hf_config(teacher).hidden_size)
    if sizes[0] != sizes[1]:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE,
            f"hidden_loss_weight needs equal hidden sizes: student {sizes[0]}, teacher {sizes[1]}",
        )


def add_lora(student: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """PEFT LoRA adapters on the matching Linear layers; the rest of the student is frozen."""
    from peft import LoraConfig, get_peft_model

    suffixes = [t for t in spec.targets if not t.startswith("re:")]
    patterns = [re.compile(t[3:]) for t in spec.targets if t.startswith("re:")]
    names = [
        name
        for name, module in student.named_modules()
        if isinstance(module, torch.nn.Linear)
        and "lm_head" not in name
        and (
            any(name.split(".")[-1] == s for s in suffixes) or any(p.search(name) for p in patterns)
        )
    ]
    if not names:
        raise JobFailure(
            ErrorCode.INVALID_RECIPE, f"lora.targets {spec.targets} match no Linear layer"
        )
    config = LoraConfig(
        r=spec.r,
        # PEFT annotates an int but only divides by it: a float alpha scales as asked.
        lora_alpha=spec.alpha,  # type: ignore[arg-type]
        lora_dropout=spec.dropout,
        target_modules=names,
    )
    return get_peft_model(student, config)


def merge_lora(student: torch.nn.Module) -> torch.nn.Module:
    merge = getattr(student, "merge_and_unload", None)  # a PEFT wrapper only
    return merge() if merge is not None else student
