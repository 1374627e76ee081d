"""The embedded stack: SQLite + filesystem broker + local object store, the API and one worker
as child processes of one command. Production is the same code with other URLs."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.config import Settings
from app.db import session_scope
from app.queue import pool_queues


def embedded_secret(data_dir: Path) -> str:
    """The key that signs the local store's download links: generated on first start and kept
    in data_dir/secret-key (created 0600, never readable by others), so links survive a restart
    and nobody can forge one from a published default."""
    path = data_dir / "secret-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under a private name, then linked into place: the key file is never
        # seen empty or half-written, and if two processes race, the first link wins for both.
        draft = data_dir / f".secret-key.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def embedded_env(data_dir: Path, port: int) -> dict[str, str]:
    data_dir = data_dir.resolve()
    return {
        "DATABASE_URL": f"sqlite:///{data_dir / 'squash.db'}",
        "BROKER_URL": "filesystem://",
        "BROKER_FOLDER": str(data_dir / "broker"),
        "OBJECT_STORE_URL": f"file://{data_dir / 'objects'}",
        "WORK_DIR": str(data_dir / "work"),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SECRET_KEY": embedded_secret(data_dir),
        "DEFAULT_DEVICE": "cpu",
    }


def migrate(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    # A source checkout keeps migrations beside app/; images copy them to the working directory.
    candidates = [Path(__file__).resolve().parents[2], Path.cwd()]
    root = next((c for c in candidates if (c / "alembic.ini").is_file()), None)
    if root is None:
        raise FileNotFoundError("alembic.ini not found beside the package or in the cwd")
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url)
    command.upgrade(config, "head")


def bootstrap_key(settings: Settings, data_dir: Path) -> str:
    """Create the first API key on first start (printed once, kept in data_dir/api-key)."""
    from app.auth import repository as auth_repository
    from app.auth import service as auth_service

    key_file = data_dir / "api-key"
    with session_scope(settings.database_url) as session:
        if auth_repository.count_keys(session) and key_file.exists():
            return key_file.read_text().strip()
        issued = auth_service.create_key(session, tenant_name="default", name="embedded")
    key_file.write_text(issued.secret + "\n")
    key_file.chmod(0o600)
    return issued.secret


class EmbeddedStack:
    def __init__(
        self,
        data_dir: Path,
        port: int,
        log_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.env = {**os.environ, **embedded_env(self.data_dir, port), **(extra_env or {})}
        self.log_dir = log_dir or self.data_dir / "logs"
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings.model_validate(
            {k.lower(): v for k, v in embedded_env(self.data_dir, self.port).items()}
        )
        migrate(settings.database_url)
        key = bootstrap_key(settings, self.data_dir)
        self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "app.main:app_factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        # One worker for every pool: the embedded stack is one machine.
        self._spawn("worker", worker_command(pool_queues(Settings())))
        self._wait_ready()
        return key

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        )

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a process exited early; see {self.log_dir}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"API not ready after {timeout_s}s; see {self.log_dir}")

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def worker_command(queues: list[str], concurrency: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        # prefork: each job in a child process, so a crash (segfault, OOM kill) in a native
        # library takes the child, not the worker, and the message goes back to the queue.
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-Q",
        ",".join(queues),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
