"""Scratch folders of dead attempts: `<work_dir>/jobs/<job id>-<generation>` holds a running
attempt's model copy, checkpoints and artifact before upload (tens of GB for a large model). The
attempt removes it when it ends; a killed worker cannot. A worker sweeps them when it starts and
before each job it claims: a folder is kept only while its job is leased at that generation (the
attempt may be alive, here or in another worker sharing the folder), so what a dead attempt left
goes as soon as the job moves on (re-queued, finished, cancelled) or its row is gone.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import structlog
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.db import session_scope
from app.jobs import repository

log = structlog.get_logger()


def scratch_dir(settings: Settings, job_id: uuid.UUID, generation: int) -> Path:
    return Path(settings.work_dir) / "jobs" / f"{job_id}-{generation}"


def _attempt(folder: Path) -> tuple[uuid.UUID, int] | None:
    job_id, _, generation = folder.name.rpartition("-")
    try:
        return uuid.UUID(job_id), int(generation)
    except ValueError:
        return None


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def sweep_scratch(settings: Settings) -> dict[str, int]:
    """Remove the scratch folders no live attempt can own; returns what went."""
    root = Path(settings.work_dir) / "jobs"
    folders = {f: _attempt(f) for f in root.iterdir() if f.is_dir()} if root.is_dir() else {}
    attempts = {f: a for f, a in folders.items() if a is not None}
    if not attempts:
        return {"folders": 0, "bytes": 0}
    with session_scope(settings.database_url) as session:
        leased = repository.leased_generations(session, [a[0] for a in attempts.values()])
    removed = freed = 0
    for folder, (job_id, generation) in attempts.items():
        if leased.get(job_id) == generation:
            continue
        size = _size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed, freed = removed + 1, freed + size
    if removed:
        log.info("scratch.swept", folders=removed, bytes=freed)
    return {"folders": removed, "bytes": freed}


def sweep_quietly(settings: Settings) -> None:
    """The sweep where it must not stop anything (a worker starting, a job starting): a
    database or disk error is logged, and the next start or claim sweeps again."""
    try:
        sweep_scratch(settings)
    except (OSError, SQLAlchemyError):
        log.warning("scratch.sweep_failed", exc_info=True)
