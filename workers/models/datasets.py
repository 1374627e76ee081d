"""Text for calibration and evaluation, split so the two never share a token.

Split rule (recorded in the report): the corpus is tokenized once; the first 80% of tokens are
the calibration pool, the last 20% the evaluation pool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.jobs.state import ErrorCode
from workers.errors import JobFailure

CALIBRATION_SHARE = 0.8


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def builtin_text(name: str) -> str:
    if name != "pydoc-topics":
        raise JobFailure(ErrorCode.DATA_ERROR, f"unknown built-in corpus {name!r}")
    from pydoc_data.topics import topics

    # Python's own documentation topics: ~113k tokens of English, shipped with CPython.
    return "\n\n".join(topics[key] for key in sorted(topics))


def load_corpus(source: dict[str, Any], settings: Settings) -> Corpus:
    if source["kind"] == "builtin":
        return Corpus(source["name"], builtin_text(source["name"]))
    import boto3

    bucket, _, key = source["uri"].removeprefix("s3://").partition("/")
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region
    )
    try:
        found = client.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        raise JobFailure(ErrorCode.DATA_ERROR, f"cannot read {source['uri']}: {exc}") from exc
    # Held in memory whole: refuse an oversized file on its length, before reading a byte.
    if found["ContentLength"] > settings.max_dataset_bytes:
        found["Body"].close()
        raise JobFailure(
            ErrorCode.DATA_ERROR,
            f"{source['uri']} is {found['ContentLength'] / 1e6:.1f} MB, over this service's "
            f"limit of {settings.max_dataset_bytes / 1e6:.1f} MB (MAX_DATASET_BYTES)",
        )
    try:
        raw = found["Body"].read().decode("utf-8")
    except Exception as exc:
        raise JobFailure(ErrorCode.DATA_ERROR, f"cannot read {source['uri']}: {exc}") from exc
    if source.get("format") == "jsonl":
        field = source.get("text_field", "text")
        try:
            raw = "\n\n".join(json.loads(line)[field] for line in raw.splitlines() if line.strip())
        except (KeyError, json.JSONDecodeError, TypeError) as exc:
            raise JobFailure(
                ErrorCode.DATA_ERROR, f"{source['uri']}: each line needs a {field!r} string"
            ) from exc
    return Corpus(source["uri"], raw)


def split_tokens(token_ids: list[int]) -> tuple[list[int], list[int]]:
    """(calibration pool, evaluation pool): disjoint by construction."""
    cut = int(len(token_ids) * CALIBRATION_SHARE)
    return token_ids[:cut], token_ids[cut:]
