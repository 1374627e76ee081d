"""`generated_sequences`: training text the teacher writes itself (LLM-QAT's data-free recipe),
added to the dataset's sequences."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from app.recipes import DistillParams
from squash import load_pretrained
from tests.support.tiny_model import teacher_text
from workers.methods.distillation import generated, method
from workers.methods.distillation.generated import GREEDY_HEAD, teacher_sequences
from workers.methods.recipe import run_stages

LENGTH = 32


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path) -> Any:
    return load_pretrained(tiny_teacher_dir).eval()


def greedy_head_holds(teacher: Any, row: torch.Tensor) -> bool:
    """Tokens 1..GREEDY_HEAD are the teacher's top token after the ones before them."""
    with torch.no_grad():
        logits = teacher(row[None, :GREEDY_HEAD]).logits[0]
    return bool(torch.equal(logits.argmax(-1), row[1 : GREEDY_HEAD + 1]))


def test_the_teacher_writes_seeded_sequences_from_its_own_distribution(
    teacher: Any, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generated, "TOKENS_PER_BATCH", 2 * LENGTH)  # 2 sequences a batch
    vocab = int(teacher.config.vocab_size)
    checks: list[int] = []

    def write(seed: int) -> torch.Tensor:
        return teacher_sequences(
            teacher,
            count=5,
            seq_length=LENGTH,
            seed=seed,
            vocab_size=vocab,
            special_ids=[0, 1, 2],
            check=lambda: checks.append(1),
        )

    first, again, other = write(7), write(7), write(8)
    assert first.shape == (5, LENGTH) and first.dtype == torch.long
    assert len(checks) == 3 * 3  # a cancellation check before each of the 3 batches
    assert torch.equal(first, again)  # a resumed job reads the same text
    assert not torch.equal(first[:, GREEDY_HEAD + 1 :], other[:, GREEDY_HEAD + 1 :])
    assert not set(first[:, 0].tolist()) & {0, 1, 2}  # never a special token first
    assert all(greedy_head_holds(teacher, row) for row in first)
    # Sampled from the teacher: it reads its own text far better than uniform draws (which
    # it reads at about its vocabulary's size or worse).
    with torch.no_grad():
        nll = teacher(first, labels=first).loss.item()
        uniform = torch.randint(3, vocab, first.shape, generator=torch.Generator().manual_seed(0))
        nll_uniform = teacher(uniform, labels=uniform).loss.item()
    assert math.exp(nll) < 0.25 * math.exp(nll_uniform), (nll, nll_uniform)


def test_a_distill_stage_trains_on_the_teachers_text_beside_the_dataset(
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = teacher_text(tiny_teacher_dir, 512)
    seen: dict[str, torch.Tensor] = {}
    real_train = method.train

    def recording_train(run: Any) -> Any:
        seen["sequences"] = run.sequences
        return real_train(run)

    monkeypatch.setattr(method, "train", recording_train)
    params = DistillParams(
        student={"kind": "derived", "drop_layers": 1},  # type: ignore[arg-type]
        generated_sequences=3,
        seq_length=LENGTH,
        batch_size=4,
        max_steps=2,
        eval_tokens=0,
    )
    outcome = run_stages(
        load_pretrained(tiny_teacher_dir).eval(),
        text["tokenizer"],
        [("distill", params)],
        text["calibration"],
        source_path=tiny_teacher_dir,
        eval_ids=text["eval"],
        eval_context_length=64,
    )
    notes = outcome.stage_notes[-1]
    assert notes["generated_sequences"] == 3 and notes["generation_seconds"] > 0
    sequences = seen["sequences"]
    assert len(sequences) == notes["train_sequences"] + 3
    teacher = load_pretrained(tiny_teacher_dir).eval()
    # The last three rows are the teacher's: its greedy head, then its seeded samples.
    assert all(greedy_head_holds(teacher, row) for row in sequences[-3:])
