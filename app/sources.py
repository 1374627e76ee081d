"""Where a job's model and data come from: typed, validated at submission, resolved by workers.

Pure pydantic: the API validates with these, workers resolve them (workers/models/sources.py).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
S3_URI_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/[^\s]*)?$")
BUILTIN_MODELS = ("smollm2-135m-instruct",)
BUILTIN_CORPORA = ("pydoc-topics",)


def _check_s3_uri(value: str) -> str:
    if not S3_URI_RE.match(value):
        raise ValueError("must look like s3://bucket/prefix (lower-case bucket name)")
    return value


def _check_relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value.strip():
        raise ValueError("must be a relative path inside an allow-listed models directory")
    return value


S3Uri = Annotated[str, AfterValidator(_check_s3_uri)]
RelativePath = Annotated[str, AfterValidator(_check_relative_path)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HuggingFaceModel(_Strict):
    kind: Literal["huggingface"] = "huggingface"
    repo_id: str = Field(examples=["HuggingFaceTB/SmolLM2-135M-Instruct"])
    revision: str = Field(default="main", pattern=r"^[A-Za-z0-9._/-]{1,128}$")
    trust_remote_code: bool = Field(
        default=False,
        description="Run the model's own code (config auto_map). Refused unless an operator "
        "allow-listed this repo pinned to a commit, and `revision` is that commit.",
    )

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not HF_REPO_RE.match(value) or ".." in value:
            raise ValueError("must be a Hugging Face repo id like 'org/name'")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        if ".." in value or value.startswith("/") or "//" in value:
            raise ValueError("must be a branch, tag or commit (no '..' or empty segments)")
        return value


class S3Model(_Strict):
    kind: Literal["s3"] = "s3"
    uri: S3Uri = Field(description="s3://bucket/prefix holding config.json and *.safetensors")


class LocalModel(_Strict):
    kind: Literal["local"] = "local"
    path: RelativePath = Field(description="Directory (or .gguf file) under an allow-listed dir")
    gguf_file: str | None = Field(
        default=None, pattern=r"^[^/]+\.gguf$", description="GGUF file name inside `path`"
    )


class BuiltinModel(_Strict):
    """Models shipped inside Python packages, so demos and tests need no network."""

    kind: Literal["builtin"] = "builtin"
    name: Literal["smollm2-135m-instruct"]


ModelSource = Annotated[
    HuggingFaceModel | S3Model | LocalModel | BuiltinModel, Field(discriminator="kind")
]


class BuiltinDataset(_Strict):
    kind: Literal["builtin"] = "builtin"
    name: Literal["pydoc-topics"] = "pydoc-topics"


class S3Dataset(_Strict):
    kind: Literal["s3"] = "s3"
    uri: S3Uri
    format: Literal["text", "jsonl"] = "text"
    text_field: str = Field(default="text", description="JSONL field holding the text")


DatasetSource = Annotated[BuiltinDataset | S3Dataset, Field(discriminator="kind")]
