"""Uploads stored in a real S3 bucket (SeaweedFS): conversions end to end, downloads streamed or
presigned, deletion, an API and a worker sharing no disk, and the bucket going away."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pyvips

from errands.config import Settings
from errands.conversions.store import expire_orphaned_files
from errands.conversions.supervisor import abandoned_write_age_s
from errands.core.resources import open_resources
from errands.core.storage import S3Storage, open_storage
from tests.conversions import samples
from tests.conversions.test_api import MULTIPART, count_rows, multipart_body
from tests.conversions.test_supervisor import post_upload, wait_until_finished
from tests.fixtures.app import free_port, serve_app
from tests.fixtures.s3 import BUCKET, SECRET_KEY, SeaweedS3, s3_environment


async def objects_under(settings: Settings) -> list[str]:
    async with open_storage(settings) as storage:
        assert isinstance(storage, S3Storage)
        answer = await storage.client.list_objects_v2(Bucket=BUCKET, Prefix=storage.prefix + "/")
    return sorted(
        item["Key"].removeprefix(storage.prefix + "/") for item in answer.get("Contents", [])
    )


def local_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


async def test_uploads_convert_and_download_through_the_bucket(s3_settings: Settings) -> None:
    async with serve_app(s3_settings, loops=["conversions"]) as app:
        upload_id = await post_upload(
            app.client,
            ("scan.pdf", samples.pdf([(612, 792), (300, 300)])),
            ("photo.jpg", samples.jpeg(4000, 3000)),
        )
        upload = await wait_until_finished(app.client, upload_id)
        assert upload["status"] == "done"
        for file in upload["files"]:
            for image in file["images"]:
                response = await app.client.get(image["path"])
                assert response.status_code == 200
                png = pyvips.Image.new_from_buffer(response.content, "")
                assert (png.width, png.height) == (image["width"], image["height"])
        stored = await objects_under(s3_settings)
        assert len(stored) == 2 + 2 * 3  # originals, then a PNG and a preview per page
        assert all(key.startswith(f"uploads/{upload_id}/") for key in stored)

        assert (await app.client.delete(f"/uploads/{upload_id}")).status_code == 204
        assert await objects_under(s3_settings) == []
    # Nothing but the work folders ever touched the local disk, and those are empty again.
    assert not (s3_settings.data_dir / "files").exists()
    assert local_files(s3_settings.data_dir / "scratch") == []


async def test_downloads_redirect_to_a_presigned_url_when_asked(s3_settings: Settings) -> None:
    presigning = s3_settings.model_copy(update={"storage_presign": True})
    content = samples.png(20, 10)
    async with serve_app(presigning) as app:
        upload_id = await post_upload(app.client, ("a.png", content))
        upload = (await app.client.get(f"/uploads/{upload_id}")).json()
        response = await app.client.get(upload["files"][0]["original_path"])
        assert response.status_code == 307
        async with httpx.AsyncClient() as outside:
            fetched = await outside.get(response.headers["location"])
        assert fetched.content == content
        # Files no upload recorded are refused before any link is made.
        assert (await app.client.get("/files/uploads/nothing.png")).status_code == 404


@pytest.fixture
async def own_s3(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SeaweedS3]:
    """An S3 server of the test's own, to stop and start again."""
    server = await asyncio.to_thread(SeaweedS3.start_new, tmp_path_factory.mktemp("own-s3"))
    for name, value in s3_environment(server.endpoint).items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_an_upload_while_the_bucket_is_unreachable_is_503_and_keeps_nothing(
    settings: Settings, own_s3: SeaweedS3, database_url: str
) -> None:
    on_s3 = settings.model_copy(update={"storage_url": f"s3://{BUCKET}/down"})
    async with serve_app(on_s3) as app:
        await asyncio.to_thread(own_s3.stop)
        response = await app.client.post(
            "/uploads",
            files=[
                ("files", ("a.png", samples.png(10, 10))),
                ("files", ("big.jpg", samples.jpeg(64, 64) + bytes(9 * 1024 * 1024))),
            ],
        )
        assert response.status_code == 503
        assert response.json()["detail"].startswith("the storage is unreachable")
        assert await count_rows(database_url) == (0, 0)
        await asyncio.to_thread(own_s3.start)
        assert await objects_under(on_s3) == []


async def test_files_left_when_the_bucket_went_away_mid_upload_are_swept_later(
    settings: Settings, own_s3: SeaweedS3, database_url: str
) -> None:
    on_s3 = settings.model_copy(update={"storage_url": f"s3://{BUCKET}/midway"})
    body = multipart_body([(b"a.png", samples.png(10, 10)), (b"b.png", samples.png(12, 12))])
    second_file = body.index(b"b.png")

    async def body_losing_the_bucket() -> AsyncIterator[bytes]:
        yield body[:second_file]  # the first file whole: stored once the next part begins
        deadline = time.monotonic() + 30
        while not await objects_under(on_s3):
            assert time.monotonic() < deadline, "the first file was not stored"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(own_s3.stop)
        yield body[second_file:]

    async with serve_app(on_s3) as app:
        response = await app.client.post(
            "/uploads", content=body_losing_the_bucket(), headers=MULTIPART
        )
    assert response.status_code == 503
    assert await count_rows(database_url) == (0, 0)
    await asyncio.to_thread(own_s3.start)
    [left] = await objects_under(on_s3)  # the first file, which could not be removed then
    async with open_resources(on_s3) as resources:
        age_s = abandoned_write_age_s(on_s3)
        assert await expire_orphaned_files(resources.pool, resources.storage, age_s) == 0
        assert await objects_under(on_s3) == [left], "a request may still be streaming"
        # Once older than any upload may take (its objects' times are the server's own).
        assert await expire_orphaned_files(resources.pool, resources.storage, 0) == 1
    assert await objects_under(on_s3) == []


async def park_files(database_url: str, *, due: bool) -> None:
    """Hold uploaded files back from the supervisor, or make them due again."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE upload_files SET due_at = now() + %s * interval '1 hour'", [0 if due else 1]
        )


async def file_row(database_url: str) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT status, attempts, due_at > now() FROM upload_files")
        row = await cursor.fetchone()
    assert row is not None
    return tuple(row)


async def test_a_bucket_lost_during_conversion_is_retried_then_fails_clearly(
    settings: Settings, own_s3: SeaweedS3, database_url: str
) -> None:
    on_s3 = settings.model_copy(
        update={"storage_url": f"s3://{BUCKET}/lost", "conversion_storage_retry_s": 0.5}
    )
    async with serve_app(on_s3) as app:
        upload_id = await post_upload(app.client, ("a.png", samples.png(10, 10)))
    await park_files(database_url, due=False)
    async with serve_app(on_s3, loops=["conversions"]) as app:
        await asyncio.to_thread(own_s3.stop)
        await park_files(database_url, due=True)
        upload = await wait_until_finished(app.client, upload_id)
    [file] = upload["files"]
    assert (file["status"], file["attempts"]) == ("failed", 2)
    assert file["error"].startswith("the storage is unreachable (read ")
    assert file["error"].endswith("; gave up after 2 attempts")


async def test_a_bucket_back_before_the_retry_completes_the_conversion(
    settings: Settings, own_s3: SeaweedS3, database_url: str
) -> None:
    on_s3 = settings.model_copy(
        update={"storage_url": f"s3://{BUCKET}/back", "conversion_storage_retry_s": 3600}
    )
    async with serve_app(on_s3) as app:
        upload_id = await post_upload(app.client, ("a.png", samples.png(10, 10)))
    await park_files(database_url, due=False)
    async with serve_app(on_s3, loops=["conversions"]) as app:
        await asyncio.to_thread(own_s3.stop)
        await park_files(database_url, due=True)
        deadline = time.monotonic() + 60
        while await file_row(database_url) != ("queued", 1, True):  # put back for later
            assert time.monotonic() < deadline, "the failed attempt was not put back"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(own_s3.start)
        await park_files(database_url, due=True)  # the hour's wait, cut short
        upload = await wait_until_finished(app.client, upload_id)
    [file] = upload["files"]
    assert (file["status"], file["attempts"], len(file["images"])) == ("done", 2, 1)


def errands_process(
    command: list[str], settings: Settings, data_dir: Path, port: int
) -> "subprocess.Popen[bytes]":
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": str(settings.database_url),
        "ERRANDS_DATA_DIR": str(data_dir),
        "ERRANDS_STORAGE_URL": str(settings.storage_url),
        "ERRANDS_PORT": str(port),
        "ERRANDS_METRICS_PORT": str(free_port()),
    }
    errands = Path(sys.executable).parent / "errands"
    with (data_dir.parent / f"{data_dir.name}.log").open("wb") as log:
        return subprocess.Popen([str(errands), *command], env=env, stdout=log, stderr=log)


async def test_an_api_and_a_worker_sharing_no_disk_complete_uploads(
    s3_settings: Settings, tmp_path: Path
) -> None:
    api_dir, worker_dir = tmp_path / "api-machine", tmp_path / "worker-machine"
    api_port = free_port()
    api = errands_process(["api"], s3_settings, api_dir, api_port)
    worker = errands_process(
        ["worker", "--only", "conversions"], s3_settings, worker_dir, free_port()
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
            deadline = time.monotonic() + 60
            while True:
                assert api.poll() is None, (tmp_path / "api-machine.log").read_text()
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the API did not start"
                await asyncio.sleep(0.1)
            upload_id = await post_upload(client, ("scan.pdf", samples.pdf([(612, 792)] * 2)))
            upload = await wait_until_finished(client, upload_id)
            assert upload["status"] == "done", upload
            image = upload["files"][0]["images"][1]
            png = (await client.get(image["path"])).content
            assert pyvips.Image.new_from_buffer(png, "").width == image["width"]
    finally:
        for process in (api, worker):
            process.terminate()
        for process in (api, worker):
            process.wait(timeout=30)
    # Each machine kept nothing of the upload on its own disk.
    assert not (api_dir / "files").exists() and not (worker_dir / "files").exists()
    assert local_files(api_dir / "scratch") == local_files(worker_dir / "scratch") == []


@pytest.mark.parametrize(
    ("storage_url", "secret", "line"),
    [
        (
            "s3://no-such-bucket/uploads",
            SECRET_KEY,
            "the bucket 'no-such-bucket' does not exist",
        ),
        (
            f"s3://{BUCKET}/uploads",
            "not-the-secret",
            f"the storage refused the credentials for bucket '{BUCKET}'"
            " (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
        ),
    ],
    ids=["missing bucket", "refused credentials"],
)
def test_a_bucket_that_cannot_be_used_stops_start_up_with_one_clear_line(
    s3_settings: Settings,
    s3_server: SeaweedS3,
    tmp_path: Path,
    storage_url: str,
    secret: str,
    line: str,
) -> None:
    env = {
        **os.environ,
        **s3_environment(s3_server.endpoint, secret),
        "ERRANDS_DATABASE_URL": str(s3_settings.database_url),
        "ERRANDS_DATA_DIR": str(tmp_path),
        "ERRANDS_STORAGE_URL": storage_url,
    }
    errands = Path(sys.executable).parent / "errands"
    for command in (["api"], ["worker", "--only", "conversions"]):
        done = subprocess.run(
            [str(errands), *command], env=env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 2
        assert done.stderr.decode().strip().splitlines() == [
            f"errands: storage {storage_url}: {line}"
        ]
