"""The conversions' SQL against a real PostgreSQL: the queue gauge and upload retention."""

import uuid
from datetime import timedelta

import pytest
from psycopg import sql

from errands.conversions import store
from errands.core.db import Pool
from errands.core.resources import Resources
from errands.core.storage import StoredFileMissing

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


async def test_retention_deletes_finished_uploads_past_it_with_their_files(
    resources: Resources,
) -> None:
    pool, storage = resources.pool, resources.storage
    uploads = {}
    for name in ("old finished", "old unfinished", "new finished"):
        upload_id = uuid.uuid4()
        writer = await storage.open_write(f"uploads/{upload_id}/f/original.png")
        await writer.write(b"png")
        await writer.commit()
        await store.create_upload(
            pool,
            upload_id,
            [store.NewFile(uuid.uuid4(), "a.png", "png", 3, f"uploads/{upload_id}/f/original.png")],
        )
        uploads[name] = upload_id
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET created_at = now() - interval '31 days' WHERE id = ANY(%s)",
            [[uploads["old finished"], uploads["old unfinished"]]],
        )
        await conn.execute(
            "UPDATE upload_files SET status = 'done', due_at = NULL WHERE upload_id = ANY(%s)",
            [[uploads["old finished"], uploads["new finished"]]],
        )

    assert await store.expire_uploads(pool, storage, timedelta(days=30), limit=10) == 1
    assert await store.files_of_upload(pool, uploads["old finished"]) is None
    with pytest.raises(StoredFileMissing):
        async with storage.local_copy(f"uploads/{uploads['old finished']}/f/original.png"):
            pass
    for kept in ("old unfinished", "new finished"):
        assert await store.files_of_upload(pool, uploads[kept]) is not None
        async with storage.local_copy(f"uploads/{uploads[kept]}/f/original.png"):
            pass
    assert await store.expire_uploads(pool, storage, timedelta(days=30), limit=10) == 0
