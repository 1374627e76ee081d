"""Zero-shot tasks through lm-evaluation-harness (`lm_eval.simple_evaluate` on the loaded model).

Three sources of task (app/jobs/schemas.py `TaskSpec`):
- built-in: `squash_python_docs_mc` / `squash_python_docs_cloze`, data shipped in this package
  (workers/evaluation/tasks/, built from the held-out share of Python's documentation);
- a JSONL file in the object store (`data: s3://…`), `type` multiple_choice, cloze or generate
  (greedy generation to the end of the line, exact match), with the
  field names of the user's records. Task configs are built here from validated field names:
  users never send Jinja templates, which lm-eval would render unsandboxed;
- any task lm-eval knows by name (hellaswag, arc_challenge, …) when the worker can reach its data.

lm-eval is the well-kept implementation of these metrics (acc, acc_norm, greedy match and
per-token perplexity); we only turn a task spec into its config and its results into plain
numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
BUILTIN_TASKS = {
    "squash_python_docs_mc": ("multiple_choice", TASKS_DIR / "python_docs_mc.jsonl"),
    "squash_python_docs_cloze": ("cloze", TASKS_DIR / "python_docs_cloze.jsonl"),
}
BUILTIN_FIELDS = {"context_field": "context", "choices_field": "choices", "label_field": "label"}
CLOZE_FIELDS = {"context_field": "context", "target_field": "target"}
# Metrics kept in the report (lm-eval also returns their bootstrap standard errors).
KEPT_METRICS = ("acc", "acc_norm", "perplexity", "exact_match", "f1", "bleu", "word_perplexity")


class TaskDataError(ValueError):
    """A task's data file does not match its spec (missing field, wrong label)."""


def task_config(name: str, kind: str, data_file: Path, fields: dict[str, str]) -> dict[str, Any]:
    """An lm-eval task config for a local JSONL file. Templates only reference field names
    that the request schema restricted to identifiers."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": "{{" + fields["context_field"] + "}}",
        "metadata": {"version": 1.0},
    }
    if kind == "multiple_choice":
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "{{" + fields["choices_field"] + "}}",
            "doc_to_target": "{{" + fields["label_field"] + "}}",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    elif kind == "generate":  # greedy generation up to a newline, scored by exact match
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "{{" + fields["target_field"] + "}}",
            "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 32},
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": True,
                }
            ],
        }
    else:  # cloze: the target continues the context after one space (LAMBADA's convention)
        config |= {
            "output_type": "loglikelihood",
            "doc_to_target": "{{' ' + " + fields["target_field"] + "}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    return config


def check_data(kind: str, data_file: Path, fields: dict[str, str]) -> int:
    """Validate every record before lm-eval sees it: its errors name no line or field."""
    count = 0
    for number, line in enumerate(data_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"line {number}: not JSON ({exc.msg})") from exc
        wanted = [fields["context_field"]]
        wanted += (
            [fields["choices_field"], fields["label_field"]]
            if kind == "multiple_choice"
            else [fields["target_field"]]
        )
        missing = [f for f in wanted if not isinstance(doc, dict) or f not in doc]
        if missing:
            raise TaskDataError(f"line {number}: missing field(s) {missing}")
        if kind == "multiple_choice":
            choices, label = doc[fields["choices_field"]], doc[fields["label_field"]]
            if not isinstance(choices, list) or len(choices) < 2:
                raise TaskDataError(f"line {number}: {fields['choices_field']} needs ≥ 2 choices")
            if not isinstance(label, int) or not 0 <= label < len(choices):
                raise TaskDataError(
                    f"line {number}: {fields['label_field']} must index {fields['choices_field']}"
                )
        count += 1
    if count == 0:
        raise TaskDataError("no records")
    return count


def build_task(
    spec: dict[str, Any], data_file: Path | None, *, offline: bool = False
) -> str | dict[str, Any]:
    """What simple_evaluate takes for one task spec: a registered name or a config dict."""
    name = spec["name"]
    if name in BUILTIN_TASKS:
        kind, path = BUILTIN_TASKS[name]
        fields = BUILTIN_FIELDS if kind == "multiple_choice" else CLOZE_FIELDS
        return task_config(name, kind, path, fields)
    if spec.get("data"):
        if data_file is None:
            raise TaskDataError(f"the data file {spec['data']} could not be read")
    elif offline:
        raise TaskDataError(
            f"{name!r} is a standard lm-eval task, whose data comes from the Hugging Face hub, "
            "and this worker runs offline (HF_OFFLINE): use a built-in task or your own data"
        )
    else:
        return name  # a standard lm-eval task: its data comes from the Hugging Face hub
    assert data_file is not None
    fields = {k: spec[k] for k in ("context_field", "choices_field", "label_field", "target_field")}
    check_data(spec["type"], data_file, fields)
    return task_config(name, spec["type"], data_file, fields)


def run_task(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str | dict[str, Any],
    *,
    limit: int | None,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """One task on an already loaded model; returns {metric: value} plus the sample count."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = simple_evaluate(
        model=lm,
        tasks=[task],
        limit=limit,
        num_fewshot=0,
        bootstrap_iters=0,  # no resampled standard errors: they cost minutes and we report none
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    name = task if isinstance(task, str) else task["task"]
    raw = results["results"][name]
    metrics = {}
    for key, value in raw.items():
        metric, _, _filter = key.partition(",")
        if metric in KEPT_METRICS and isinstance(value, int | float) and math.isfinite(value):
            metrics[metric] = float(value)
    return {"metrics": metrics, "samples": int(results["n-samples"][name]["effective"])}


def run_tasks(
    model: torch.nn.Module,
    tokenizer: Any,
    specs: list[dict[str, Any]],
    data_files: dict[str, Path],
    *,
    seed: int,
    offline: bool = False,
    on_task: Callable[[int, int, str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every task of the spec; a task that fails is recorded as failed, the others still run."""
    out: dict[str, dict[str, Any]] = {}
    for index, spec in enumerate(specs):
        if on_task:
            on_task(index, len(specs), spec["name"])
        try:
            task = build_task(spec, data_files.get(spec["name"]), offline=offline)
            result = run_task(
                model,
                tokenizer,
                task,
                limit=spec.get("limit"),
                batch_size=spec.get("batch_size", 8),
                seed=seed,
            )
            out[spec["name"]] = {"status": "ok", **result}
        except Exception as exc:  # noqa: BLE001 - one broken task must not lose the others
            out[spec["name"]] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return out
