"""Request and response bodies of /v1/jobs (pydantic; kept apart from the ORM)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from app.jobs.state import JobState
from app.json_paths import integral_floats_as_ints
from app.recipes import GgufParams, StageIn
from app.reports.schema import JobSummary
from app.schema_types import DocumentedAs
from app.search.spec import SearchSpec
from app.sources import BuiltinDataset, DatasetSource, ModelSource, S3Uri

LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
# Built-in lm-evaluation-harness tasks whose data ships in the worker package.
BUILTIN_TASKS = ("squash_python_docs_mc", "squash_python_docs_cloze")
FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
WEBHOOK_URL_PATTERN = r"^https://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,4})?([/?#][^\x00-\x20\x7f]*)?$"

DEFAULT_PROMPTS = [
    "The Python programming language is",
    "To open a file for reading, use",
    "A list comprehension is",
]


class _Strict(BaseModel):
    # strict: a JSON true is not the number 1, nor "5" the number 5 (the document says
    # integer; pydantic's lax mode would take both).
    model_config = ConfigDict(extra="forbid", strict=True)


class CalibrationSpec(_Strict):
    dataset: DatasetSource = Field(default_factory=BuiltinDataset)
    num_samples: int = Field(default=64, ge=1, le=4096)
    max_seq_length: int = Field(default=512, ge=16, le=8192)


class TaskSpec(_Strict):
    """A zero-shot task run through lm-evaluation-harness."""

    # _data_and_type, declared: a task with `data` has a `type` and a name of its own; one
    # without has none.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"data": {"type": "string"}}, "required": ["data"]},
            "then": {
                "properties": {
                    "type": {"type": "string"},
                    "name": {"not": {"enum": list(BUILTIN_TASKS)}},
                },
                "required": ["type"],
            },
            "else": {"properties": {"type": {"type": "null"}}},
        }
    )

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="A built-in task (squash_python_docs_mc, squash_python_docs_cloze), the name "
        "you give a task whose `data` you supply, or a standard lm-eval task (hellaswag, "
        "arc_challenge, winogrande, lambada_openai, …: needs a worker that reaches the "
        "Hugging Face hub)",
    )
    data: S3Uri | None = Field(default=None, description="JSONL file, one record per line")
    type: Literal["multiple_choice", "cloze", "generate"] | None = Field(
        default=None,
        description="For `data` tasks: multiple_choice (pick the choice the model finds most "
        "likely; acc, acc_norm), cloze (the target continuing the context; acc = greedy "
        "match, perplexity) or generate (greedy generation to the end of the line; "
        "exact_match against the target, ignoring case and punctuation)",
    )
    context_field: str = Field(default="context", pattern=FIELD_NAME)
    choices_field: str = Field(default="choices", pattern=FIELD_NAME)
    label_field: str = Field(default="label", pattern=FIELD_NAME, description="index of the answer")
    target_field: str = Field(default="target", pattern=FIELD_NAME)
    limit: int | None = Field(default=None, ge=1, le=100_000, description="first N records")
    batch_size: int = Field(default=8, ge=1, le=256)

    @model_validator(mode="after")
    def _data_and_type(self) -> TaskSpec:
        if self.data is not None and self.type is None:
            raise ValueError(
                "a task with `data` needs a `type`: multiple_choice, cloze or generate"
            )
        if self.data is None and self.type is not None:
            raise ValueError("`type` only applies to a task with `data`")
        if self.data is not None and self.name in BUILTIN_TASKS:
            raise ValueError(f"{self.name!r} is a built-in task: give yours another name")
        return self


class EfficiencySpec(_Strict):
    """Serving speed and memory, measured on the worker's device in a fresh process (in
    llama.cpp for a GGUF artifact where the worker has it).

    Sized so a job's evaluation does not dwarf its compression: after `warmup` runs, up to
    `repetitions` timed runs, stopping once they have taken `max_seconds` (at least 3 runs).
    For figures to publish, ask for more: `bench/latency_stability.py` shows 30 repetitions
    keep two runs within 10 % at the median on a noisy 2-vCPU machine, 5 did not (13-24 %).
    """

    enabled: bool = True
    prompt_tokens: int = Field(default=128, ge=1, le=8192)
    new_tokens: int = Field(default=16, ge=2, le=1024)
    batch_size: int = Field(default=4, ge=1, le=256, description="the larger batch")
    warmup: int = Field(default=1, ge=0, le=10, description="unmeasured runs first")
    repetitions: int = Field(
        default=30, ge=1, le=50, description="timed runs at most; the report gives median and p90"
    )
    max_seconds: float | None = Field(
        default=20.0,
        gt=0,
        le=3600,
        description="stop the timed runs once they took this long (after at least 3); "
        "null = always all repetitions",
    )


class EvaluationSpec(_Strict):
    dataset: DatasetSource = Field(default_factory=BuiltinDataset)
    perplexity: bool = True
    max_tokens: int = Field(
        default=16384, ge=256, le=1_000_000, description="Evaluation tokens (held-out split)"
    )
    context_length: int = Field(default=512, ge=16, le=8192)
    stride: int | None = Field(
        default=None, ge=1, description="Sliding-window stride; null = context_length"
    )
    compare_original: bool = Field(default=True, description="Also evaluate the input model")
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), max_length=16)
    max_new_tokens: int = Field(default=16, ge=1, le=256)
    tasks: list[TaskSpec] = Field(default_factory=list, max_length=8)
    efficiency: EfficiencySpec = Field(default_factory=EfficiencySpec)
    layer_error_tokens: int = Field(
        default=256,
        ge=0,
        le=4096,
        description="Calibration tokens for the per-layer error (0 = skip it)",
    )
    per_stage: bool = Field(
        default=True, description="Perplexity after every stage of a multi-stage recipe"
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> EvaluationSpec:
        if self.stride is not None and self.stride > self.context_length:
            raise ValueError("stride must not exceed context_length")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        return self


class OutputSpec(_Strict):
    """How the compressed model is written."""

    max_shard_bytes: int = Field(
        default=5 * 10**9,
        ge=2**16,
        le=10**12,
        description="Largest safetensors file of the artifact; a larger model is saved in "
        "shards with a `model.safetensors.index.json` (as transformers writes them), each "
        "shard uploaded in parallel parts and listed in the manifest. A sparse or low-rank "
        "artifact is one file.",
    )
    gguf: list[GgufParams] = Field(
        default_factory=list,
        max_length=4,
        description="Also write the model as GGUF files for llama.cpp / Ollama, one per type, "
        "beside the recipe's artifact: converted from the model the recipe's quantization "
        "stage starts from (after any pruning, distillation or rotation; the input model when "
        "quantization comes first), so llama.cpp's types round the 16-bit weights, not the "
        "artifact's integers. Each is uploaded as `gguf/model-<TYPE>.gguf`; the report lists "
        "its size, tensor types and perplexity (transformers, dequantized). Not for evaluate "
        "jobs, nor recipes with a stage after quantization.",
        examples=[[{"type": "Q4_K_M"}, {"type": "Q8_0", "imatrix": False}]],
    )

    @field_validator("gguf")
    @classmethod
    def _one_file_per_type(cls, value: list[GgufParams]) -> list[GgufParams]:
        types = [item.type for item in value]
        if len(set(types)) != len(types):
            raise ValueError("each GGUF type once")
        return value


_NO_RECIPE: dict[str, JsonValue] = {
    "recipe": {"maxItems": 0},
    "output": {"properties": {"gguf": {"maxItems": 0}}},
}
KIND_RULES: list[JsonValue] = [
    {
        "if": {"properties": {"kind": {"const": "evaluate"}}, "required": ["kind"]},
        "then": {"properties": {**_NO_RECIPE, "search": {"type": "null"}}},
    },
    {
        "if": {"properties": {"kind": {"const": "search"}}, "required": ["kind"]},
        "then": {
            "properties": {**_NO_RECIPE, "search": {"type": "object"}},
            "required": ["search"],
        },
    },
    {
        "if": {
            "properties": {"kind": {"enum": ["evaluate", "search"]}},
            "required": ["kind"],
        },
        "else": {
            "properties": {"recipe": {"minItems": 1}, "search": {"type": "null"}},
            "required": ["recipe"],
        },
    },
]


class JobCreate(_Strict):
    # What `kind` implies for `recipe`, `search` and `output.gguf` (checked in
    # service.checked_stages), declared so a body valid under the document is one the server
    # accepts.
    model_config = ConfigDict(json_schema_extra={"allOf": KIND_RULES})

    kind: Literal["compress", "evaluate", "search"] = Field(
        default="compress",
        description="evaluate: measure `model` as it is (no recipe, no model artifact, only "
        "the report). search: no recipe; give `search` (a budget and a tolerance): the "
        "service tries candidate recipes as child jobs and publishes the best one",
    )
    search: SearchSpec | None = Field(default=None, description="For kind `search` only")
    model: ModelSource
    recipe: list[StageIn] = Field(default_factory=list, max_length=16)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    device: Literal["cpu", "gpu"] | None = Field(
        default=None, description="Which worker pool runs it; null = the server's default"
    )
    priority: int = Field(default=5, ge=0, le=9, description="9 is served first")
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        json_schema_extra={
            "propertyNames": {"pattern": LABEL_KEY_RE.pattern},
            "additionalProperties": {"type": "string", "maxLength": 255},
        },
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        # The form app/webhooks/urls.py accepts; whether the host is public is checked at
        # submission (403 webhook_not_allowed) and again before each delivery.
        json_schema_extra={"pattern": WEBHOOK_URL_PATTERN},
        description="Every state change is POSTed here as JSON, signed with your tenant's "
        "webhook secret (GET /v1/webhooks/secret). https and a public address only.",
        examples=["https://hooks.example.com/squash"],
    )

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, data: Any) -> Any:
        return integral_floats_as_ints(data)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"label key {key!r} must match {LABEL_KEY_RE.pattern}")
            if len(item) > 255:
                raise ValueError(f"label {key!r} value longer than 255 characters")
        return value


class JobSpec(_Strict):
    """What a worker runs: the stored `jobs.spec` (the request without its routing fields:
    labels, priority, device, webhook; the recipe with every default filled in). The worker
    validates it again before it does anything (a row written by an older API, or by hand)."""

    kind: Literal["compress", "evaluate", "search"] = "compress"
    search: SearchSpec | None = None
    model: ModelSource
    recipe: list[StageIn] = Field(default_factory=list, max_length=16)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @classmethod
    def of_request(cls, body: JobCreate, recipe: list[dict[str, Any]]) -> JobSpec:
        fields = body.model_dump(
            mode="json", exclude={"labels", "priority", "device", "webhook_url"}
        )
        return cls.model_validate({**fields, "recipe": recipe})


class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str
    events: str
    artifacts: str
    report: str
    cancel: str
    children: str | None = Field(
        default=None, description="A search's candidates: GET /v1/jobs?parent_id=…"
    )


class JobRead(BaseModel):
    id: uuid.UUID
    kind: Literal["compress", "evaluate", "search"] = "compress"
    parent_id: uuid.UUID | None = Field(
        default=None, description="The search this job is a candidate of"
    )
    state: JobState
    device: str
    queue: str = Field(
        description="The worker pool it was sent to: the smallest of its device whose memory "
        "fits the job's plan (the plan is in the job's first event)"
    )
    priority: int
    queue_position: int | None = Field(
        default=None,
        description="On GET /v1/jobs/{id} while queued: jobs of its pool served before it "
        "(higher priority, then older; any tenant's), 0 = next",
    )
    labels: dict[str, str]
    # Stored JSON the API validated on submission (and the worker filled through typed
    # models): documented precisely, not parsed again on every status read.
    model: Annotated[dict[str, Any], DocumentedAs(ModelSource)]
    recipe: Annotated[
        list[dict[str, Any]],
        DocumentedAs(list[StageIn]),
        Field(description="The stages with every default filled in"),
    ]
    stage: str | None
    progress: float = Field(description="0-100")
    progress_detail: dict[str, Any] | None = Field(
        default=None,
        description="What the running stage reports beside the percentage; a distill stage: "
        "step, max_steps, loss, tokens_per_second, eta_seconds, checkpoint_step, "
        "resumed_from_step; a calibrated layer-wise stage (GPTQ, AWQ, SparseGPT, Wanda, "
        "W8A8, static FP8): layer, layers, eta_seconds",
    )
    attempts: int
    max_attempts: int
    error: JobError | None
    metrics: Annotated[
        dict[str, Any] | None,
        DocumentedAs(JobSummary | None),
        Field(description="The job's headline figures once it succeeded (the report has all)"),
    ]
    webhook_url: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks


class JobPage(BaseModel):
    items: list[JobRead]
    next_cursor: str | None


class EventRead(BaseModel):
    id: int
    created_at: datetime
    kind: str
    state: str | None
    message: str
    data: dict[str, Any] | None


class EventPage(BaseModel):
    items: list[EventRead]
    next_after: int | None
