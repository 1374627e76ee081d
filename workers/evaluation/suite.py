"""The evaluations a job runs on a model (the original or the compressed one).

Each evaluation is attempted on its own: one that fails (a task whose data is broken, a serving
measurement that runs out of memory) is recorded in the report as failed with its error and the
job goes on, so a finished compression is never lost to its evaluation. Cancellation and a lost
lease still stop the job at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from app.jobs.schemas import EvaluationSpec
from workers.context import JobContext
from workers.errors import JobCancelled, LeaseLost
from workers.evaluation import harness
from workers.evaluation.layerwise import supports_layerwise
from workers.evaluation.measure import greedy_generations, is_offloaded
from workers.evaluation.perplexity import perplexity
from workers.evaluation.serving import measure_in_subprocess

T = TypeVar("T")
SERVING_TIMEOUT_S = 3600.0


@dataclass
class EvalPlan:
    """What to measure, from the job's `evaluation` spec and its data."""

    eval_ids: list[int]
    context_length: int
    stride: int
    perplexity: bool
    prompts: list[str]
    max_new_tokens: int
    tasks: list[dict[str, Any]]
    task_files: dict[str, Path]
    efficiency: dict[str, Any] | None
    seed: int = 0
    offline: bool = False

    @classmethod
    def from_spec(
        cls,
        evaluation: EvaluationSpec,
        eval_ids: list[int],
        task_files: dict[str, Path],
        seed: int,
        *,
        offline: bool = False,
    ) -> EvalPlan:
        # Tasks and efficiency stay the JSON the job submitted: the baseline cache's key is
        # computed over them (workers/evaluation/baseline.py).
        efficiency = evaluation.efficiency.model_dump(mode="json")
        enabled = efficiency.pop("enabled", True)
        return cls(
            eval_ids=eval_ids,
            context_length=evaluation.context_length,
            stride=evaluation.stride or evaluation.context_length,
            perplexity=evaluation.perplexity,
            prompts=list(evaluation.prompts),
            max_new_tokens=evaluation.max_new_tokens,
            tasks=[task.model_dump(mode="json") for task in evaluation.tasks],
            task_files=task_files,
            efficiency=efficiency if enabled else None,
            seed=seed,
            offline=offline,
        )

    @property
    def key_settings(self) -> dict[str, Any]:
        """The evaluation settings the original's figures depend on (the baseline key)."""
        return {
            "perplexity": self.perplexity,
            "max_tokens": len(self.eval_ids),
            "context_length": self.context_length,
            "stride": self.stride,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            "tasks": self.tasks,
            "efficiency": self.efficiency,
        }

    @property
    def eval_tokens(self) -> int:
        """Tokens the perplexity pass runs through the model (windows overlap by the stride)."""
        if not self.perplexity:
            return 0
        return int(len(self.eval_ids) * self.context_length / self.stride)


@dataclass
class Attempts:
    """Status of every evaluation: {"<model>.<evaluation>": {"status": ok|failed, ...}}."""

    ctx: JobContext | None
    status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, key: str, fn: Callable[[], T]) -> T | None:
        try:
            value = fn()
        except (JobCancelled, LeaseLost):
            raise
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the job goes on
            message = f"{type(exc).__name__}: {exc}"[:1000]
            self.status[key] = {"status": "failed", "error": message}
            if self.ctx:
                self.ctx.warn(f"evaluation {key} failed: {message}")
            return None
        self.status[key] = {"status": "ok"}
        return value

    @property
    def all_ok(self) -> bool:
        return all(item["status"] == "ok" for item in self.status.values())


def perplexity_metrics(
    model: torch.nn.Module,
    plan: EvalPlan,
    on_window: Callable[[int, int], None] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """A disk-offloaded model runs all windows one decoder layer at a time (each weight read
    once, not once per window): the same figures."""
    result = perplexity(
        model,
        plan.eval_ids,
        context_length=plan.context_length,
        stride=plan.stride,
        on_window=on_window,
        layerwise=is_offloaded(model) and supports_layerwise(model),
        on_layer=on_layer,
    )
    return {
        "perplexity": result.perplexity,
        "nll_mean": result.nll_mean,
        "scored_tokens": result.scored_tokens,
        "windows": result.windows,
    }


def evaluate(
    ctx: JobContext | None,
    attempts: Attempts,
    label: str,
    model: torch.nn.Module,
    tokenizer: Any,
    model_dir: Path,
    plan: EvalPlan,
    *,
    device: torch.device,
    span: tuple[float, float],
    generations: bool = True,
) -> dict[str, Any]:
    """Perplexity, generations, lm-eval tasks and serving efficiency of one model.
    `model_dir` is the model as saved (what the serving measurement loads)."""
    out: dict[str, Any] = {}
    steps = [
        name
        for name, wanted in (
            ("perplexity", plan.perplexity),
            ("tasks", bool(plan.tasks)),
            ("efficiency", plan.efficiency is not None),
        )
        if wanted
    ]
    low, high = span
    share = (high - low) / max(len(steps), 1)

    def progress(step: str, fraction: float, detail: dict[str, Any]) -> None:
        if ctx:
            start = low + share * steps.index(step)
            ctx.progress(
                f"evaluate_{label}",
                start + share * fraction,
                {"model": label, "evaluation": step, **detail},
            )

    if plan.perplexity:

        def tick(done: int, total: int) -> None:
            progress("perplexity", done / total, {"window": done, "windows": total})

        def layer_tick(done: int, total: int) -> None:
            progress("perplexity", done / total, {"layer": done, "layers": total})

        found = attempts.run(
            f"{label}.perplexity", lambda: perplexity_metrics(model, plan, tick, layer_tick)
        )
        out.update(found or {})
    if generations:
        texts = attempts.run(
            f"{label}.generations",
            lambda: greedy_generations(model, tokenizer, plan.prompts, plan.max_new_tokens),
        )
        if texts is not None:
            out["generations"] = texts
    if plan.tasks:

        def on_task(index: int, total: int, name: str) -> None:
            progress("tasks", index / total, {"task": name, "done": index, "total": total})

        out["tasks"] = run_tasks(ctx, attempts, label, model, tokenizer, plan, on_task)
    if plan.efficiency is not None:
        runs = plan.efficiency["warmup"] + plan.efficiency["repetitions"]
        progress("efficiency", 0.0, {"run": 0, "runs": runs})

        def on_run(done: int, total: int) -> None:
            # The time budget may end the runs early: the bar moves by the runs planned.
            progress("efficiency", done / total, {"run": done, "runs": total})

        measured = serving_efficiency(ctx, attempts, label, model, model_dir, plan, device, on_run)
        if measured is not None:
            out["efficiency"] = measured
    return out


def serving_efficiency(
    ctx: JobContext | None,
    attempts: Attempts,
    label: str,
    model: torch.nn.Module,
    model_dir: Path,
    plan: EvalPlan,
    device: torch.device,
    on_run: Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """The saved model served in a fresh process; skipped for a disk-offloaded job (the probe
    holds the model in memory: what that mode exists to avoid)."""
    if is_offloaded(model):
        if ctx:
            ctx.warn(f"{label}: serving efficiency skipped: the job runs disk-offloaded")
        return None
    spec = plan.efficiency
    assert spec is not None
    found: dict[str, Any] | None = attempts.run(
        f"{label}.efficiency",
        lambda: measure_in_subprocess(
            model_dir,
            device,
            spec,
            timeout_s=SERVING_TIMEOUT_S,
            check=ctx.check if ctx else None,
            on_run=on_run,
        ),
    )
    return found


def run_tasks(
    ctx: JobContext | None,
    attempts: Attempts,
    label: str,
    model: torch.nn.Module,
    tokenizer: Any,
    plan: EvalPlan,
    on_task: Callable[[int, int, str], None],
) -> dict[str, Any]:
    """The lm-eval tasks, each recorded on its own (a failed one warns; the rest report)."""
    results = harness.run_tasks(
        model,
        tokenizer,
        plan.tasks,
        plan.task_files,
        seed=plan.seed,
        offline=plan.offline,
        on_task=on_task,
    )
    for name, result in results.items():
        attempts.status[f"{label}.task:{name}"] = {
            k: v for k, v in result.items() if k in ("status", "error")
        }
        if ctx and result["status"] == "failed":
            ctx.warn(f"evaluation {label}.task:{name} failed: {result['error']}")
    return {
        name: {k: v for k, v in result.items() if k in ("metrics", "samples")}
        for name, result in results.items()
        if result["status"] == "ok"
    }
