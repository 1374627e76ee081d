"""`squash keys`: create, list and revoke API keys, written straight to the database the API
uses (operators' commands, not HTTP calls)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

EMBEDDED_DATA_DIR = Path(".squash")
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="An embedded stack's folder [default: DATABASE_URL if set, else ./.squash if it holds "
    "a stack, else the configured Postgres]",
)


@contextmanager
def _keys_session(data_dir: Path | None) -> Iterator[Any]:
    """A session on the database that holds the keys: the embedded stack's SQLite file when
    asked for (or when DATABASE_URL is unset and ./.squash holds one), else DATABASE_URL.
    A database that cannot be reached is one message, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from app.config import get_settings
    from app.db import session_scope

    folder = data_dir
    if folder is None and "DATABASE_URL" not in os.environ:
        folder = EMBEDDED_DATA_DIR if (EMBEDDED_DATA_DIR / "squash.db").is_file() else None
    if folder is not None and not (folder / "squash.db").is_file():
        raise click.ClickException(f"no embedded stack in {folder} (no squash.db there)")
    url = f"sqlite:///{(folder / 'squash.db').resolve()}" if folder else get_settings().database_url
    try:
        with session_scope(url) as session:
            yield session
    except OperationalError as exc:
        where = url.split("@")[-1]
        raise click.ClickException(
            f"cannot reach the key database at {where} ({exc.orig}).\nSet DATABASE_URL, or "
            "pass --data-dir for an embedded stack."
        ) from None


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (in the database the API uses)."""


@keys.command("create")
@click.option("--tenant", required=True)
@click.option("--name", default="default")
@data_dir_option
def keys_create(tenant: str, name: str, data_dir: Path | None) -> None:
    from app.auth import service

    with _keys_session(data_dir) as session:
        issued = service.create_key(session, tenant_name=tenant, name=name)
    click.echo(
        f"key id: {issued.id}\ntenant: {issued.tenant}\nsecret (shown once): {issued.secret}"
    )


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
@data_dir_option
def keys_revoke(key_id: uuid.UUID, data_dir: Path | None) -> None:
    from app.auth import service

    with _keys_session(data_dir) as session:
        revoked = service.revoke(session, key_id=key_id)
    click.echo("revoked" if revoked else "no such active key")
    if not revoked:
        raise SystemExit(1)


@keys.command("list")
@data_dir_option
def keys_list(data_dir: Path | None) -> None:
    from app.auth import repository

    with _keys_session(data_dir) as session:
        for key, tenant in repository.list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}  {tenant:20} {key.name:12} {key.prefix}…  {state}")
