"""Where uploaded and produced files live: a small interface keyed by safe relative names, and
its local-filesystem implementation under `ERRANDS_DATA_DIR/files`.

Keys are chosen by Errands (from ids), never by users; they are still checked, so a key can never
leave the storage root. Writes become visible whole or not at all (temporary file, then rename),
so a reader never sees half a file. An S3-compatible bucket can implement the same interface.
"""

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import IO, Protocol

__all__ = [
    "InvalidKey",
    "LocalStorage",
    "Storage",
    "StoredFileMissing",
    "Writer",
    "check_key",
]

READ_CHUNK_BYTES = 256 * 1024
MAX_KEY_LENGTH = 512

# Each segment: letters, digits, dot, dash, underscore; starting with a letter or digit, so no
# segment is ".", "..", hidden, or empty.
KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidKey(ValueError):
    """A key that is not a safe relative name (absolute, `..`, odd characters, too long)."""


class StoredFileMissing(FileNotFoundError):
    """No file is stored under the key."""


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
