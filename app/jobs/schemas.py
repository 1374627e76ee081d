"""Request and response bodies of /v1/jobs (pydantic; kept apart from the ORM)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.jobs.state import JobState
from app.recipes import StageIn
from app.sources import BuiltinDataset, DatasetSource, ModelSource

LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")

DEFAULT_PROMPTS = [
    "The Python programming language is",
    "To open a file for reading, use",
    "A list comprehension is",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationSpec(_Strict):
    dataset: DatasetSource = Field(default_factory=BuiltinDataset)
    num_samples: int = Field(default=64, ge=1, le=4096)
    max_seq_length: int = Field(default=512, ge=16, le=8192)


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

    @model_validator(mode="after")
    def _stride_fits(self) -> EvaluationSpec:
        if self.stride is not None and self.stride > self.context_length:
            raise ValueError("stride must not exceed context_length")
        return self


class JobCreate(_Strict):
    model: ModelSource
    recipe: list[StageIn] = Field(max_length=16)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    device: Literal["cpu", "gpu"] | None = Field(
        default=None, description="Which worker pool runs it; null = the server's default"
    )
    priority: int = Field(default=5, ge=0, le=9, description="9 is served first")
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"label key {key!r} must match {LABEL_KEY_RE.pattern}")
            if len(item) > 255:
                raise ValueError(f"label {key!r} value longer than 255 characters")
        return value


class JobError(BaseModel):
    code: str
    message: str


class JobLinks(BaseModel):
    self: str
    events: str
    artifacts: str
    report: str
    cancel: str


class JobRead(BaseModel):
    id: uuid.UUID
    state: JobState
    device: str
    priority: int
    labels: dict[str, str]
    model: dict[str, Any]
    recipe: list[dict[str, Any]]
    stage: str | None
    progress: float = Field(description="0-100")
    progress_detail: dict[str, Any] | None = Field(
        default=None,
        description="What the running stage reports beside the percentage; a distill stage: "
        "step, max_steps, loss, tokens_per_second, eta_seconds, checkpoint_step, "
        "resumed_from_step",
    )
    attempts: int
    max_attempts: int
    error: JobError | None
    metrics: dict[str, Any] | None
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


class ArtifactRead(BaseModel):
    path: str
    size: int
    sha256: str
    url: str
    url_expires_at: datetime


class ArtifactList(BaseModel):
    job_id: uuid.UUID
    manifest_url: str
    items: list[ArtifactRead]
