"""Distillation losses on next-token distributions, plus hidden-state matching.

The divergence is TRL's generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024): at
beta 0 it is exactly KL(teacher || student) (forward KL, standard KD), at beta 1
KL(student || teacher) (reverse KL, MiniLLM), in between the JSD that GKD trains with. TRL
keeps it as a static method of its (experimental) GKD trainer; we use the function, not the
trainer, whose loop cannot checkpoint to our object store under a job lease.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl.experimental.gkd import GKDTrainer

IGNORE = -100


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Mean over the masked positions of the generalized JSD between the two distributions.
    Logits are (batch, positions, vocab); `mask` (batch, positions) marks scored positions."""
    labels = torch.where(mask, 0, IGNORE)
    loss = GKDTrainer.generalized_jsd_loss(
        student_logits.float(),
        teacher_logits.float(),
        labels=labels,
        beta=beta,
        temperature=temperature,
        reduction="batchmean",
    )
    # Hinton et al.: scale by T^2 so gradients keep their size when the temperature changes.
    return loss * temperature**2


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Plain language-model cross-entropy of logits[:, t] against ids[:, t + 1]."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def hidden_state_loss(
    student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Relative squared error between student layer i's output and the teacher layer it maps
    to (evenly spread when the depths differ; the embeddings, index 0, are skipped), per token
    (its error over its norm), averaged over tokens and layers. Per token, because a ratio of
    whole-tensor sums is the few "massive activation" tokens' alone (on SmolLM2 from layer 11
    on, hundreds of times the others' norm)."""
    pairs = layer_map(len(student_hidden) - 1, len(teacher_hidden) - 1)
    losses = []
    for s_index, t_index in pairs:
        target = teacher_hidden[t_index].float()
        squared = (student_hidden[s_index].float() - target).pow(2).sum(-1)
        losses.append((squared / target.pow(2).sum(-1).clamp_min(1e-8)).mean())
    return torch.stack(losses).mean()


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i (1-based output index) -> teacher layer round(i * T / S): the last
    layers always pair up."""
    return [
        (i, max(1, round(i * teacher_layers / student_layers)))
        for i in range(1, student_layers + 1)
    ]


@dataclass(frozen=True)
class HeldOut:
    student_perplexity: float
    teacher_perplexity: float
    kl_to_teacher: float  # mean per-token KL(teacher || student)


@torch.no_grad()
def heldout_figures(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    token_ids: list[int],
    context_length: int,
    on_window: Callable[[], None] | None = None,
) -> HeldOut:
    """Both models' perplexities and the student's KL to the teacher, from one forward pass
    of each per window. Windows do not overlap and each scores its own next-token predictions,
    which is exactly workers.evaluation.perplexity at stride = context_length."""
    device = next(student.parameters()).device
    nll_student, nll_teacher, kl_sum, count = 0.0, 0.0, 0.0, 0
    for begin in range(0, len(token_ids) - 1, context_length):
        window = torch.tensor(token_ids[begin : begin + context_length], device=device)[None]
        if window.shape[1] < 2:
            break
        if on_window:
            on_window()  # the job's cancel check point
        s_log = F.log_softmax(student(window).logits[0, :-1].float(), dim=-1)
        t_log = F.log_softmax(teacher(window).logits[0, :-1].float(), dim=-1)
        targets = window[0, 1:, None]
        nll_student -= float(s_log.gather(1, targets).double().sum())
        nll_teacher -= float(t_log.gather(1, targets).double().sum())
        kl_sum += float((t_log.exp() * (t_log - s_log)).sum(-1).double().sum())
        count += targets.shape[0]
    return HeldOut(
        student_perplexity=math.exp(nll_student / count),
        teacher_perplexity=math.exp(nll_teacher / count),
        kl_to_teacher=kl_sum / count,
    )
