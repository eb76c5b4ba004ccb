"""The conversions' SQL against a real PostgreSQL holding many finished files."""

from psycopg import sql

from errands.conversions import store
from errands.core.db import Pool

# Finished files pile up; the few still waiting are what the supervisor's gauge counts.
FILL = """
    INSERT INTO uploads (id) SELECT gen_random_uuid() FROM generate_series(1, 5000);
    INSERT INTO upload_files (id, upload_id, position, filename, kind, size_bytes, original_key,
                              status, due_at)
    SELECT gen_random_uuid(), u.id, p, 'f.pdf', 'pdf', 1000, u.id || '/' || p,
           CASE WHEN p = 1 AND random() < 0.02 THEN 'queued' ELSE 'done' END, NULL
      FROM uploads AS u, generate_series(1, 10) AS p;
    UPDATE upload_files SET due_at = now() WHERE status = 'queued';
    ANALYZE
"""


async def test_counting_waiting_files_reads_only_the_due_ones(pool: Pool) -> None:
    async with pool.connection() as conn:
        for statement in FILL.split(";"):
            await conn.execute(statement)  # type: ignore[arg-type]
        explained = await conn.execute(sql.SQL("EXPLAIN {}").format(sql.SQL(store.COUNT_WAITING)))
        plan = "\n".join(row["QUERY PLAN"] for row in await explained.fetchall())
        counted = await conn.execute("SELECT count(*) FROM upload_files WHERE status = 'queued'")
        queued = (await counted.fetchone() or {})["count"]
    assert "upload_files_due" in plan and "Seq Scan" not in plan, plan
    assert await store.count_waiting(pool) == queued > 0
