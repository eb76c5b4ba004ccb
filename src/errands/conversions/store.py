"""The SQL of conversions: uploads, their files (the claimable rows) and the PNGs made of them."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from errands.core import claims
from errands.core.db import Pool

__all__ = [
    "CHANNEL",
    "TABLE",
    "Image",
    "NewFile",
    "StoredFile",
    "count_waiting",
    "create_upload",
    "fail_file",
    "files_of_upload",
    "finish_file",
    "is_stored_key",
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
    INSERT INTO uploads (id)
    VALUES (%(id)s)
"""

# Due at once: the supervisor claims it as soon as the upload commits.
INSERT_FILE = """
    INSERT INTO upload_files (id, upload_id, position, filename, kind, size_bytes, original_key,
                              due_at)
    VALUES (%(id)s, %(upload_id)s, %(position)s, %(filename)s, %(kind)s, %(size_bytes)s,
            %(original_key)s, now())
"""


async def create_upload(pool: Pool, upload_id: uuid.UUID, files: Sequence[NewFile]) -> None:
    """The upload and its files in one transaction, waking the supervisors when it commits."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(INSERT_UPLOAD, {"id": upload_id})
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
                                      'width', i.width, 'height', i.height)
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
        OR EXISTS (SELECT 1 FROM upload_images WHERE storage_key = %(key)s) AS stored
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
    INSERT INTO upload_images (file_id, page, storage_key, width, height)
    VALUES (%(file_id)s, %(page)s, %(storage_key)s, %(width)s, %(height)s)
"""

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


async def finish_file(pool: Pool, file_id: uuid.UUID, owner: str, images: list[Image]) -> bool:
    """Record the file's PNGs and mark it done, all or nothing; False if the lease was lost."""
    try:
        async with pool.connection() as conn, conn.transaction():
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
                        }
                        for image in images
                    ],
                )
            await _end_file(conn, file_id, owner, "done", None)
    except LeaseLost:
        return False
    return True


async def fail_file(pool: Pool, file_id: uuid.UUID, owner: str, error: str) -> bool:
    """Mark the file failed with the error users see; False if the lease was lost."""
    try:
        async with pool.connection() as conn:
            await _end_file(conn, file_id, owner, "failed", error)
    except LeaseLost:
        return False
    return True


async def _end_file(
    conn: Connection, file_id: uuid.UUID, owner: str, status: str, error: str | None
) -> None:
    cursor = await conn.execute(
        FINISH_FILE, {"id": file_id, "owner": owner, "status": status, "error": error}
    )
    if cursor.rowcount != 1:
        raise LeaseLost(str(file_id))


# Back in the queue, due at once and free for any worker: after a crash (the attempt counts) or
# when the worker stops mid-way (it does not).
REQUEUE_FILE = """
    UPDATE upload_files
       SET status = 'queued',
           attempts = attempts - %(uncounted)s,
           due_at = now(),
           lease_owner = NULL,
           lease_until = NULL
     WHERE id = %(id)s
       AND lease_owner = %(owner)s
"""


async def requeue_file(pool: Pool, file_id: uuid.UUID, owner: str, *, count_attempt: bool) -> None:
    uncounted = 0 if count_attempt else 1
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(REQUEUE_FILE, {"id": file_id, "owner": owner, "uncounted": uncounted})
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
