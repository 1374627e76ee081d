"""StatusPool: the asyncio connection pool behind GET /v1/jobs/{id}, the endpoint every client
polls.

Why not psycopg_pool's AsyncConnectionPool (used here before): it takes an asyncio.Lock on every
getconn and putconn, and asyncio's lock hands itself over one waiter per event-loop iteration.
Under the 500-client load (bench/api_load.py) a few hundred polls queued on that lock while the
pool's connections sat idle: polls waited p50 60-200 ms, p95 600-800 ms for a connection that
was each held ~5 ms. On one event loop nothing needs a lock: taking and giving back a connection
never awaits, so a returned connection goes straight to the oldest waiter.

Autocommit connections, opened on demand up to `max_size`. A connection is given back only if it
is idle and open; anything else (a broken connection, one returned mid-query by a cancelled
request) is closed, and a waiter is woken to open a replacement.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus


class PoolTimeout(Exception):
    """No connection within the pool timeout (Postgres down or every connection busy)."""


class StatusPool:
    def __init__(self, conninfo: str, *, max_size: int, timeout_s: float) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.conninfo = conninfo
        self.max_size = max_size
        self.timeout_s = timeout_s
        self._idle: deque[AsyncConnection] = deque()
        # Each waiter's future gets a connection, or None: "try again" (one was discarded).
        self._waiters: deque[asyncio.Future[AsyncConnection | None]] = deque()
        self._size = 0  # connections open or being opened
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        conn = await self.getconn()
        try:
            yield conn
        finally:
            self.putconn(conn)

    async def getconn(self) -> AsyncConnection:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._closed:
                raise PoolTimeout("the status pool is closed")
            while self._idle:
                conn = self._idle.pop()  # the most recently used: warm, and lets the rest idle
                if not conn.closed:
                    return conn
                self._size -= 1
            if self._size < self.max_size:
                return await self._open(deadline)
            waited = await self._wait(deadline)
            if waited is not None:
                return waited

    def putconn(self, conn: AsyncConnection) -> None:
        if self._closed or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            self._discard(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that timed out or was cancelled is skipped
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def check(self) -> None:
        """Close idle connections that no longer answer (after a Postgres restart), so the
        next requests open fresh ones instead of each failing on a dead connection."""
        idle, self._idle = list(self._idle), deque()
        for conn in idle:
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), self.timeout_s)
            except Exception:  # noqa: BLE001 - any failure means: do not reuse it
                self._discard(conn)
            else:
                self.putconn(conn)

    async def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolTimeout("the status pool is closed"))
        idle, self._idle = list(self._idle), deque()
        for conn in idle:
            await conn.close()
            self._size -= 1

    async def _open(self, deadline: float) -> AsyncConnection:
        self._size += 1  # reserved before the await, so concurrent callers respect max_size
        try:
            return await AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=max(1, round(deadline - time.monotonic())),
            )
        except BaseException:
            self._size -= 1
            self._wake_one()  # a waiter may open the connection this one could not
            raise

    async def _wait(self, deadline: float) -> AsyncConnection | None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[AsyncConnection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled after a connection was handed over but before this task resumed.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                conn = waiter.result()
                if conn is not None:
                    self.putconn(conn)
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[AsyncConnection | None]) -> None:
        if not waiter.done():
            waiter.set_exception(PoolTimeout(f"no database connection within {self.timeout_s:g} s"))

    def _discard(self, conn: AsyncConnection) -> None:
        self._size -= 1
        if not conn.closed:
            # close() of an async connection only closes the socket: no round trip to await.
            conn.pgconn.finish()
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # room for one more connection: it opens it
                return
