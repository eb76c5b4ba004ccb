"""Where uploaded and produced files live: a small interface keyed by safe relative names, with
two implementations: a local folder under `ERRANDS_DATA_DIR/files` (the default) and an
S3-compatible bucket (`ERRANDS_STORAGE_URL=s3://bucket/prefix`).

Keys are chosen by Errands (from ids), never by users; they are still checked, so a key can never
leave the storage root. Writes become visible whole or not at all (a temporary file then a
rename; a multipart upload then its completion), so a reader never sees half a file.
"""

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from errands.config import Settings
from errands.core.errors import ErrandsError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef
else:
    S3Client = ObjectIdentifierTypeDef = Any

__all__ = [
    "InvalidKey",
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageUnavailable",
    "StoredFileMissing",
    "Writer",
    "check_key",
    "open_storage",
]

log = structlog.get_logger(__name__)

READ_CHUNK_BYTES = 256 * 1024
MAX_KEY_LENGTH = 512

# Each segment: letters, digits, dot, dash, underscore; starting with a letter or digit, so no
# segment is ".", "..", hidden, or empty.
KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidKey(ValueError):
    """A key that is not a safe relative name (absolute, `..`, odd characters, too long)."""


class StoredFileMissing(FileNotFoundError):
    """No file is stored under the key."""


class StorageUnavailable(ErrandsError):
    """The storage cannot be reached or refuses us: the request may succeed later (503)."""

    status_code = 503


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative name like `uploads/<id>/page-0001.png`."""
    segments = key.split("/")
    if len(key) > MAX_KEY_LENGTH or not all(KEY_SEGMENT.match(part) for part in segments):
        raise InvalidKey(f"invalid storage key: {key!r}")
    return key


class Writer(Protocol):
    """An open write to one key: nothing is visible under the key until `commit`."""

    bytes_written: int

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None:
        """Make the written bytes the file under the key, whole."""
        ...

    async def discard(self) -> None:
        """Drop what was written; the key is left as it was."""
        ...


class Storage(Protocol):
    async def open_write(self, key: str) -> Writer:
        """Start writing `key` chunk by chunk; end with `commit` or `discard`."""
        ...

    async def put_file(self, key: str, source: Path) -> None:
        """Store a local file under `key`, taking it over (the source is gone afterwards)."""
        ...

    def local_copy(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A local path holding the file's content while the block runs (do not modify it)."""
        ...

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The file's content in chunks; raises StoredFileMissing when there is no such file."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key` if it exists (and folders the removal left empty)."""
        ...

    async def sweep_abandoned_writes(self, older_than_s: float) -> int:
        """Remove what writes left behind when their process died, if older than
        `older_than_s`; never a write still in progress. Returns how many were removed."""
        ...

    async def folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under `prefix` (`uploads` -> each upload's id)."""
        ...

    async def delete_folder(self, prefix: str, untouched_for_s: float) -> int:
        """Remove every file under `prefix`, unless one was written in the last
        `untouched_for_s`; how many were removed."""
        ...

    async def download_url(self, key: str) -> str | None:
        """A short-lived URL the client may fetch the file from directly, or None to have it
        streamed through Errands."""
        ...


class _LocalWriter:
    def __init__(self, storage: "LocalStorage", key: str, partial: Path) -> None:
        self._storage = storage
        self._key = key
        self._partial = partial
        self._file = partial.open("wb")
        # Held until the file is closed: the sweeper skips locked files, so it never removes
        # a live write however slowly its client sends (the lock dies with its process).
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.bytes_written = 0

    async def write(self, chunk: bytes) -> None:
        # Local writes of request-sized chunks land in the page cache: cheaper than a thread hop.
        self._file.write(chunk)
        self.bytes_written += len(chunk)

    async def commit(self) -> None:
        # Renamed while still open and locked, so a sweep never sees it unlocked in `.partial`.
        self._file.flush()
        try:
            self._storage.publish(self._partial, self._key)
        finally:
            self._partial.unlink(missing_ok=True)
            self._file.close()

    async def discard(self) -> None:
        self._partial.unlink(missing_ok=True)
        self._file.close()


class LocalStorage:
    """Files under one directory; temporary files in its `.partial` folder on the same disk."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._partial = self.root / ".partial"
        self._partial.mkdir(parents=True, exist_ok=True)

    @classmethod
    def under_data_dir(cls, data_dir: Path) -> "LocalStorage":
        return cls(data_dir / "files")

    def path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink inside the root pointing out
            raise InvalidKey(f"invalid storage key: {key!r}")
        return path

    def _partial_path(self) -> Path:
        return self._partial / uuid.uuid4().hex

    def publish(self, partial: Path, key: str) -> None:
        """Move a finished temporary file to `key` in one rename."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)

    async def open_write(self, key: str) -> Writer:
        self.path(key)  # refuse a bad key before writing anything
        return _LocalWriter(self, key, self._partial_path())

    async def put_file(self, key: str, source: Path) -> None:
        self.path(key)
        partial = self._partial_path()
        try:
            # A rename when the source is on the same disk, a copy otherwise.
            await asyncio.to_thread(shutil.move, source, partial)
            self.publish(partial, key)
        finally:
            partial.unlink(missing_ok=True)

    def _stored_path(self, key: str) -> Path:
        """The path of a stored file; a key that resolves out of the root (a symlink put in
        its place) holds no file of ours, so it is missing rather than an error."""
        try:
            path = self.path(key)
        except InvalidKey:
            check_key(key)  # a bad key stays an error; only the escaping link is "missing"
            raise StoredFileMissing(key) from None
        if not path.is_file():
            raise StoredFileMissing(key)
        return path

    @asynccontextmanager
    async def local_copy(self, key: str) -> AsyncIterator[Path]:
        yield self._stored_path(key)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        path = self._stored_path(key)
        try:
            file = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise StoredFileMissing(key) from None
        return _chunks_of(file)

    async def sweep_abandoned_writes(self, older_than_s: float) -> int:
        return await asyncio.to_thread(self._sweep_partials, older_than_s)

    async def download_url(self, key: str) -> str | None:
        return None

    def _sweep_partials(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for partial in self._partial.iterdir():
            # A missing file: its write finished or another sweeper got there first.
            with contextlib.suppress(FileNotFoundError), partial.open("rb") as file:
                if partial.stat().st_mtime >= cutoff:
                    continue
                try:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live write holds it
                partial.unlink()
                removed += 1
        return removed

    async def folders(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        return await asyncio.to_thread(
            lambda: (
                [entry.name for entry in folder.iterdir() if entry.is_dir()]
                if folder.is_dir()
                else []
            )
        )

    async def delete_folder(self, prefix: str, untouched_for_s: float) -> int:
        return await asyncio.to_thread(self._delete_folder, self.path(prefix), untouched_for_s)

    def _delete_folder(self, folder: Path, untouched_for_s: float) -> int:
        cutoff = time.time() - untouched_for_s
        try:
            files = [path for path in folder.rglob("*") if path.is_file()]
            if any(path.stat().st_mtime >= cutoff for path in files):
                return 0
        except FileNotFoundError:  # something in it was removed meanwhile: not abandoned
            return 0
        shutil.rmtree(folder, ignore_errors=True)
        return len(files)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        for folder in path.parents:
            if folder == self.root or not folder.is_relative_to(self.root):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty: other files still live there
                break


async def _chunks_of(file: IO[bytes]) -> AsyncIterator[bytes]:
    with file:
        while chunk := await asyncio.to_thread(file.read, READ_CHUNK_BYTES):
            yield chunk


# S3 multipart parts other than the last must be at least 5 MiB; one part is all a write holds
# in memory, so memory stays flat whatever the file's size.
PART_BYTES = 8 * 1024 * 1024
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 60.0
S3_ATTEMPTS = 3
S3_DELETE_BATCH = 1000  # the most one DeleteObjects request takes
DEFAULT_REGION = "us-east-1"


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """botocore's errors as ours: a missing object is StoredFileMissing, anything else (no
    connection, a timeout, a refusal, a 5xx) StorageUnavailable naming what was tried."""
    try:
        yield
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise StoredFileMissing(what) from None
        raise StorageUnavailable(f"the storage refused to {what}: {code or error}") from None
    except BotoCoreError as error:
        raise StorageUnavailable(f"the storage is unreachable ({what}): {error}") from None


class _S3Writer:
    """A write to one object: sent as a single PUT when small, else as a multipart upload whose
    parts go out as they fill; nothing is visible under the key until `commit`."""

    def __init__(self, storage: "S3Storage", key: str) -> None:
        self._storage = storage
        self._object = storage.object_key(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.bytes_written = 0

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        self.bytes_written += len(chunk)
        if len(self._buffer) >= PART_BYTES:
            await self._send_part()

    async def _send_part(self) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        with _s3_errors(f"write {self._object}"):
            if self._upload_id is None:
                started = await client.create_multipart_upload(Bucket=bucket, Key=self._object)
                self._upload_id = started["UploadId"]
            number = len(self._parts) + 1
            sent = await client.upload_part(
                Bucket=bucket,
                Key=self._object,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=bytes(self._buffer),
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self._buffer.clear()

    async def commit(self) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        if self._upload_id is None:
            with _s3_errors(f"write {self._object}"):
                await client.put_object(Bucket=bucket, Key=self._object, Body=bytes(self._buffer))
            self._buffer.clear()
            return
        if self._buffer:
            await self._send_part()
        with _s3_errors(f"write {self._object}"):
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._object,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},  # type: ignore[typeddict-item]
            )

    async def discard(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            with _s3_errors(f"abort the write of {self._object}"):
                await self._storage.client.abort_multipart_upload(
                    Bucket=self._storage.bucket, Key=self._object, UploadId=self._upload_id
                )


class S3Storage:
    """Objects in one bucket under a prefix. Conversion children need files on disk: they get
    scratch copies under `scratch_dir`, removed when done."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        scratch_dir: Path,
        presign_ttl_s: int | None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.scratch_dir = scratch_dir
        self.presign_ttl_s = presign_ttl_s
        scratch_dir.mkdir(parents=True, exist_ok=True)

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def open_write(self, key: str) -> Writer:
        return _S3Writer(self, key)

    async def put_file(self, key: str, source: Path) -> None:
        writer = _S3Writer(self, key)
        try:
            with source.open("rb") as file:
                while chunk := await asyncio.to_thread(file.read, PART_BYTES):
                    await writer.write(chunk)
            await writer.commit()
        except BaseException:
            with contextlib.suppress(StorageUnavailable):
                await writer.discard()
            raise
        await asyncio.to_thread(source.unlink)

    @asynccontextmanager
    async def local_copy(self, key: str) -> AsyncIterator[Path]:
        scratch = self.scratch_dir / uuid.uuid4().hex
        try:
            with scratch.open("wb") as file:
                async for chunk in await self.read(key):
                    await asyncio.to_thread(file.write, chunk)
            yield scratch
        finally:
            scratch.unlink(missing_ok=True)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        name = self.object_key(key)
        with _s3_errors(f"read {name}"):
            answer = await self.client.get_object(Bucket=self.bucket, Key=name)
        return self._chunks_of(answer["Body"], name)

    async def _chunks_of(self, body: Any, name: str) -> AsyncIterator[bytes]:
        async with body:
            while True:
                with _s3_errors(f"read {name}"):
                    chunk = await body.read(READ_CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk

    async def delete(self, key: str) -> None:
        name = self.object_key(key)
        with _s3_errors(f"delete {name}"):
            await self.client.delete_object(Bucket=self.bucket, Key=name)

    async def sweep_abandoned_writes(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix begun longer ago than `older_than_s` (a live
        write is older than an upload may take to arrive)."""
        cutoff = time.time() - older_than_s
        aborted = 0
        with _s3_errors("list unfinished writes"):
            paginator = self.client.get_paginator("list_multipart_uploads")
            under = f"{self.prefix}/" if self.prefix else ""  # not a sibling prefix's writes
            pages = paginator.paginate(Bucket=self.bucket, Prefix=under)
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    async def folders(self, prefix: str) -> list[str]:
        under = self.object_key(prefix) + "/"
        names = []
        with _s3_errors(f"list {under}"):
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=under, Delimiter="/"):
                names += [
                    entry["Prefix"][len(under) : -1] for entry in page.get("CommonPrefixes", [])
                ]
        return names

    async def delete_folder(self, prefix: str, untouched_for_s: float) -> int:
        under = self.object_key(prefix) + "/"
        cutoff = time.time() - untouched_for_s
        with _s3_errors(f"list {under}"):
            paginator = self.client.get_paginator("list_objects_v2")
            objects = [
                item
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=under)
                for item in page.get("Contents", [])
            ]
        if any(item["LastModified"].timestamp() >= cutoff for item in objects):
            return 0
        for start in range(0, len(objects), S3_DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"]} for item in objects[start : start + S3_DELETE_BATCH]
            ]
            with _s3_errors(f"delete under {under}"):
                await self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
        return len(objects)

    async def download_url(self, key: str) -> str | None:
        if self.presign_ttl_s is None:
            return None
        name = self.object_key(key)
        with _s3_errors(f"sign a link to {name}"):
            url: str = await self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": name},
                ExpiresIn=self.presign_ttl_s,
            )
        return url


def parse_storage_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix of `s3://bucket/prefix` (the prefix may be empty)."""
    parts = urlsplit(url)
    prefix = parts.path.strip("/")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("must look like s3://bucket/prefix")
    if prefix:
        check_key(prefix)
    return parts.netloc, prefix


def _s3_client_config() -> AioConfig:
    return AioConfig(
        signature_version="s3v4",
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        read_timeout=S3_READ_TIMEOUT_S,
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
        # Path-style works with every S3-compatible server; AWS accepts it too.
        s3={"addressing_style": "path"},
    )


@asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """The storage `settings` choose; a bucket that is missing, out of reach or refuses the
    credentials raises StorageUnavailable with one line saying so."""
    if settings.storage_url is None:
        yield LocalStorage.under_data_dir(settings.data_dir)
        return
    bucket, prefix = parse_storage_url(settings.storage_url)
    # Endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL_S3 or
    # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), read by botocore itself.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    # botocore logs every credential and endpoint look-up at info; only its problems matter.
    for name in ("botocore", "aiobotocore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    session = get_session()
    async with session.create_client(
        "s3", region_name=region, config=_s3_client_config()
    ) as client:
        try:
            await client.head_bucket(Bucket=bucket)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageUnavailable(f"the bucket {bucket!r} does not exist") from None
            if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId"):
                raise StorageUnavailable(
                    f"the storage refused the credentials for bucket {bucket!r}"
                    " (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                ) from None
            raise StorageUnavailable(f"the bucket {bucket!r} cannot be used: {code}") from None
        except BotoCoreError as error:
            raise StorageUnavailable(f"the storage is unreachable: {error}") from None
        presign_ttl_s = settings.storage_presign_ttl_s if settings.storage_presign else None
        yield S3Storage(client, bucket, prefix, settings.data_dir / "scratch", presign_ttl_s)
