"""What a `search` job asks for: a budget, a quality tolerance, the families it may use.

The worker turns it into candidates (workers/search/candidates.py), each an ordinary compress
job under the search (`parent_id`), and picks among them once they have ended.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Family = Literal["quantization", "rotation", "pruning"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchBudget(_Strict):
    """Any of the limits (at least one). Each holds on the candidate's saved files."""

    # _one_limit, declared.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {key: {"type": "number"}}, "required": [key]}
                for key in ("max_bits_per_weight", "max_checkpoint_bytes")
            ]
        }
    )

    max_bits_per_weight: float | None = Field(
        default=None,
        ge=2.0,
        le=16.0,
        description="Average bits per quantized weight as the files store them (integer bits "
        "plus one 16-bit scale per group)",
    )
    max_checkpoint_bytes: int | None = Field(
        default=None,
        ge=2**16,
        le=10**13,
        description="The model's safetensors files together, in bytes (unquantized tensors "
        "such as embeddings count at 16 bits)",
    )
    min_decode_tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Greedy decode speed at batch 1 on the worker's device, as the report's "
        "serving probe measures it (the job's `evaluation.efficiency` settings); candidates are "
        "measured with it and a slower one cannot win. A limit on bits or bytes is still "
        "needed: it is what the bits are allocated under.",
    )
    target_runtime: Literal["transformers", "vllm", "gguf"] = Field(
        default="transformers",
        description="vllm: only schemes vLLM serves with fast kernels (4 or 8 bits, groups of "
        "128 or one scale per channel), the preflight's own rules; gguf: llama.cpp's own "
        "types (the `gguf` stage's presets, with and without the importance matrix, rotated "
        "first where rotation is allowed), their bits read from each file (GGUF quantizes the "
        "embedding too, and it counts)",
    )

    @model_validator(mode="after")
    def _one_limit(self) -> SearchBudget:
        if self.max_bits_per_weight is None and self.max_checkpoint_bytes is None:
            raise ValueError("give max_bits_per_weight, max_checkpoint_bytes or both")
        return self


class AccuracyDrop(_Strict):
    task: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="One of the job's `evaluation.tasks`, by name; candidates run it too",
    )
    metric: str = Field(default="acc", pattern=r"^[A-Za-z0-9_]{1,64}$")
    max_drop: float = Field(
        ge=0, le=1, description="Most the metric may fall below the original's (0.02: 2 points)"
    )


class SearchQuality(_Strict):
    max_accuracy_drop: AccuracyDrop | None = Field(
        default=None, description="A tolerance on a task's metric, with or beside perplexity's"
    )
    max_perplexity_increase_pct: float | None = Field(
        default=None,
        gt=0,
        le=10_000,
        description="The pick is the smallest candidate within this much perplexity increase "
        "over the original (the job's evaluation data, candidates' short evaluation) and within "
        "`max_accuracy_drop` when given; none within them: the best one, and the report says "
        "so. Neither given: the best candidate within the budget.",
    )


class SearchSpec(_Strict):
    # _quantization_always's runtime rule, declared: the pruning family's sparse files only
    # for transformers (an absent target_runtime is transformers).
    model_config = ConfigDict(
        json_schema_extra={
            "if": {
                "properties": {"families": {"contains": {"const": "pruning"}}},
                "required": ["families"],
            },
            "then": {
                "properties": {
                    "budget": {"properties": {"target_runtime": {"const": "transformers"}}}
                }
            },
        }
    )

    budget: SearchBudget
    quality: SearchQuality = Field(default_factory=SearchQuality)
    families: list[Family] = Field(
        default_factory=lambda: list[Family](["quantization", "rotation"]),
        min_length=1,
        max_length=3,
        json_schema_extra={"contains": {"const": "quantization"}, "uniqueItems": True},
        description="quantization: GPTQ with bits per layer allocated under the budget (and "
        "the best uniform scheme within it, for comparison); rotation: also candidates rotated "
        "first (Hadamard), with the importance-matrix scale search; pruning: also SparseGPT "
        "50 % then GPTQ on the kept weights (stored sparse: a 1-bit mask and the nonzero "
        "integers; transformers only, served through squash.load_pretrained)",
    )
    max_candidates: int = Field(
        default=4, ge=1, le=8, description="Child jobs; N workers run N at once"
    )
    time_budget_s: int = Field(
        default=6 * 3600,
        ge=60,
        le=7 * 86400,
        description="From the search's start: then candidates still running are cancelled "
        "and the search finishes with those that finished, saying so",
    )
    candidate_eval_tokens: int = Field(
        default=4096,
        ge=256,
        le=1_000_000,
        description="Evaluation tokens per candidate (the pick gets the job's full evaluation)",
    )
    sensitivity_samples: int = Field(
        default=8, ge=1, le=256, description="Calibration samples of the sensitivity pass"
    )

    @model_validator(mode="after")
    def _quantization_always(self) -> SearchSpec:
        if "quantization" not in self.families:
            raise ValueError("families must include quantization (every candidate quantizes)")
        if len(set(self.families)) != len(self.families):
            raise ValueError("each family once")
        return self

    @field_validator("families")
    @classmethod
    def _pruning_served(cls, families: list[Family], info: ValidationInfo) -> list[Family]:
        """Named on `search.families` (budget, declared first, is validated already)."""
        budget = info.data.get("budget")
        if "pruning" in families and budget is not None and budget.target_runtime != "transformers":
            raise ValueError(
                f"pruning makes sparse artifacts {budget.target_runtime} does not serve; drop "
                "it or use target_runtime transformers"
            )
        return families


def tolerance_errors(search: SearchSpec, task_names: list[str]) -> list[str]:
    """What the search's tolerances need of the job's evaluation (a cross-field rule)."""
    drop = search.quality.max_accuracy_drop
    if drop is not None and drop.task not in task_names:
        return [f"task {drop.task!r} is not one of the job's evaluation.tasks {task_names}"]
    return []
