"""Engine, sessions and the declarative Base shared by every table."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from anyio import CapacityLimiter, to_thread
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.status_pool import StatusPool

if TYPE_CHECKING:
    from app.config import Settings

T = TypeVar("T")

# Stable constraint names, so migrations can refer to them (STYLE 15).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on Postgres and SQLite alike (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


# Seconds to wait for a connection (new or pooled): a down database answers 503 quickly.
CONNECT_TIMEOUT_S = 5


class PoolSizes(NamedTuple):
    """How one process's Postgres connection budget is shared between its pools."""

    orm: int  # sync SQLAlchemy: threadpool routes, workers, the reaper and the webhook outbox
    status: int  # raw psycopg on the event loop: job-status polls and API-key lookups

    @classmethod
    def split(cls, connections: int) -> PoolSizes:
        orm = max(1, connections // 2)
        return cls(orm, max(1, connections - orm))


# Set once at process start from Settings.db_connections_per_process (create_app, the worker's
# Celery app). Process-wide because pools are: every engine of this process shares the budget.
_pool_sizes = PoolSizes.split(24)
_pre_ping = True


def set_connection_budget(connections_per_process: int, *, pre_ping: bool = True) -> None:
    """`pre_ping`: test each pooled connection with a round trip before use. Workers keep it
    (they hold connections idle for minutes between a job's writes); the API turns it off: a
    request is short, and SQLAlchemy drops the whole pool on the first disconnect error, so
    after a Postgres restart one request answers 503 instead of every request paying a
    round trip."""
    global _pool_sizes, _pre_ping
    _pool_sizes = PoolSizes.split(connections_per_process)
    _pre_ping = pre_ping


def pool_sizes() -> PoolSizes:
    return _pool_sizes


def get_engine(url: str) -> Engine:
    return _engine(url, _pool_sizes.orm, _pre_ping)


@lru_cache(maxsize=8)
def _engine(url: str, pool_size: int, pre_ping: bool) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    # No overflow: the budget is a hard cap (Postgres refuses clients past max_connections,
    # which is worse than a request waiting a few ms for a pooled connection).
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        # WAL lets the API read while the worker writes; busy_timeout waits out writers.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return _sessionmaker(get_engine(url))


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


class SessionRunner:
    """Runs an API route's ORM work on a worker thread with a Session of its own, closed (its
    connection back in the pool) before the thread is released.

    Why not a `Depends` session and a sync route: FastAPI validates a sync route's response on
    another threadpool call before the dependency closes the session, so under load every
    thread could wait for a pooled connection while each connection waited for a thread to
    finish its request: a deadlock until the pool timeout (found by bench/api_load.py).
    With one thread call per unit of work, a connection is never held while waiting for a
    thread, and at most `threads` (= the ORM pool's size) calls ask for connections at once.
    """

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.limiter = CapacityLimiter(threads)

    async def run(self, work: Callable[[Session], T], *, commit: bool = False) -> T:
        """`work(session)` on a worker thread; `commit=True` commits what it did before the
        thread is released (work that must commit part-way commits itself)."""
        return await to_thread.run_sync(self._in_session, work, commit, limiter=self.limiter)

    def _in_session(self, work: Callable[[Session], T], commit: bool) -> T:
        session = get_sessionmaker(self.url)()
        try:
            result = work(session)
            if commit:
                session.commit()
            return result
        finally:
            session.rollback()  # what the work did not commit is dropped
            session.close()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error. Used by workers and the reaper."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def make_status_pool(settings: Settings) -> StatusPool | None:
    """The event loop's pool for the API's hottest reads: job status and API keys (Postgres
    only; with SQLite those reads go through the ORM on a thread). See app/status_pool."""
    url = settings.database_url
    if not url.startswith("postgresql"):
        return None
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    # While Postgres is down a request waits this long for a connection, then answers 503.
    return StatusPool(conninfo, max_size=_pool_sizes.status, timeout_s=CONNECT_TIMEOUT_S)
