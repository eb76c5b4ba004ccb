"""The SQL of conversions: uploads, their files (the claimable rows) and the PNGs made of them,
and their lifecycle (deletion, retention)."""

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from errands.conversions.convert import OutputQuota
from errands.core import claims, delivery, paging
from errands.core.db import Pool
from errands.core.storage import Storage

__all__ = [
    "CHANNEL",
    "TABLE",
    "Image",
    "ListedUpload",
    "NewFile",
    "OutputQuotaExceeded",
    "StoredFile",
    "count_waiting",
    "create_upload",
    "delete_upload",
    "expire_orphaned_files",
    "expire_uploads",
    "fail_file",
    "files_of_upload",
    "finish_file",
    "is_stored_key",
    "list_uploads",
    "output_quota_left",
    "requeue_file",
    "start_file",
]

TABLE = "upload_files"
CHANNEL = "errands_conversions"

Connection = psycopg.AsyncConnection[dict[str, Any]]


@dataclass(frozen=True)
class NewFile:
    id: uuid.UUID
    filename: str
    kind: str
    size_bytes: int
    original_key: str


@dataclass(frozen=True)
class Image:
    page: int
    storage_key: str
    width: int
    height: int
    size_bytes: int
    preview_key: str | None


@dataclass(frozen=True)
class StoredFile:
    id: uuid.UUID
    filename: str
    kind: str
    size_bytes: int
    original_key: str
    status: str
    error: str | None
    attempts: int
    images: list[Image]


INSERT_UPLOAD = """
    INSERT INTO uploads (id, callback_url)
    VALUES (%(id)s, %(callback_url)s)
"""

# Due at once: the supervisor claims it as soon as the upload commits.
INSERT_FILE = """
    INSERT INTO upload_files (id, upload_id, position, filename, kind, size_bytes, original_key,
                              due_at)
    VALUES (%(id)s, %(upload_id)s, %(position)s, %(filename)s, %(kind)s, %(size_bytes)s,
            %(original_key)s, now())
"""


async def create_upload(
    pool: Pool, upload_id: uuid.UUID, files: Sequence[NewFile], callback_url: str | None = None
) -> None:
    """The upload and its files in one transaction, waking the supervisors when it commits."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(INSERT_UPLOAD, {"id": upload_id, "callback_url": callback_url})
        async with conn.cursor() as cursor:
            await cursor.executemany(
                INSERT_FILE,
                [
                    {
                        "id": file.id,
                        "upload_id": upload_id,
                        "position": position,
                        "filename": file.filename,
                        "kind": file.kind,
                        "size_bytes": file.size_bytes,
                        "original_key": file.original_key,
                    }
                    for position, file in enumerate(files)
                ],
            )
        await claims.notify(conn, CHANNEL)


UPLOAD_EXISTS = """
    SELECT 1 FROM uploads WHERE id = %(id)s
"""

FILES_OF_UPLOAD = """
    SELECT f.id, f.filename, f.kind, f.size_bytes, f.original_key, f.status, f.error, f.attempts,
           coalesce(
               jsonb_agg(
                   jsonb_build_object('page', i.page, 'storage_key', i.storage_key,
                                      'width', i.width, 'height', i.height,
                                      'size_bytes', i.size_bytes, 'preview_key', i.preview_key)
                   ORDER BY i.page
               ) FILTER (WHERE i.page IS NOT NULL),
               '[]'::jsonb
           ) AS images
      FROM upload_files f
      LEFT JOIN upload_images i ON i.file_id = f.id
     WHERE f.upload_id = %(id)s
     GROUP BY f.id
     ORDER BY f.position
"""


async def files_of_upload(pool: Pool, upload_id: uuid.UUID) -> list[StoredFile] | None:
    """The upload's files in upload order with their PNGs in page order; None: no such upload."""
    async with pool.connection() as conn:
        cursor = await conn.execute(UPLOAD_EXISTS, {"id": upload_id})
        if await cursor.fetchone() is None:
            return None
        cursor = await conn.execute(FILES_OF_UPLOAD, {"id": upload_id})
        rows = await cursor.fetchall()
    return [
        StoredFile(
            id=row["id"],
            filename=row["filename"],
            kind=row["kind"],
            size_bytes=row["size_bytes"],
            original_key=row["original_key"],
            status=row["status"],
            error=row["error"],
            attempts=row["attempts"],
            images=[Image(**image) for image in row["images"]],
        )
        for row in rows
    ]


# Only files Errands recorded are served, whatever else lies in the storage.
IS_STORED_KEY = """
    SELECT EXISTS (SELECT 1 FROM upload_files WHERE original_key = %(key)s)
        OR EXISTS (SELECT 1 FROM upload_images WHERE storage_key = %(key)s)
        OR EXISTS (SELECT 1 FROM upload_images WHERE preview_key = %(key)s) AS stored
"""


async def is_stored_key(pool: Pool, key: str) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute(IS_STORED_KEY, {"key": key})
        row = await cursor.fetchone()
    return bool(row and row["stored"])


START_FILE = """
    UPDATE upload_files
       SET status = 'processing',
           attempts = attempts + 1,
           started_at = now()
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
 RETURNING attempts
"""


async def start_file(pool: Pool, file_id: uuid.UUID, owner: str) -> int | None:
    """Mark the file processing and count the attempt; None if this worker lost the lease."""
    async with pool.connection() as conn:
        cursor = await conn.execute(START_FILE, {"id": file_id, "owner": owner})
        row = await cursor.fetchone()
    return None if row is None else int(row["attempts"])


DELETE_IMAGES = """
    DELETE FROM upload_images WHERE file_id = %(id)s
"""

INSERT_IMAGE = """
    INSERT INTO upload_images (file_id, page, storage_key, width, height, size_bytes, preview_key)
    VALUES (%(file_id)s, %(page)s, %(storage_key)s, %(width)s, %(height)s, %(size_bytes)s,
            %(preview_key)s)
"""

# What the upload's other files produced (a retried file replaces its own images).
OUTPUT_OF_UPLOAD = """
    SELECT count(i.page) AS pages,
           coalesce(sum(i.width::bigint * i.height), 0) AS pixels,
           coalesce(sum(i.size_bytes), 0) AS bytes
      FROM upload_files f
      JOIN upload_images i ON i.file_id = f.id
     WHERE f.upload_id = %(upload_id)s
       AND f.id <> %(file_id)s
"""

# Files of one upload finish one at a time, so two cannot both take the last of its quota.
LOCK_UPLOAD = """
    SELECT id FROM uploads WHERE id = %(upload_id)s FOR UPDATE
"""


class OutputQuotaExceeded(Exception):
    """The file's PNGs would take the upload past its output quota; the message says how."""


async def output_quota_left(
    pool: Pool, upload_id: uuid.UUID, file_id: uuid.UUID, quota: OutputQuota
) -> OutputQuota:
    """What `quota` (per upload) leaves for this file after the upload's other files."""
    async with pool.connection() as conn:
        used = await _output_of_upload(conn, upload_id, file_id)
    return OutputQuota(
        pages=max(0, quota.pages - used.pages),
        pixels=max(0, quota.pixels - used.pixels),
        bytes=max(0, quota.bytes - used.bytes),
    )


async def _output_of_upload(
    conn: Connection, upload_id: uuid.UUID, file_id: uuid.UUID
) -> OutputQuota:
    cursor = await conn.execute(OUTPUT_OF_UPLOAD, {"upload_id": upload_id, "file_id": file_id})
    row = await cursor.fetchone()
    assert row is not None
    return OutputQuota(pages=row["pages"], pixels=int(row["pixels"]), bytes=int(row["bytes"]))


FINISH_FILE = """
    UPDATE upload_files
       SET status = %(status)s,
           error = %(error)s,
           finished_at = now(),
           due_at = NULL,
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""


class LeaseLost(Exception):
    """Another worker took the file over; what this one made is not recorded."""


async def finish_file(
    pool: Pool,
    file_id: uuid.UUID,
    owner: str,
    upload_id: uuid.UUID,
    images: list[Image],
    quota: OutputQuota,
) -> bool:
    """Record the file's PNGs and mark it done, all or nothing; False if the lease was lost
    (or the upload deleted). Raises OutputQuotaExceeded if the upload's other files, finished
    meanwhile, leave no room for these PNGs under `quota`."""
    try:
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(LOCK_UPLOAD, {"upload_id": upload_id})
            if await cursor.fetchone() is None:
                return False
            used = await _output_of_upload(conn, upload_id, file_id)
            exceeded = quota.exceeded_by(
                used.pages + len(images),
                used.pixels + sum(image.width * image.height for image in images),
                used.bytes + sum(image.size_bytes for image in images),
            )
            if exceeded:
                raise OutputQuotaExceeded(exceeded)
            await conn.execute(DELETE_IMAGES, {"id": file_id})
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    INSERT_IMAGE,
                    [
                        {
                            "file_id": file_id,
                            "page": image.page,
                            "storage_key": image.storage_key,
                            "width": image.width,
                            "height": image.height,
                            "size_bytes": image.size_bytes,
                            "preview_key": image.preview_key,
                        }
                        for image in images
                    ],
                )
            await _end_file(conn, file_id, owner, "done", None)
            await _call_back_if_finished(conn, upload_id)
    except LeaseLost:
        return False
    return True


async def fail_file(
    pool: Pool, file_id: uuid.UUID, owner: str, upload_id: uuid.UUID, error: str
) -> bool:
    """Mark the file failed with the error users see; False if the lease was lost."""
    try:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(LOCK_UPLOAD, {"upload_id": upload_id})
            await _end_file(conn, file_id, owner, "failed", error)
            await _call_back_if_finished(conn, upload_id)
    except LeaseLost:
        return False
    return True


# Taken once, when no file is left to convert; the upload row is locked by the caller, so of two
# files finishing at once the second sees the first one's state and only one takes it.
TAKE_CALLBACK = """
    UPDATE uploads
       SET callback_delivery_id = %(delivery_id)s
     WHERE id = %(upload_id)s
       AND callback_url IS NOT NULL
       AND callback_delivery_id IS NULL
       AND NOT EXISTS (
             SELECT 1 FROM upload_files
              WHERE upload_id = %(upload_id)s
                AND status IN ('queued', 'processing')
           )
 RETURNING callback_url
"""

UPLOAD_COUNTS = """
    SELECT count(*) AS files_total,
           count(*) FILTER (WHERE status = 'done') AS files_done,
           count(*) FILTER (WHERE status = 'failed') AS files_failed
      FROM upload_files
     WHERE upload_id = %(upload_id)s
"""

CALLBACK_SOURCE = "upload"


async def _call_back_if_finished(conn: Connection, upload_id: uuid.UUID) -> None:
    """Queue the upload's `upload.done` / `upload.failed` webhook if this was its last file,
    in the transaction of that file's change (the outbox pattern)."""
    delivery_id = uuid.uuid4()
    cursor = await conn.execute(TAKE_CALLBACK, {"upload_id": upload_id, "delivery_id": delivery_id})
    taken = await cursor.fetchone()
    if taken is None:
        return
    counts = await (await conn.execute(UPLOAD_COUNTS, {"upload_id": upload_id})).fetchone()
    assert counts is not None
    status = "done" if counts["files_done"] == counts["files_total"] else "failed"
    body = {
        "type": f"upload.{status}",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"id": str(upload_id), "status": status, **counts},
    }
    await delivery.enqueue(
        conn,
        url=taken["callback_url"],
        body=json.dumps(body).encode(),
        source=CALLBACK_SOURCE,
        headers={"Content-Type": "application/json"},
        delivery_id=delivery_id,
    )


async def _end_file(
    conn: Connection, file_id: uuid.UUID, owner: str, status: str, error: str | None
) -> None:
    cursor = await conn.execute(
        FINISH_FILE, {"id": file_id, "owner": owner, "status": status, "error": error}
    )
    if cursor.rowcount != 1:
        raise LeaseLost(str(file_id))


# Back in the queue, free for any worker: after a crash (the attempt counts; due after a delay
# when the storage was out of reach) or when the worker stops mid-way (it does not).
REQUEUE_FILE = """
    UPDATE upload_files
       SET status = 'queued',
           attempts = attempts - %(uncounted)s,
           due_at = now() + make_interval(secs => %(delay_s)s),
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""


async def requeue_file(
    pool: Pool, file_id: uuid.UUID, owner: str, *, count_attempt: bool, delay_s: float = 0.0
) -> None:
    uncounted = 0 if count_attempt else 1
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            REQUEUE_FILE,
            {"id": file_id, "owner": owner, "uncounted": uncounted, "delay_s": delay_s},
        )
        await claims.notify(conn, CHANNEL)


# Waiting files are due: the partial index on due_at reads them without the finished ones.
COUNT_WAITING = """
    SELECT count(*) AS waiting
      FROM upload_files
     WHERE due_at IS NOT NULL
       AND status = 'queued'
"""


async def count_waiting(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(COUNT_WAITING)
        row = await cursor.fetchone()
    return int(row["waiting"]) if row else 0


@dataclass(frozen=True)
class ListedUpload:
    id: uuid.UUID
    created_at: datetime
    status: str
    files_total: int
    files_done: int
    files_failed: int


# Newest first, after the (created_at, id) cursor; the status is summed up from the files the
# same way `upload_status` does it.
LIST_UPLOADS = """
    SELECT u.id, u.created_at, counts.status, counts.files_total, counts.files_done,
           counts.files_failed
      FROM uploads u
     CROSS JOIN LATERAL (
             SELECT count(*) AS files_total,
                    count(*) FILTER (WHERE f.status = 'done') AS files_done,
                    count(*) FILTER (WHERE f.status = 'failed') AS files_failed,
                    CASE
                        WHEN bool_and(f.status = 'done') THEN 'done'
                        WHEN bool_and(f.status = 'queued') THEN 'queued'
                        WHEN bool_or(f.status IN ('queued', 'processing')) THEN 'processing'
                        ELSE 'failed'
                    END AS status
               FROM upload_files f
              WHERE f.upload_id = u.id
           ) AS counts
     WHERE (%(after_created_at)s::timestamptz IS NULL
            OR (u.created_at, u.id) < (%(after_created_at)s, %(after_id)s::uuid))
       AND (%(status)s::text IS NULL OR counts.status = %(status)s)
     ORDER BY u.created_at DESC, u.id DESC
     LIMIT %(limit)s
"""


async def list_uploads(
    pool: Pool, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[ListedUpload], str | None]:
    """Uploads newest first, optionally of one status: a page and the next page's cursor (None
    on the last). Raises paging.BadCursor for a cursor that did not come from here."""
    after_created_at, after_id = paging.cursor_position(cursor) if cursor else (None, None)
    params = {
        "status": status,
        "after_created_at": after_created_at,
        "after_id": after_id,
        "limit": limit + 1,
    }
    async with pool.connection() as conn:
        rows = await (await conn.execute(LIST_UPLOADS, params)).fetchall()
    page, next_cursor = paging.split_page(rows, limit)
    return [ListedUpload(**row) for row in page], next_cursor


# Every key the upload stored: originals, PNGs and previews.
DELETE_UPLOAD = """
    WITH keys AS (
        SELECT f.original_key AS key FROM upload_files f WHERE f.upload_id = %(id)s
        UNION ALL
        SELECT i.storage_key FROM upload_files f JOIN upload_images i ON i.file_id = f.id
         WHERE f.upload_id = %(id)s
        UNION ALL
        SELECT i.preview_key FROM upload_files f JOIN upload_images i ON i.file_id = f.id
         WHERE f.upload_id = %(id)s AND i.preview_key IS NOT NULL
    ), deleted AS (
        DELETE FROM uploads WHERE id = %(id)s RETURNING id
    )
    SELECT (SELECT count(*) FROM deleted) AS deleted, array(SELECT key FROM keys) AS keys
"""


async def delete_upload(pool: Pool, storage: Storage, upload_id: uuid.UUID) -> bool:
    """Delete the upload's rows, then its stored files; False if there is no such upload.

    The rows go first: once they are gone nothing serves the files, and a conversion still
    running for the upload loses its claim and removes what it made.
    """
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(DELETE_UPLOAD, {"id": upload_id})
        row = await cursor.fetchone()
    assert row is not None
    if not row["deleted"]:
        return False
    for key in row["keys"]:
        await storage.delete(key)
    return True


# Finished uploads (no file queued or processing) created before the cut-off, oldest first.
EXPIRED_UPLOADS = """
    SELECT u.id
      FROM uploads u
     WHERE u.created_at < now() - %(retention)s
       AND NOT EXISTS (
             SELECT 1 FROM upload_files f
              WHERE f.upload_id = u.id AND f.status IN ('queued', 'processing')
           )
     ORDER BY u.created_at
     LIMIT %(limit)s
"""

ORPHAN_CHECK_BATCH = 100


async def expire_uploads(pool: Pool, storage: Storage, retention: timedelta, limit: int) -> int:
    """Delete up to `limit` finished uploads older than `retention`, with their files; how many
    went (fewer than found when another sweep took some first)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(EXPIRED_UPLOADS, {"retention": retention, "limit": limit})
        expired = [row["id"] for row in await cursor.fetchall()]
    removed = 0
    for upload_id in expired:
        removed += await delete_upload(pool, storage, upload_id)
    return removed


KNOWN_UPLOADS = "SELECT id FROM uploads WHERE id = ANY(%(ids)s)"


async def expire_orphaned_files(pool: Pool, storage: Storage, untouched_for_s: float) -> int:
    """Remove the stored files of uploads no row records, once untouched for `untouched_for_s`
    (longer than any upload request may last, so a request still streaming keeps its files):
    an upload refused while the storage was out of reach, one whose process died mid-request,
    one deleted while the storage could not be reached. How many uploads' files went."""
    ids = []
    for name in await storage.folders("uploads"):
        with contextlib.suppress(ValueError):  # not an upload's folder: not ours to judge
            ids.append(uuid.UUID(name))
    removed = 0
    for start in range(0, len(ids), ORPHAN_CHECK_BATCH):
        batch = ids[start : start + ORPHAN_CHECK_BATCH]
        async with pool.connection() as conn:
            cursor = await conn.execute(KNOWN_UPLOADS, {"ids": batch})
            known = {row["id"] for row in await cursor.fetchall()}
        for upload_id in batch:
            if upload_id not in known:
                removed += bool(
                    await storage.delete_folder(f"uploads/{upload_id}", untouched_for_s)
                )
    return removed
