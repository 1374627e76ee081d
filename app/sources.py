"""Where a job's model and data come from: typed, validated at submission, resolved by workers.

Pure pydantic: the API validates with these, workers resolve them (workers/models/sources.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

BUILTIN_MODELS = ("smollm2-135m-instruct",)
BUILTIN_CORPORA = ("pydoc-topics",)


@dataclass(frozen=True)
class TextForm:
    """A string that matches `pattern` and in which `forbidden` occurs nowhere. Two plain
    regular expressions rather than one with look-aheads: JSON Schema states them as `pattern`
    and `not: {pattern}`, and generators (schemathesis) build matching strings fast."""

    pattern: str
    forbidden: str
    message: str

    def check(self, value: str) -> str:
        if not re.search(self.pattern, value) or re.search(self.forbidden, value):
            raise ValueError(self.message)
        return value

    def schema(self) -> WithJsonSchema:
        return WithJsonSchema(
            {"type": "string", "pattern": self.pattern, "not": {"pattern": self.forbidden}}
        )


HF_REPO = TextForm(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$",
    r"\.\.",
    "must be a Hugging Face repo id like 'org/name'",
)
HF_REVISION = TextForm(
    r"^[A-Za-z0-9._/-]{1,128}$",
    r"\.\.|^/|//",
    "must be a branch, tag or commit (no '..' or empty segments)",
)
# A bucket, then segments that are neither empty, `.` nor `..` (what the source allow-list
# compares by prefix must be the path S3 reads).
S3_URI = TextForm(
    r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/\x00-\x20\x7f]+)*/?$",
    r"/\.\.?(/|$)",
    "must look like s3://bucket/prefix (lower-case bucket name; no empty, '.' or '..' segments)",
)
RELATIVE_PATH = TextForm(
    r"^[^/\x00][^\x00]*$",
    r"(^|/)\.\.(/|$)|^[\x00-\x20]*$",
    "must be a relative path inside an allow-listed models directory",
)

S3Uri = Annotated[str, AfterValidator(S3_URI.check), S3_URI.schema()]
RelativePath = Annotated[str, AfterValidator(RELATIVE_PATH.check), RELATIVE_PATH.schema()]
HubRepoId = Annotated[str, AfterValidator(HF_REPO.check), HF_REPO.schema()]
HubRevision = Annotated[str, AfterValidator(HF_REVISION.check), HF_REVISION.schema()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HuggingFaceModel(_Strict):
    kind: Literal["huggingface"] = "huggingface"
    repo_id: HubRepoId = Field(examples=["HuggingFaceTB/SmolLM2-135M-Instruct"])
    revision: HubRevision = "main"
    trust_remote_code: bool = Field(
        default=False,
        description="Run the model's own code (config auto_map). Refused unless an operator "
        "allow-listed this repo pinned to a commit, and `revision` is that commit.",
    )


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
