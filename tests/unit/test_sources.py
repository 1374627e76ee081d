from __future__ import annotations

import contextvars
import uuid
from pathlib import Path

import httpx
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from pydantic import ValidationError

from app.config import Settings
from app.errors import Forbidden
from app.source_policy import check_s3_uri, check_sources, remote_code_allowed
from app.sources import HuggingFaceModel, LocalModel, S3Model
from workers.errors import JobFailure, TransientFailure
from workers.formats.loader import trust_remote_code
from workers.models.sources import (
    check_remote_code,
    check_safe_directory,
    hub_failure,
    resolve_model,
)


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../b", " "])
def test_local_paths_cannot_escape(path: str) -> None:
    with pytest.raises(ValidationError):
        LocalModel(path=path)


@pytest.mark.parametrize("uri", ["http://x/y", "s3://UPPER/x", "s3:/x", "file:///etc"])
def test_s3_uris_are_checked(uri: str) -> None:
    with pytest.raises(ValidationError):
        S3Model(uri=uri)


def test_hf_repo_ids() -> None:
    assert HuggingFaceModel(repo_id="HuggingFaceTB/SmolLM2-135M").revision == "main"
    for bad in ("a/b/c", "../x", "a b"):
        with pytest.raises(ValidationError):
            HuggingFaceModel(repo_id=bad)


def test_pickle_only_checkpoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(JobFailure, match="pickle checkpoints"):
        check_safe_directory(tmp_path)


def test_symlink_out_of_allowed_dir_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape").symlink_to(tiny_model_dir)
    settings = Settings(model_dirs=(allowed,), work_dir=tmp_path / "work")
    with pytest.raises(JobFailure, match="not under any allow-listed"):
        resolve_model({"kind": "local", "path": "escape"}, settings, tmp_path)


def test_an_offline_worker_without_the_model_says_so(tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path / "work", hf_offline=True)
    source = {"kind": "huggingface", "repo_id": "nobody/nothing", "revision": "main"}
    with pytest.raises(JobFailure, match="not in the workers' cache and they run offline") as got:
        resolve_model(source, settings, tmp_path)
    assert got.value.code == "invalid_model"


def _hub_answer(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/x"))


@pytest.mark.parametrize(
    ("error", "offline", "verdict"),
    [
        (LocalEntryNotFoundError("no connection, nothing cached"), False, "retried"),
        (httpx.ConnectError("connection refused"), False, "retried"),
        (HfHubHTTPError("overloaded", response=_hub_answer(503)), False, "retried"),
        (HfHubHTTPError("slow down", response=_hub_answer(429)), False, "retried"),
        (LocalEntryNotFoundError("not cached"), True, "run offline"),
        (RepositoryNotFoundError("404", response=_hub_answer(404)), False, "no repository"),
        (GatedRepoError("401", response=_hub_answer(401)), False, "is gated"),
        (RevisionNotFoundError("404", response=_hub_answer(404)), False, "has no revision"),
    ],
)
def test_hub_failures_tell_a_missing_model_from_an_unreachable_hub(
    error: Exception, offline: bool, verdict: str
) -> None:
    """A Hub that cannot be reached is retried (TransientFailure), not reported as a bad model;
    a model that is not there fails with what to fix, not the Hub's raw text."""
    source = {"repo_id": "org/model", "revision": "main"}
    outcome = hub_failure(error, source, offline=offline)
    if verdict == "retried":
        assert isinstance(outcome, TransientFailure), outcome
        assert outcome.code == "source_unreachable" and "org/model" in str(outcome)
    else:
        assert isinstance(outcome, JobFailure) and outcome.code == "invalid_model"
        assert verdict in outcome.message, outcome.message


def _policy_settings(**overrides: object) -> Settings:
    return Settings(
        object_store_url="s3://artifacts-bucket/squash",
        source_s3_prefixes=("s3://inputs/shared/", "s3://inputs/tenants/{tenant}"),
        **overrides,
    )


def test_s3_sources_must_lie_under_an_allowed_root_and_never_in_the_store() -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    settings = _policy_settings()
    for uri in ("s3://inputs/shared/m", f"s3://inputs/tenants/{tenant}/data.jsonl"):
        check_s3_uri(uri, field="f", tenant_id=tenant, settings=settings)
    for uri in (
        f"s3://inputs/tenants/{other}/data.jsonl",  # another tenant's folder
        "s3://inputs/sharedX/m",  # a sibling that merely starts alike
        "s3://inputs/shared/../tenants/x",
        "s3://inputs/shared//m",
        "s3://artifacts-bucket/squash/job",
        "s3://artifacts-bucket",  # a parent of the store
    ):
        with pytest.raises(Forbidden) as caught:
            check_s3_uri(uri, field="model.uri", tenant_id=tenant, settings=settings)
        assert caught.value.code == "source_not_allowed" and caught.value.field == "model.uri"
        assert caught.value.status == 403  # policy, not a malformed request


def test_every_s3_string_in_a_request_is_checked_but_labels_are_free_text() -> None:
    settings = _policy_settings()
    body = {
        "model": {"kind": "builtin"},
        "labels": {"note": "s3://anything/goes"},
        "recipe": [{"method": "distill", "params": {"teacher": {"kind": "s3", "uri": "s3://x/y"}}}],
    }
    with pytest.raises(Forbidden) as caught:
        check_sources(body, tenant_id=uuid.uuid4(), settings=settings)
    assert caught.value.field == "recipe.0.params.teacher.uri"


def test_remote_code_needs_an_allow_listed_repo_pinned_to_that_commit() -> None:
    sha = "a" * 40
    settings = _policy_settings(trust_remote_code_repos=(f"org/model@{sha}",))
    assert remote_code_allowed("org/model", sha, settings)
    assert not remote_code_allowed("org/model", "main", settings)  # a branch can move
    assert not remote_code_allowed("org/other", sha, settings)
    asks = {"kind": "huggingface", "repo_id": "org/model", "trust_remote_code": True}
    check_sources({"model": asks | {"revision": sha}}, tenant_id=uuid.uuid4(), settings=settings)
    with pytest.raises(Forbidden, match="not allow-listed"):
        check_sources(
            {"model": asks | {"revision": "main"}}, tenant_id=uuid.uuid4(), settings=settings
        )


def test_own_code_is_refused_unless_allowed_and_then_trusted_only_in_that_job(
    tiny_model_dir: Path,
) -> None:
    sha = "b" * 40
    settings = _policy_settings(trust_remote_code_repos=(f"org/model@{sha}",))
    config = {"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}
    plain = {"kind": "local", "path": "x"}
    with pytest.raises(JobFailure, match="names its own code"):
        check_remote_code(tiny_model_dir, config, plain, settings)
    hub = {"kind": "huggingface", "repo_id": "org/model", "revision": sha}
    with pytest.raises(JobFailure):
        check_remote_code(tiny_model_dir, config, hub, settings)  # not asked for

    def allowed_job() -> bool:
        check_remote_code(tiny_model_dir, config, hub | {"trust_remote_code": True}, settings)
        return trust_remote_code()

    assert contextvars.copy_context().run(allowed_job) is True
    assert trust_remote_code() is False  # the next job starts untrusted
