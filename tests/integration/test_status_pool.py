"""StatusPool (app/status_pool.py) against the machine's Postgres: the size cap, hand-over to
waiters, timeouts, cancelled waiters, and connections that died or came back mid-transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from app.status_pool import PoolTimeout, StatusPool
from tests.support.services import ADMIN_DSN, create_database, drop_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def conninfo() -> Iterator[str]:
    name, url = create_database()
    try:
        yield url.replace("postgresql+psycopg://", "postgresql://", 1)
    finally:
        drop_database(name, url)


def terminate(pid: int) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_never_opens_more_than_max_size_and_serves_every_waiter(conninfo: str) -> None:
    async def main() -> tuple[list[int], int]:
        pool = StatusPool(conninfo, max_size=3, timeout_s=10)

        async def one() -> int:
            async with pool.connection() as conn:
                row = await (
                    await conn.execute("SELECT pg_backend_pid(), pg_sleep(0.01)")
                ).fetchone()
                assert row is not None
                return int(row[0])

        pids = await asyncio.gather(*[one() for _ in range(60)])
        size = pool.size
        await pool.close()
        return pids, size

    pids, size = asyncio.run(main())
    assert len(pids) == 60
    assert len(set(pids)) <= 3
    assert size <= 3


def test_a_waiter_times_out_and_loses_no_connection(conninfo: str) -> None:
    async def main() -> None:
        pool = StatusPool(conninfo, max_size=1, timeout_s=0.3)
        held = await pool.getconn()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.getconn()
        waited = time.monotonic() - started
        assert 0.25 <= waited < 2, waited
        pool.putconn(held)
        # The timed-out waiter must not have kept the returned connection.
        again = await asyncio.wait_for(pool.getconn(), 1)
        assert again is held
        assert pool.size == 1
        pool.putconn(again)
        await pool.close()

    asyncio.run(main())


def test_a_cancelled_waiter_loses_no_connection(conninfo: str) -> None:
    async def main() -> None:
        pool = StatusPool(conninfo, max_size=1, timeout_s=5)
        held = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        pool.putconn(held)
        assert await asyncio.wait_for(pool.getconn(), 1) is held  # not given to the dead waiter
        await pool.close()

    asyncio.run(main())


def test_a_returned_connection_goes_to_the_oldest_waiter(conninfo: str) -> None:
    async def main() -> list[int]:
        pool = StatusPool(conninfo, max_size=1, timeout_s=5)
        held = await pool.getconn()
        order: list[int] = []

        async def wait(i: int) -> None:
            conn = await pool.getconn()
            order.append(i)
            pool.putconn(conn)

        tasks = [asyncio.create_task(wait(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        pool.putconn(held)
        await asyncio.gather(*tasks)
        await pool.close()
        return order

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_a_killed_connection_is_replaced_and_wakes_a_waiter(conninfo: str) -> None:
    async def main() -> None:
        pool = StatusPool(conninfo, max_size=1, timeout_s=5)
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        waiter = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0.05)
        terminate(pid)
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
        pool.putconn(conn)  # broken: closed, and the waiter may open a new one
        fresh = await asyncio.wait_for(waiter, 5)
        assert fresh.info.backend_pid != pid
        assert (await (await fresh.execute("SELECT 1")).fetchone()) == (1,)
        assert pool.size == 1
        pool.putconn(fresh)
        await pool.close()

    asyncio.run(main())


def test_check_drops_idle_connections_that_died(conninfo: str) -> None:
    async def main() -> None:
        pool = StatusPool(conninfo, max_size=2, timeout_s=5)
        first, second = await pool.getconn(), await pool.getconn()
        dead_pid = first.info.backend_pid
        pool.putconn(first)
        pool.putconn(second)
        terminate(dead_pid)
        await asyncio.sleep(0.1)
        await pool.check()
        assert pool.size == 1
        # Both requests succeed: the dead connection is not handed out.
        for _ in range(2):
            async with pool.connection() as conn:
                assert conn.info.backend_pid != dead_pid
                await conn.execute("SELECT 1")
        await pool.close()

    asyncio.run(main())


def test_a_connection_returned_inside_a_transaction_is_closed(conninfo: str) -> None:
    async def main() -> None:
        pool = StatusPool(conninfo, max_size=2, timeout_s=5)
        conn = await pool.getconn()
        await conn.execute("BEGIN")
        pool.putconn(conn)
        assert conn.closed
        assert pool.size == 0
        await pool.close()

    asyncio.run(main())


def test_a_closed_pool_refuses(conninfo: str) -> None:
    async def main() -> None:
        pool = StatusPool(conninfo, max_size=1, timeout_s=5)
        async with pool.connection():
            pass
        await pool.close()
        assert pool.size == 0
        with pytest.raises(PoolTimeout):
            await pool.getconn()

    asyncio.run(main())
