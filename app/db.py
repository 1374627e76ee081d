"""Engine, sessions and the declarative Base shared by every table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from app.config import Settings

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


# At least as many pooled connections as the threadpool that runs sync routes has threads (40 in
# Starlette): with fewer, overflow connections open and close on nearly every request under load.
POOL_SIZE = 40
POOL_OVERFLOW = 10
# Seconds to wait for a connection (new or pooled): a down database answers 503 quickly.
CONNECT_TIMEOUT_S = 5


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=CONNECT_TIMEOUT_S,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_conn.cursor()
        # WAL lets the API read while the worker writes; busy_timeout waits out writers.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


@lru_cache(maxsize=8)
def get_async_sessionmaker(url: str) -> async_sessionmaker[AsyncSession]:
    """The API's hot read paths (auth, job status) run on the event loop: no threadpool hop
    and no thread holding a pooled connection (see bench/status_load.py)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://", 1))
        _sqlite_pragmas(engine.sync_engine)
    else:
        # No pre-ping here: it doubles the round trips of a one-query request; a connection
        # that died is discarded when its query fails, and recycled every 30 minutes anyway.
        engine = create_async_engine(
            url,
            pool_size=POOL_SIZE,
            pool_recycle=1800,
            pool_timeout=CONNECT_TIMEOUT_S,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
    return async_sessionmaker(engine, expire_on_commit=False)


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


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


async def open_status_pool(settings: Settings) -> AsyncConnectionPool | None:
    """A raw psycopg pool for the job-status read path (Postgres only; see jobs/repository)."""
    url = settings.database_url
    if not url.startswith("postgresql"):
        return None
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = AsyncConnectionPool(
        conninfo,
        min_size=2,
        max_size=POOL_SIZE,
        open=False,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        # While Postgres is down a request waits this long for a connection, then answers 503.
        timeout=CONNECT_TIMEOUT_S,
    )
    await pool.open()
    return pool
