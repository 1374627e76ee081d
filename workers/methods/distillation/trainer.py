"""The distillation loop: budgeted, checkpointed, resumable, cancellable between micro-batches.

Why our own loop rather than TRL's trainers: every step must check the job's lease and
cancellation, write progress to Postgres, and checkpoint into the object store under the
job's prefix; and a resumed run must be bit-for-bit the uninterrupted one (same seed), which
needs the batch order and the sampling to depend only on (seed, position). The losses are
TRL's (losses.py), the adapters PEFT's; the schedules follow transformers' but decay over the
time budget too (schedule.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from botocore.exceptions import BotoCoreError, ClientError

from app.recipes import DistillParams
from workers.errors import JobCancelled, TransientFailure
from workers.methods.distillation.checkpoint import CheckpointStore, TrainingState, set_rng_state
from workers.methods.distillation.data import batch_indices, micro_seed
from workers.methods.distillation.generated import sample_continuation
from workers.methods.distillation.losses import divergence, hidden_state_loss, next_token_loss
from workers.methods.distillation.schedule import budget_scheduler
from workers.methods.shared.masks import reapply_masks

LOSS_HISTORY = 1000


@dataclass
class StepReport:
    step: int
    max_steps: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    train_seconds: float
    checkpoint_step: int | None
    resumed_from_step: int | None

    def as_json(self) -> dict[str, Any]:
        def short(key: str, value: Any) -> Any:
            if key == "learning_rate":
                return float(f"{value:.4g}")  # 2e-5 would round to 0 at 4 decimals
            return round(value, 4) if isinstance(value, float) else value

        return {key: short(key, value) for key, value in vars(self).items()}


@dataclass
class TrainingRun:
    student: torch.nn.Module
    teacher: torch.nn.Module
    params: DistillParams
    sequences: torch.Tensor  # (count, seq_length) token ids
    seed: int = 0
    masks: dict[str, torch.Tensor] | None = None  # zeros to keep (earlier sparsity)
    checkpoints: CheckpointStore | None = None
    check: Callable[[], None] | None = None  # raises to stop (cancel, lost lease)
    on_step: Callable[[StepReport], None] | None = None
    on_warning: Callable[[str], None] | None = None
    eos_token_id: int | None = None

    def checkpoint(self, state: TrainingState, optimizer: Any, scheduler: Any) -> int:
        """Save a checkpoint; a failed one (object store down) costs only the resume point,
        so training goes on and the job's warnings say so."""
        if self.checkpoints is None:
            return 0
        try:
            return self.checkpoints.save(state, self.student, optimizer, scheduler)
        except (OSError, BotoCoreError, ClientError) as exc:
            if self.on_warning:
                self.on_warning(f"checkpoint at step {state.step} failed: {exc}")
            return 0


@dataclass
class TrainingOutcome:
    state: TrainingState
    stopped_by: str  # max_steps | max_seconds | finished_before (a retry found it done)
    resumed_from_step: int | None
    resume_note: str | None
    checkpoint_bytes: int


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on GPU ("auto") or when asked; float32 otherwise. On CPU bf16 is opt-in:
    without native bf16 it is slower than float32; with avx512_bf16 (this project's 2-core
    machine) a SmolLM2 distillation step ran 1.5x the tokens/s of float32."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(run: TrainingRun) -> TrainingOutcome:
    params, student = run.params, run.student
    device = next(student.parameters()).device
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=params.learning_rate, weight_decay=params.weight_decay
    )
    state, resumed_from, note, written = TrainingState(), None, None, 0
    clock = {"seconds": 0.0}  # read at each scheduler step: trained so far, this step included
    scheduler = budget_scheduler(optimizer, params, lambda: clock["seconds"])
    if run.checkpoints is not None:
        try:
            restored, note = run.checkpoints.load()
        except (OSError, BotoCoreError, ClientError) as exc:
            # Starting over could redo hours of training: retry the job once the store is back.
            raise TransientFailure(f"cannot read the training checkpoint: {exc}") from exc
        if restored is not None:
            named = dict(student.named_parameters())
            with torch.no_grad():
                for name, tensor in restored.weights.items():
                    named[name].copy_(tensor)
            optimizer.load_state_dict(restored.optimizer)
            scheduler.load_state_dict(restored.scheduler)
            set_rng_state(restored.rng)
            state, resumed_from = restored.state, restored.state.step
    if state.done:
        return TrainingOutcome(state, "finished_before", resumed_from, note, 0)

    # Frozen base weights (LoRA) keep their zeros by themselves; merging the adapters may
    # refill them, which the recipe runner re-zeroes and reports.
    masks = run.masks if run.masks and params.lora is None else {}
    student.train()
    stopped_by = "max_steps"
    try:
        while state.step < params.max_steps:
            if params.max_seconds is not None and state.train_seconds >= params.max_seconds:
                stopped_by = "max_seconds"
                break
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_tokens = 0.0, 0
            for micro in range(params.grad_accum):
                if run.check:
                    run.check()
                position = state.step * params.grad_accum + micro
                loss, tokens = micro_batch_loss(run, position, device)
                (loss / params.grad_accum).backward()
                step_loss += float(loss.detach()) / params.grad_accum
                step_tokens += tokens
            if params.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            optimizer.step()
            if masks:
                reapply_masks(student, masks)
            seconds = time.perf_counter() - started
            clock["seconds"] = state.train_seconds + seconds
            learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step()
            state.step += 1
            state.micro_batches += params.grad_accum
            state.tokens += step_tokens
            state.train_seconds += seconds
            state.losses = [*state.losses, round(step_loss, 6)][-LOSS_HISTORY:]
            if state.step % params.checkpoint_every == 0 and state.step < params.max_steps:
                written += run.checkpoint(state, optimizer, scheduler)
            if run.on_step:
                run.on_step(
                    _report(
                        run, state, step_loss, step_tokens / seconds, learning_rate, resumed_from
                    )
                )
    except JobCancelled:
        # Keep what was trained: the last completed step (the partial one is dropped).
        run.checkpoint(state, optimizer, scheduler)
        raise
    state.done = True
    # Marked done: a retry of this job (a later stage or the upload failed) skips training.
    written += run.checkpoint(state, optimizer, scheduler)
    student.eval()
    return TrainingOutcome(state, stopped_by, resumed_from, note, written)


def _report(
    run: TrainingRun,
    state: TrainingState,
    loss: float,
    tokens_per_second: float,
    learning_rate: float,
    resumed_from: int | None,
) -> StepReport:
    params = run.params
    per_step = state.train_seconds / max(state.step, 1)  # both count every attempt
    eta = (params.max_steps - state.step) * per_step
    if params.max_seconds is not None:
        eta = min(eta, max(params.max_seconds - state.train_seconds, 0.0))
    return StepReport(
        step=state.step,
        max_steps=params.max_steps,
        loss=loss,
        learning_rate=learning_rate,
        tokens_per_second=tokens_per_second,
        eta_seconds=eta,
        train_seconds=state.train_seconds,
        checkpoint_step=run.checkpoints.saved_step if run.checkpoints else None,
        resumed_from_step=resumed_from,
    )


def micro_batch_loss(
    run: TrainingRun, position: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The loss of one micro-batch and how many tokens it trained on."""
    params = run.params
    rows = batch_indices(
        position, sequences=len(run.sequences), batch_size=params.batch_size, seed=run.seed
    )
    ids = run.sequences[rows].to(device)
    scored = torch.ones(ids.shape, dtype=torch.bool, device=device)
    on_policy = False
    if params.loss == "gkd" and params.lmbda > 0:
        draw = torch.Generator().manual_seed(micro_seed(run.seed, position))
        on_policy = bool(torch.rand((), generator=draw) < params.lmbda)
    if on_policy:
        ids = sample_continuations(run, ids, position)
        # Score only the positions that predict the student's own tokens.
        scored[:, : params.prompt_tokens - 1] = False
    want_hidden = params.hidden_loss_weight > 0
    with autocast(device, params.mixed_precision):
        with torch.no_grad():
            teacher_out = run.teacher(ids, output_hidden_states=want_hidden)
        student_out = run.student(ids, output_hidden_states=want_hidden)
    loss = divergence(
        student_out.logits,
        teacher_out.logits,
        scored,
        beta=params.beta_for_loss,
        temperature=params.temperature,
    )
    if params.lm_loss_weight and not on_policy:
        loss = (1 - params.lm_loss_weight) * loss + params.lm_loss_weight * next_token_loss(
            student_out.logits, ids
        )
    if want_hidden:
        loss = loss + params.hidden_loss_weight * hidden_state_loss(
            student_out.hidden_states, teacher_out.hidden_states
        )
    return loss, int(ids.numel())


@torch.no_grad()
def sample_continuations(run: TrainingRun, ids: torch.Tensor, position: int) -> torch.Tensor:
    """GKD's on-policy data: the student continues each sequence's first `prompt_tokens`
    tokens by sampling (temperature 1) to the full length. End-of-text is suppressed
    (min_new_tokens) so every sequence keeps the same length."""
    params = run.params
    new_tokens = ids.shape[1] - params.prompt_tokens
    torch.manual_seed(micro_seed(run.seed, position))  # generate() draws from the global RNG
    prompts = ids[:, : params.prompt_tokens]
    run.student.eval()
    try:
        # A PreTrainedModel or its PEFT wrapper: both generate.
        out = sample_continuation(run.student, prompts, new_tokens, eos_token_id=run.eos_token_id)
    finally:
        run.student.train()
    return out[:, : ids.shape[1]]
