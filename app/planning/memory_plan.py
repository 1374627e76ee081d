"""How much memory each phase of a job needs, before any weight is loaded: from the model's
sizes (`model_facts.py`), the recipe's stage costs (`app/recipes/cost.py`) and the job's
calibration and evaluation settings. The API routes with it (`pools.py`); the worker refuses a
job that cannot fit its own memory before loading, and the report puts the measured peak of
every phase beside the planned one.

Figures are bytes above the worker process's RSS once its libraries are imported (the runtime
is a fixed cost, not the model's). The plan describes what the worker does today, in the one
execution mode it has (`in_memory`): the model is held whole, in float32, on the job's device.
Its phases, with P the parameter count and S the checkpoint's size as stored, were checked
against `bench/scale.py` (a 1.1B Llama, S = 2.2 GB, CPU):

- resolve: the file is read and converted to float32 (P x 4 + S);
- evaluate_original / evaluate_compressed: the model plus one evaluation window's activations
  (float32 logits over the vocabulary dominate);
- stages: the model plus the largest stage's working set (calibration activations cached
  between layers, one layer's Hessians, one sample's activations; a training stage's float32
  student, gradients and AdamW moments);
- save: the model plus its compressed copy being written;
- load_check: the artifact loaded back in float32 while its files are read (P x 4 + S).
On a GPU the stages run in bfloat16 on the device (after a float32 load and evaluation).

Offloaded modes (CPU or disk, one decoder layer on the device at a time) are the next step of
issue 20; `MODES` lists what the worker can run, and a job that fits none is refused with the
figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.planning.model_facts import ModelFacts
from app.recipes.cost import StageCost

GIB = 2**30
FLOAT32 = 4
BFLOAT16 = 2
PHASES = ("resolve", "evaluate_original", "stages", "save", "load_check", "evaluate_compressed")
# Headroom over the planned peak before a phase is called a fit: allocator fragmentation and
# what the first-order terms leave out (norms, rotary tables, tokenizer, Python objects).
HEADROOM = 1.15


@dataclass(frozen=True)
class Workload:
    """What the job does besides holding the model."""

    stages: tuple[StageCost, ...]
    calibration_samples: int
    calibration_length: int
    eval_window: int  # tokens per evaluation forward pass
    evaluate_original: bool
    compresses: bool = True


@dataclass(frozen=True)
class Budget:
    """The memory a worker (or a pool's workers) has for one job."""

    device: Literal["cpu", "gpu"]
    host_bytes: int | None  # None: unknown, never refuses
    device_bytes: int | None = None  # GPU memory; None on CPU or when unknown


@dataclass(frozen=True)
class PhaseNeed:
    host_bytes: int
    device_bytes: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    device: str
    phases: dict[str, PhaseNeed]
    budget: Budget
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def host_peak_bytes(self) -> int:
        return max(need.host_bytes for need in self.phases.values())

    @property
    def device_peak_bytes(self) -> int:
        return max(need.device_bytes for need in self.phases.values())

    @property
    def shortfall(self) -> str | None:
        """Why the plan does not fit its budget, with the figures; None when it fits."""
        problems = []
        host, device = self.budget.host_bytes, self.budget.device_bytes
        if host is not None and self.host_peak_bytes * HEADROOM > host:
            problems.append(
                f"host memory {_gib(self.host_peak_bytes)} planned "
                f"(+{HEADROOM - 1:.0%} headroom) > {_gib(host)}"
            )
        if device is not None and self.device_peak_bytes * HEADROOM > device:
            problems.append(
                f"GPU memory {_gib(self.device_peak_bytes)} planned "
                f"(+{HEADROOM - 1:.0%} headroom) > {_gib(device)}"
            )
        return "; ".join(problems) or None

    @property
    def fits(self) -> bool:
        return self.shortfall is None

    def peak_phase(self) -> str:
        key = "device_bytes" if self.device == "gpu" else "host_bytes"
        return max(self.phases, key=lambda name: getattr(self.phases[name], key))

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "device": self.device,
            "fits": self.fits,
            "shortfall": self.shortfall,
            "host_peak_bytes": self.host_peak_bytes,
            "device_peak_bytes": self.device_peak_bytes,
            "host_budget_bytes": self.budget.host_bytes,
            "device_budget_bytes": self.budget.device_bytes,
            "phases": {
                name: {"host_bytes": need.host_bytes, "device_bytes": need.device_bytes}
                for name, need in self.phases.items()
            },
            "model": self.model,
        }


def _gib(value: int) -> str:
    """A size for people: GiB, or MiB below one GiB."""
    if value >= GIB:
        return f"{value / GIB:.1f} GiB"
    return f"{value / 2**20:.1f} MiB"


def evaluation_bytes(facts: ModelFacts, tokens: int, element: int) -> int:
    """One evaluation window's activations: float32 logits over the vocabulary (the logits,
    their log-softmax and the gathered targets' working copy), one layer's MLP and attention
    intermediates, and the attention scores."""
    logits = tokens * facts.vocab_size * FLOAT32 * 3
    layer = tokens * (3 * facts.intermediate_size + 6 * facts.hidden_size) * element
    scores = facts.num_attention_heads * tokens * tokens * element
    return logits + layer + scores


def stage_bytes(facts: ModelFacts, cost: StageCost, workload: Workload, element: int) -> int:
    """A stage's working set beyond the model it compresses."""
    total = 0
    if cost.calibrated:
        tokens = workload.calibration_samples * workload.calibration_length
        # The sequential pipeline caches every sample's input to the current layer and its
        # output for the next.
        total += tokens * facts.hidden_size * element * 2
        if cost.hessians:
            total += sum(FLOAT32 * size * size for size in facts.layer_linear_inputs)
        total += evaluation_bytes(facts, workload.calibration_length, element) - (
            workload.calibration_length * facts.vocab_size * FLOAT32 * 3
        )
    if cost.trains:
        # Student weights, gradients and two AdamW moments in float32, and one micro-batch's
        # activations kept for backward plus both models' logits.
        per_token = (
            facts.num_hidden_layers * (3 * facts.intermediate_size + 6 * facts.hidden_size)
            + 8 * facts.vocab_size
        )
        total += facts.parameters * FLOAT32 * 4 + cost.micro_batch_tokens * per_token * FLOAT32
    return total


def in_memory(facts: ModelFacts, workload: Workload, device: str) -> dict[str, PhaseNeed]:
    """The whole model on the job's device (see the module docstring)."""
    stored = facts.checkpoint_bytes
    full = facts.parameters * FLOAT32
    window = workload.eval_window
    working = max(
        (
            stage_bytes(facts, c, workload, FLOAT32 if device == "cpu" else BFLOAT16)
            for c in workload.stages
        ),
        default=0,
    )
    evaluation = evaluation_bytes(facts, window, FLOAT32)
    if device == "cpu":
        # Calibrated on bench/scale.py (1.1B Llama, CPU: planned/measured 0.91-1.11 per phase):
        # a phase also holds what the allocator kept from the evaluation before it; the stages
        # work on float32 copies of one decoder layer (~4 of them: weights, quantized,
        # errors, scratch); loading the artifact back decompresses through a 16-bit copy.
        layer_copies = 4 * facts.layer_parameters * FLOAT32
        kept = evaluation * workload.evaluate_original
        loaded = full + stored + stored // 2
        phases = {
            "resolve": PhaseNeed(full + stored),
            "evaluate_original": PhaseNeed(full + kept),
            "stages": PhaseNeed(full + kept + layer_copies + working),
            "save": PhaseNeed(full + stored),
            "load_check": PhaseNeed(loaded),
            "evaluate_compressed": PhaseNeed(loaded + evaluation),
        }
    else:
        half = facts.parameters * BFLOAT16
        phases = {
            # Loaded in float32 on the host, then moved to the GPU.
            "resolve": PhaseNeed(full + stored, full),
            "evaluate_original": PhaseNeed(stored, full + evaluation * workload.evaluate_original),
            "stages": PhaseNeed(stored, max(full, half + working)),
            # The on-grid weights are kept in float32 until packed (storage_dtype.py).
            "save": PhaseNeed(stored, full),
            "load_check": PhaseNeed(full + stored, full),
            "evaluate_compressed": PhaseNeed(stored, full + evaluation),
        }
    if not workload.compresses:
        phases = {name: phases[name] for name in ("resolve", "evaluate_original")}
    return phases


# The execution modes the worker runs, fastest first: the plan picks the first that fits.
MODES: dict[str, Callable[[ModelFacts, Workload, str], dict[str, PhaseNeed]]] = {
    "in_memory": in_memory,
}


def plan_memory(facts: ModelFacts, workload: Workload, budget: Budget) -> MemoryPlan:
    """The first mode that fits the budget; when none does, the last one tried (its
    `shortfall` says by how much)."""
    plan = None
    for mode, phases_of in MODES.items():
        plan = MemoryPlan(
            mode=mode,
            device=budget.device,
            phases=phases_of(facts, workload, budget.device),
            budget=budget,
            model=facts.as_json(),
        )
        if plan.fits:
            return plan
    assert plan is not None
    return plan
