"""The key that signs the local store's download links: the embedded stack makes its own per data
dir (0600, stable across restarts), and an API server with a local store refuses a published one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.cli.embedded import embedded_env, embedded_secret
from app.config import KNOWN_DEFAULT_SECRETS, Settings, get_settings
from app.main import app_factory, refuse_default_secret


def test_embedded_stack_generates_a_private_secret_per_data_dir(tmp_path: Path) -> None:
    first = embedded_secret(tmp_path / "a")
    path = tmp_path / "a" / "secret-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 40 and first not in KNOWN_DEFAULT_SECRETS
    assert embedded_secret(tmp_path / "a") == first  # a restart keeps its links valid
    assert embedded_secret(tmp_path / "b") != first
    assert embedded_env(tmp_path / "a", 8000)["SECRET_KEY"] == first


@pytest.mark.parametrize("secret", sorted(KNOWN_DEFAULT_SECRETS))
def test_a_server_signing_links_refuses_a_published_secret(
    tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBJECT_STORE_URL", f"file://{tmp_path}")
    monkeypatch.setenv("SECRET_KEY", secret)
    get_settings.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="SECRET_KEY is a published default"):
            app_factory()  # what `uvicorn --factory app.main:app_factory` runs
    finally:
        get_settings.cache_clear()
    local = Settings(object_store_url=f"file://{tmp_path}", secret_key=secret)
    # S3 presigns its own links: the key signs nothing there.
    refuse_default_secret(local.model_copy(update={"object_store_url": "s3://bucket/prefix"}))
    refuse_default_secret(local.model_copy(update={"secret_key": "a-random-value-123"}))
