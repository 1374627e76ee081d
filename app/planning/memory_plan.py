"""How much memory each phase of a job needs, before any weight is loaded: from the model's
sizes (`model_facts.py`), the recipe's stage costs (`app/recipes/cost.py`) and the job's
calibration and evaluation settings. The API routes with it (`pools.py`); the worker refuses a
job that cannot fit its own memory before loading, and the report puts the measured peak of
every phase beside the planned one.

Figures are bytes above the worker process's RSS once its libraries are imported (the runtime
is a fixed cost, not the model's). In the `in_memory` mode the model is held whole, in float32,
on the job's device. Its phases, with P the parameter count and S the checkpoint's size as
stored, were checked against `bench/scale.py` (a 1.1B Llama, S = 2.2 GB, CPU):

- resolve: the file is read and converted to float32 (P x 4 + S);
- evaluate_original / evaluate_compressed: the model plus one evaluation window's activations
  (float32 logits over the vocabulary dominate);
- stages: the model plus the largest stage's working set (calibration activations cached
  between layers, one layer's Hessians, one sample's activations; a training stage's float32
  student, gradients and AdamW moments);
- save: the model plus its compressed copy being written;
- load_check: the artifact loaded back in float32 while its files are read (P x 4 + S).
On a GPU the stages run in bfloat16 on the device (after a float32 load and evaluation).

The disk-offloaded mode (`disk_offloaded`, `workers/models/offloaded.py`) holds no whole model
in any phase: every weight stays in the checkpoint's files (changed ones in the job's offload
folder) and each module's tensors are read, in the compute dtype, when its forward runs. A
phase then holds the largest module (the embedding, or one decoder layer) and its working set;
the save writes each compressed tensor to disk as it comes (no shard waits in memory). It runs only
recipes whose every stage is `offloadable` (`app/recipes/cost.py`); it is slower (each
evaluation window reads every weight from disk), so the plan picks it only when the model does
not fit in memory, or when the worker is told to (WORKER_EXECUTION_MODE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.planning.model_facts import ModelFacts
from app.recipes.cost import StageCost

GIB = 2**30
# The methods whose StageCost is offloadable (app/recipes/): named in a refusal.
OFFLOADABLE_METHODS = ("rtn", "gptq")
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

    @property
    def offloadable(self) -> bool:
        return all(cost.offloadable for cost in self.stages)


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
    unsupported_reason: str | None = None  # the mode cannot run this recipe at all

    @property
    def host_peak_bytes(self) -> int:
        return max(need.host_bytes for need in self.phases.values())

    @property
    def device_peak_bytes(self) -> int:
        return max(need.device_bytes for need in self.phases.values())

    @property
    def shortfall(self) -> str | None:
        """Why the plan does not fit its budget, with the figures; None when it fits."""
        problems = [self.unsupported_reason] if self.unsupported_reason else []
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
    if cost.block_training_samples:
        # AutoRound also keeps every sample's float output of the layer (its target), and
        # one step's activations for backward, in float32 with the layer's float32 weights,
        # their gradients and the rounding offsets.
        tokens = workload.calibration_samples * workload.calibration_length
        step = cost.block_training_samples * workload.calibration_length
        per_token = 3 * facts.intermediate_size + 6 * facts.hidden_size
        total += tokens * facts.hidden_size * element + step * per_token * FLOAT32 * 2
        total += facts.layer_parameters * FLOAT32 * 3
    if cost.fisher:
        # Gradients and the Fisher sums in float32, and one sample's activations kept for
        # backward through every layer, with its logits.
        per_token = (
            facts.num_hidden_layers * (3 * facts.intermediate_size + 6 * facts.hidden_size)
            + 3 * facts.vocab_size
        )
        total += facts.parameters * FLOAT32 * 2 + workload.calibration_length * per_token * FLOAT32
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


def disk_offloaded(facts: ModelFacts, workload: Workload, device: str) -> dict[str, PhaseNeed]:
    """One module in memory at a time (see the module docstring). Calibrated on
    bench/offloaded_load.py (1.1B Llama, CPU): a 512-token forward peaked at 0.46-0.58 GB, the
    embedding (0.26 GB in float32) and the logits dominating."""
    element = FLOAT32 if device == "cpu" else BFLOAT16
    embedding = facts.vocab_size * facts.hidden_size * element
    layer = facts.layer_parameters * element
    largest = max(embedding, layer)
    working = max((stage_bytes(facts, c, workload, element) for c in workload.stages), default=0)
    evaluation = evaluation_bytes(facts, workload.eval_window, element)
    onloaded = largest + layer  # the module being run, and the previous one being freed
    needs = {
        "resolve": onloaded,
        "evaluate_original": onloaded + evaluation * workload.evaluate_original,
        # A calibrated stage also holds the layer it solves in float32 copies (weights, their
        # quantized values, the error being propagated).
        "stages": onloaded + working + (2 * layer if working else layer),
        # One module read, brought onto its grid and compressed; its tensors go to disk.
        "save": 2 * largest,
        # One module decompressed at a time, and the generations' batch.
        "load_check": 2 * largest + evaluation_bytes(facts, 64, element),
        "evaluate_compressed": onloaded + evaluation,
    }
    if device == "cpu":
        phases = {name: PhaseNeed(need) for name, need in needs.items()}
    else:
        # The host reads each tensor from disk and hands it to the GPU: one module's worth.
        phases = {name: PhaseNeed(2 * largest, need) for name, need in needs.items()}
        phases["save"] = PhaseNeed(needs["save"], 2 * largest)
        phases["load_check"] = PhaseNeed(needs["load_check"], 2 * largest)
    if not workload.compresses:
        phases = {name: phases[name] for name in ("resolve", "evaluate_original")}
    return phases


# The execution modes the worker runs, fastest first: the plan picks the first that fits.
MODES: dict[str, Callable[[ModelFacts, Workload, str], dict[str, PhaseNeed]]] = {
    "in_memory": in_memory,
    "disk_offloaded": disk_offloaded,
}
FASTEST_MODE = next(iter(MODES))


def modes_for(workload: Workload, forced: str | None = None) -> list[str]:
    """The modes a job may run in: all of them, in order, unless a stage cannot run offloaded;
    only `forced` when the worker is told to use one."""
    allowed = [m for m in MODES if m == FASTEST_MODE or workload.offloadable]
    if forced is not None:
        return [forced] if forced in allowed else []
    return allowed


def plan_memory(
    facts: ModelFacts, workload: Workload, budget: Budget, *, forced_mode: str | None = None
) -> MemoryPlan:
    """The first mode that fits the budget; when none does, the last one tried (its
    `shortfall` says by how much). A `forced_mode` the recipe cannot run in is planned anyway
    and refused (`unsupported_reason`)."""
    modes = modes_for(workload, forced_mode)
    if not modes:
        assert forced_mode is not None
        return MemoryPlan(
            mode=forced_mode,
            device=budget.device,
            phases=MODES[forced_mode](facts, workload, budget.device),
            budget=budget,
            model=facts.as_json(),
            unsupported_reason=f"a stage of this recipe cannot run {forced_mode} "
            f"(offloadable stages: {', '.join(OFFLOADABLE_METHODS)})",
        )
    plan = None
    for mode in modes:
        phases_of = MODES[mode]
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
