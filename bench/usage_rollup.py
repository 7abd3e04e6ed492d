"""How long GET /usage's query takes over 100k usage records (docs/gateway.md, Prices and budgets): the daily
rollups per user, key and model are a GROUP BY over ``usage_records`` rather than a table kept up to date, and
this measures whether that is fast enough. Also times a key's spend this month (the query run after each batch).

    .venv/bin/python bench/usage_rollup.py [--url postgresql+asyncpg://postgres@127.0.0.1/DB] [--records 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from common.usage import UsageRecord
from manager.db import engine as db_engine
from manager.prices import spent_this_month
from manager.usage import GroupBy, record_usage, usage_summary


async def run(url: str, n: int) -> None:
    await db_engine.upgrade(url)
    eng = db_engine.make_engine(url)
    sessions = db_engine.make_sessionmaker(eng)
    rng = random.Random(1)
    users = [uuid.uuid4() for _ in range(50)]
    keys = [(uuid.uuid4(), rng.choice(users)) for _ in range(200)]
    models = [f"model-{i}" for i in range(10)]
    now = datetime.now(UTC)
    start = time.perf_counter()
    async with sessions() as db:
        for base in range(0, n, 1000):
            batch = []
            for _ in range(min(1000, n - base)):
                key, user = rng.choice(keys)
                at = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
                batch.append(UsageRecord(request_id=uuid.uuid4().hex, at=at.timestamp(), key_id=key, user_id=user,
                                         model=rng.choice(models), prompt_tokens=rng.randint(10, 2000),
                                         completion_tokens=rng.randint(1, 1000), status=200))
            await record_usage(db, batch)
    print(f"inserted {n} records in {time.perf_counter() - start:.1f}s")
    async with sessions() as db:
        groupings = ([GroupBy.DAY], [GroupBy.DAY, GroupBy.MODEL],
                     [GroupBy.DAY, GroupBy.USER, GroupBy.KEY, GroupBy.MODEL])
        for by in groupings:
            times = []
            for _ in range(5):
                t = time.perf_counter()
                rows = await usage_summary(db, sa.true(), by, now - timedelta(days=30), None)
                times.append(time.perf_counter() - t)
            print(f"GET /usage by={','.join(g.value for g in by)} over 30 days: {len(rows)} rows, "
                  f"median {statistics.median(times) * 1000:.0f} ms")
        times = []
        for key, _ in keys[:20]:
            t = time.perf_counter()
            await spent_this_month(db, [key], now)
            times.append(time.perf_counter() - t)
        print(f"one key's spend this month: median {statistics.median(times) * 1000:.1f} ms")
    await eng.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=None)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.url or f"sqlite+aiosqlite:///{tmp}/bench.db", args.records))


if __name__ == "__main__":
    main()
