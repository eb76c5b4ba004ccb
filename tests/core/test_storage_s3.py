"""The S3 backend against a real S3 server (SeaweedFS): whole-or-nothing writes, multipart with
flat memory, scratch copies, deletes, sweeps, presigned links, and clear start-up failures."""

import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from errands.config import Settings
from errands.core.storage import (
    PART_BYTES,
    S3Storage,
    StorageUnavailable,
    StoredFileMissing,
    open_storage,
)
from tests.fixtures.s3 import BUCKET


@pytest.fixture
async def s3(s3_settings: Settings) -> AsyncIterator[S3Storage]:
    async with open_storage(s3_settings) as storage:
        assert isinstance(storage, S3Storage)
        yield storage


async def read_all(storage: S3Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in await storage.read(key)])


async def unfinished_uploads(storage: S3Storage) -> list[str]:
    answer = await storage.client.list_multipart_uploads(Bucket=BUCKET, Prefix=storage.prefix)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


async def test_a_small_write_appears_only_when_committed(s3: S3Storage) -> None:
    writer = await s3.open_write("uploads/u1/original.png")
    await writer.write(b"first ")
    await writer.write(b"second")
    with pytest.raises(StoredFileMissing):
        await s3.read("uploads/u1/original.png")
    await writer.commit()
    assert writer.bytes_written == 12
    assert await read_all(s3, "uploads/u1/original.png") == b"first second"


async def test_a_large_write_goes_out_in_parts_with_flat_memory(s3: S3Storage) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    writer = await s3.open_write("uploads/u1/big.pdf")
    tracemalloc.start()
    try:
        for _ in range(40):
            await writer.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 40 MiB sent while holding about one part (a copy of it is made to send it).
    assert peak < 3 * PART_BYTES, peak
    assert await unfinished_uploads(s3) == [f"{s3.prefix}/uploads/u1/big.pdf"]
    await writer.commit()
    assert await unfinished_uploads(s3) == []
    assert await read_all(s3, "uploads/u1/big.pdf") == chunk * 40


async def test_a_discarded_write_leaves_nothing(s3: S3Storage) -> None:
    writer = await s3.open_write("uploads/u1/big.pdf")
    await writer.write(bytes(PART_BYTES + 1))
    await writer.discard()
    assert await unfinished_uploads(s3) == []
    with pytest.raises(StoredFileMissing):
        await s3.read("uploads/u1/big.pdf")


async def test_put_file_and_local_copy_go_through_scratch_files(
    s3: S3Storage, tmp_path: Path
) -> None:
    source = tmp_path / "page.png"
    source.write_bytes(b"png bytes")
    await s3.put_file("uploads/u1/page-0001.png", source)
    assert not source.exists()
    async with s3.local_copy("uploads/u1/page-0001.png") as copy:
        assert copy.read_bytes() == b"png bytes"
        assert copy.parent == s3.scratch_dir
    assert list(s3.scratch_dir.iterdir()) == []
    with pytest.raises(StoredFileMissing):
        async with s3.local_copy("uploads/u1/nothing.png"):
            pass
    assert list(s3.scratch_dir.iterdir()) == []


async def test_delete_removes_the_object(s3: S3Storage) -> None:
    writer = await s3.open_write("uploads/u1/a.png")
    await writer.commit()
    await s3.delete("uploads/u1/a.png")
    with pytest.raises(StoredFileMissing):
        await s3.read("uploads/u1/a.png")
    await s3.delete("uploads/u1/a.png")  # already gone: no error


async def test_a_sweep_aborts_multipart_uploads_left_unfinished(s3: S3Storage) -> None:
    abandoned = await s3.open_write("uploads/u1/big.pdf")
    await abandoned.write(bytes(PART_BYTES))  # its process died here
    assert await s3.sweep_abandoned_writes(older_than_s=3600) == 0
    assert await s3.sweep_abandoned_writes(older_than_s=0) == 1
    assert await unfinished_uploads(s3) == []


async def test_a_sweep_leaves_a_sibling_prefix_alone(s3: S3Storage, s3_settings: Settings) -> None:
    sibling_settings = s3_settings.model_copy(
        update={"storage_url": f"{s3_settings.storage_url}-other"}
    )
    async with open_storage(sibling_settings) as sibling:
        assert isinstance(sibling, S3Storage)
        theirs = await sibling.open_write("uploads/u1/big.pdf")
        await theirs.write(bytes(PART_BYTES))
        assert await s3.sweep_abandoned_writes(older_than_s=0) == 0
        assert await unfinished_uploads(sibling) == [f"{sibling.prefix}/uploads/u1/big.pdf"]
        await theirs.discard()


async def test_a_presigned_link_downloads_the_object(s3_settings: Settings) -> None:
    presigning = s3_settings.model_copy(update={"storage_presign": True})
    async with open_storage(presigning) as storage:
        writer = await storage.open_write("uploads/u1/a.png")
        await writer.write(b"png bytes")
        await writer.commit()
        url = await storage.download_url("uploads/u1/a.png")
    assert url is not None and "X-Amz-Signature=" in url
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"png bytes"
        assert (await client.get(url.replace("a.png", "b.png"))).status_code == 403


async def test_start_up_fails_clearly_without_its_bucket_or_credentials(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = s3_settings.model_copy(update={"storage_url": "s3://no-such-bucket/x"})
    with pytest.raises(StorageUnavailable, match="the bucket 'no-such-bucket' does not exist"):
        async with open_storage(missing):
            pass

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageUnavailable, match="refused the credentials for bucket 'errands'"):
        async with open_storage(s3_settings):
            pass

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(StorageUnavailable, match="the storage is unreachable"):
        async with open_storage(s3_settings):
            pass
