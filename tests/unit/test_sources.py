from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.sources import HuggingFaceModel, LocalModel, S3Model
from workers.errors import JobFailure
from workers.models.sources import check_safe_directory, resolve_model


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


def test_unreachable_hub_model_fails_with_invalid_model(tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path / "work", hf_offline=True)
    source = {"kind": "huggingface", "repo_id": "nobody/nothing", "revision": "main"}
    with pytest.raises(JobFailure, match="cannot fetch nobody/nothing@main") as caught:
        resolve_model(source, settings, tmp_path)
    assert caught.value.code == "invalid_model"
