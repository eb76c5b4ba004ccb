"""Uploading and reading back: type by content, size cap, nothing half-stored, safe downloads."""

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY

from errands.config import Settings
from errands.conversions.api import upload_status
from errands.core.storage import LocalStorage
from tests.conversions import samples
from tests.fixtures.app import RunningApp, serve_app

BOUNDARY = "errands-test-boundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart_body(files: list[tuple[bytes, bytes]]) -> bytes:
    """A multipart body byte for byte, as some clients send it: (filename, content) per file."""
    body = b""
    for filename, content in files:
        body += (
            f"--{BOUNDARY}\r\n".encode()
            + b'Content-Disposition: form-data; name="files"; filename="'
            + filename
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + content
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()


def stored_files(settings: Settings) -> list[Path]:
    root = settings.data_dir / "files"
    return sorted(path for path in root.rglob("*") if path.is_file())


async def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def count_rows(database_url: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM upload_files)"
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_upload_status_sums_up_its_files() -> None:
    assert upload_status(["queued", "queued"]) == "queued"
    assert upload_status(["queued", "processing"]) == "processing"
    assert upload_status(["done", "queued"]) == "processing"
    assert upload_status(["done", "done"]) == "done"
    assert upload_status(["done", "failed"]) == "failed"
    assert upload_status(["failed", "processing"]) == "processing"


async def test_upload_answers_at_once_and_keeps_the_original(api: httpx.AsyncClient) -> None:
    content = samples.png(64, 48)
    response = await api.post("/uploads", files=[("files", ("photo.png", content, "image/png"))])
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "queued"
    upload_id = body["id"]
    assert uuid.UUID(upload_id)

    upload = (await api.get(f"/uploads/{upload_id}")).json()
    assert upload["status"] == "queued"
    [file] = upload["files"]
    assert (file["filename"], file["type"], file["status"], file["error"], file["images"]) == (
        "photo.png",
        "png",
        "queued",
        None,
        [],
    )
    assert file["size_bytes"] == len(content)
    original = await api.get(file["original_path"])
    assert original.status_code == 200
    assert original.content == content
    assert original.headers["content-type"] == "image/png"

    status = (await api.get(f"/uploads/{upload_id}/status")).json()
    assert status == {
        "id": upload_id,
        "status": "queued",
        "files_total": 1,
        "files_done": 0,
        "files_failed": 0,
    }
    originals = (await api.get(f"/uploads/{upload_id}/originals")).json()
    assert [item["path"] for item in originals["originals"]] == [file["original_path"]]
    images = (await api.get(f"/uploads/{upload_id}/images")).json()
    assert images == {"id": upload_id, "status": "queued", "images": []}


async def test_the_same_filename_twice_is_stored_separately(api: httpx.AsyncClient) -> None:
    first, second = samples.png(10, 10), samples.jpeg(20, 20)
    response = await api.post(
        "/uploads",
        files=[
            ("files", ("scan.png", first, "image/png")),
            ("files", ("scan.png", second, "image/png")),
        ],
    )
    upload = (await api.get(f"/uploads/{response.json()['id']}")).json()
    paths = [file["original_path"] for file in upload["files"]]
    assert [file["filename"] for file in upload["files"]] == ["scan.png", "scan.png"]
    assert [file["type"] for file in upload["files"]] == ["png", "jpeg"]
    assert len(set(paths)) == 2
    assert [(await api.get(path)).content for path in paths] == [first, second]

    again = await api.post("/uploads", files=[("files", ("scan.png", first, "image/png"))])
    upload_again = (await api.get(f"/uploads/{again.json()['id']}")).json()
    assert upload_again["files"][0]["original_path"] not in paths


async def test_type_comes_from_the_content_not_the_name(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/uploads", files=[("files", ("report.pdf", samples.png(10, 10), "application/pdf"))]
    )
    upload = (await api.get(f"/uploads/{response.json()['id']}")).json()
    assert upload["files"][0]["type"] == "png"
    assert upload["files"][0]["original_path"].endswith("/original.png")


async def test_filenames_are_kept_only_as_clean_metadata(api: httpx.AsyncClient) -> None:
    body = multipart_body([(b"../../etc/pass\x07wd.png", samples.png(8, 8))])
    response = await api.post("/uploads", content=body, headers=MULTIPART)
    upload = (await api.get(f"/uploads/{response.json()['id']}")).json()
    assert upload["files"][0]["filename"] == "passwd.png"
    assert "etc" not in upload["files"][0]["original_path"]


async def test_a_files_part_without_a_filename_is_still_a_file(api: httpx.AsyncClient) -> None:
    response = await api.post("/uploads", files={"files": (None, samples.png(8, 8))})
    upload = (await api.get(f"/uploads/{response.json()['id']}")).json()
    assert [(file["filename"], file["type"]) for file in upload["files"]] == [("file", "png")]


async def test_a_file_of_another_type_is_refused_and_nothing_is_kept(
    api: httpx.AsyncClient, settings: Settings, database_url: str
) -> None:
    response = await api.post(
        "/uploads",
        files=[
            ("files", ("fine.png", samples.png(10, 10), "image/png")),
            ("files", ("notes.png", b"just some text, not an image", "image/png")),
        ],
    )
    assert response.status_code == 415
    assert response.json() == {
        "detail": "'notes.png' is not a PDF, PNG or JPEG file (judged by its content)"
    }
    assert stored_files(settings) == []
    assert await count_rows(database_url) == (0, 0)


async def test_an_empty_file_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.post("/uploads", files=[("files", ("empty.png", b"", "image/png"))])
    assert response.status_code == 415


async def test_an_upload_over_the_cap_is_refused_and_nothing_is_kept(
    settings: Settings, database_url: str
) -> None:
    small_cap = settings.model_copy(update={"upload_max_bytes": 64 * 1024})
    big = samples.jpeg(64, 64) + bytes(100_000)  # still a JPEG by its first bytes
    assert len(big) > 64 * 1024
    async with serve_app(small_cap) as app:
        declared = await app.client.post(
            "/uploads",
            files=[
                ("files", ("small.png", samples.png(10, 10), "image/png")),
                ("files", ("big.jpg", big, "image/jpeg")),
            ],
        )
        assert declared.status_code == 413
        assert declared.json() == {"detail": "the upload is larger than the 65536-byte limit"}

        # Without a Content-Length the bytes are counted as they arrive.
        body = multipart_body([(b"a.png", samples.png(10, 10)), (b"big.jpg", big)])

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        streamed = await app.client.post(
            "/uploads",
            content=chunks(),
            headers=MULTIPART,
        )
        assert streamed.status_code == 413
    assert stored_files(settings) == []
    assert await count_rows(database_url) == (0, 0)


async def test_an_upload_of_too_many_files_is_refused_and_nothing_is_kept(
    settings: Settings, database_url: str
) -> None:
    two_at_most = settings.model_copy(update={"upload_max_files": 2})
    async with serve_app(two_at_most) as app:
        response = await app.client.post(
            "/uploads",
            files=[("files", (f"{n}.png", samples.png(8, 8), "image/png")) for n in range(3)],
        )
    assert response.status_code == 413
    assert response.json() == {"detail": "too many files: at most 2 per upload"}
    assert stored_files(settings) == []
    assert await count_rows(database_url) == (0, 0)


def raw_two_file_upload() -> tuple[bytes, bytes]:
    """The request head and body of a small PNG then a 300 KB JPEG, to send byte by byte."""
    body = multipart_body(
        [(b"a.png", samples.png(10, 10)), (b"b.jpg", samples.jpeg(64, 64) + bytes(300_000))]
    )
    head = (
        f"POST /uploads HTTP/1.1\r\nHost: errands\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


async def test_an_upload_abandoned_midway_keeps_nothing(
    app: RunningApp, settings: Settings, database_url: str
) -> None:
    head, body = raw_two_file_upload()
    host, port = app.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body[: len(body) // 2])  # the first file whole, the second begun
        await eventually(
            lambda: any(path.name == "original.png" for path in stored_files(settings))
        )
    finally:
        writer.transport.abort()  # the connection drops, as when a client dies
        await writer.wait_closed()

    await eventually(lambda: stored_files(settings) == [])
    assert list((settings.data_dir / "files" / ".partial").iterdir()) == []
    assert await count_rows(database_url) == (0, 0)


async def test_an_upload_still_arriving_when_its_time_is_up_is_408_and_keeps_nothing(
    settings: Settings, database_url: str
) -> None:
    hurried = settings.model_copy(update={"upload_max_duration_s": 1.0})
    head, body = raw_two_file_upload()
    async with serve_app(hurried) as app:
        host, port = app.base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # A byte now and then keeps the connection inside its idle limit, not the upload
            # inside its time.
            writer.write(head + body[: len(body) // 2])
            answer = b""
            async with asyncio.timeout(10):
                while not answer.endswith(b"}"):
                    writer.write(body[len(body) // 2 : len(body) // 2 + 1])
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            answer += await reader.read(65536)
        finally:
            writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'{"detail":"the upload did not arrive within 1 s"}')
    assert stored_files(hurried) == []
    assert list((hurried.data_dir / "files" / ".partial").iterdir()) == []
    assert await count_rows(database_url) == (0, 0)


async def test_requests_that_are_not_file_uploads_get_a_clear_400(api: httpx.AsyncClient) -> None:
    not_multipart = await api.post("/uploads", json={"files": []})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["detail"]

    wrong_field = await api.post("/uploads", files=[("file", ("a.png", b"x", "image/png"))])
    assert wrong_field.status_code == 400
    assert "'file'" in wrong_field.json()["detail"]

    no_files = await api.post(
        "/uploads",
        content=b"--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert no_files.status_code == 400
    assert no_files.json() == {"detail": "no complete file in the upload: send one or more 'files'"}

    malformed = await api.post(
        "/uploads",
        content=b"--b\r\nthis is not a header line\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert malformed.status_code == 400

    boundary = "b" * 300  # longer than the parser takes
    too_long = await api.post(
        "/uploads",
        content=f"--{boundary}--\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert too_long.status_code == 400
    assert too_long.json() == {"detail": "the multipart body is malformed"}


async def test_unknown_uploads_are_404(api: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    for suffix in ("", "/status", "/images", "/originals"):
        response = await api.get(f"/uploads/{missing}{suffix}")
        assert response.status_code == 404
        assert response.json() == {"detail": f"no upload with id {missing}"}
    assert (await api.get("/uploads/not-a-uuid")).status_code == 422


async def test_files_outside_what_uploads_recorded_cannot_be_read(
    app: RunningApp, settings: Settings
) -> None:
    secret = settings.data_dir / "secret.txt"
    secret.write_text("secret")
    (settings.data_dir / "files" / "uploads").mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "files" / "uploads" / "stray.png").write_bytes(b"not recorded")
    async with httpx.AsyncClient() as raw:
        for path, status in [
            ("/files/%2e%2e/secret.txt", 400),
            ("/files/..%2Fsecret.txt", 400),
            ("/files/uploads/%2e%2e/%2e%2e/secret.txt", 400),
            ("/files/%2Fetc%2Fpasswd", 400),
            ("/files//etc/passwd", 400),
            ("/files/uploads%5C..%5C..%5Csecret.txt", 400),
            ("/files/.partial/x", 400),
            ("/files/uploads/stray.png", 404),
            ("/files/uploads/nothing-here.png", 404),
        ]:
            # Sent byte for byte: the client must not tidy the path before the server sees it.
            request = raw.build_request("GET", app.base_url)
            request.url = request.url.copy_with(raw_path=path.encode())
            response = await raw.send(request)
            assert response.status_code == status, path
            assert "detail" in response.json(), path


async def test_a_stored_file_replaced_by_a_symlink_out_of_the_root_is_404(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    response = await api.post("/uploads", files=[("files", ("a.png", samples.png(8, 8)))])
    upload = (await api.get(f"/uploads/{response.json()['id']}")).json()
    path = upload["files"][0]["original_path"]
    stored = settings.data_dir / path.lstrip("/")
    secret = settings.data_dir / "secret.txt"
    secret.write_text("secret")
    stored.unlink()
    stored.symlink_to(secret)
    answer = await api.get(path)
    assert answer.status_code == 404
    assert answer.json() == {"detail": f"no file at {path}"}


async def test_the_path_an_upload_reports_downloads_as_given_or_under_files(
    api: httpx.AsyncClient,
) -> None:
    content = samples.png(8, 8)
    response = await api.post("/uploads", files=[("files", ("a.png", content))])
    upload = (await api.get(f"/uploads/{response.json()['id']}")).json()
    path = upload["files"][0]["original_path"]
    assert path.startswith("/files/uploads/")
    assert (await api.get(path)).content == content
    # The README's recipe once put the reported path after /files/: that works too.
    assert (await api.get(f"/files{path}")).content == content


async def test_a_client_dropping_its_upload_is_counted_as_an_abort_not_a_500(
    app: RunningApp, caplog: pytest.LogCaptureFixture
) -> None:
    def requests_with(status: str) -> float:
        labels = {"method": "POST", "status": status, "handler": "/uploads"}
        return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0

    aborted_before, failed_before = requests_with("499"), requests_with("500")
    body = multipart_body([(b"b.jpg", samples.jpeg(64, 64) + bytes(300_000))])
    head = (
        f"POST /uploads HTTP/1.1\r\nHost: errands\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = app.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)  # let the server start reading the body
    writer.transport.abort()
    await eventually(lambda: requests_with("499") > aborted_before)
    assert requests_with("500") == failed_before
    assert not [record for record in caplog.records if record.exc_info], "a traceback was logged"


async def post_png(api: httpx.AsyncClient) -> str:
    response = await api.post("/uploads", files=[("files", ("a.png", samples.png(8, 8)))])
    assert response.status_code == 200
    upload_id: str = response.json()["id"]
    return upload_id


async def test_uploads_are_listed_newest_first_a_page_at_a_time(
    api: httpx.AsyncClient, database_url: str
) -> None:
    created = [await post_png(api) for _ in range(5)]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE upload_files SET status = 'done', due_at = NULL WHERE upload_id = %s",
            [created[1]],
        )
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/uploads", params=params)).json()
        seen += [upload["id"] for upload in page["uploads"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # An upload arriving meanwhile does not shift the pages still to come.
        await post_png(api)
    assert (pages, seen) == (3, created[::-1])

    done = (await api.get("/uploads", params={"status": "done"})).json()
    assert [(upload["id"], upload["files_done"]) for upload in done["uploads"]] == [(created[1], 1)]
    assert done["next_cursor"] is None

    bad = await api.get("/uploads", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert bad.json() == {
        "detail": "cursor is not one a previous page returned: pass its next_cursor back"
    }
    assert (await api.get("/uploads", params={"limit": 0})).status_code == 422
    assert (await api.get("/uploads", params={"status": "lost"})).status_code == 422


async def test_deleting_an_upload_removes_its_rows_and_files(
    api: httpx.AsyncClient, settings: Settings, database_url: str
) -> None:
    kept, deleted = await post_png(api), await post_png(api)
    original = (await api.get(f"/uploads/{deleted}")).json()["files"][0]["original_path"]
    response = await api.delete(f"/uploads/{deleted}")
    assert response.status_code == 204
    assert (await api.get(f"/uploads/{deleted}")).status_code == 404
    assert (await api.get(original)).status_code == 404
    assert [path.parent.parent.name for path in stored_files(settings)] == [kept]
    assert await count_rows(database_url) == (1, 1)
    again = await api.delete(f"/uploads/{deleted}")
    assert again.status_code == 404
    assert again.json() == {"detail": f"no upload with id {deleted}"}


async def test_a_sweep_racing_a_live_upload_leaves_it_whole(
    app: RunningApp, settings: Settings
) -> None:
    # A sweeper of its own, as another process on the same disk would have.
    storage = LocalStorage.under_data_dir(settings.data_dir)
    content = samples.jpeg(64, 64) + bytes(300_000)
    body = multipart_body([(b"slow.jpg", content)])
    sent = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        sent.set()
        await go_on.wait()
        yield body[len(body) // 2 :]

    upload = asyncio.create_task(
        app.client.post("/uploads", content=slow_body(), headers=MULTIPART)
    )
    await sent.wait()
    partials = settings.data_dir / "files" / ".partial"
    await eventually(lambda: any(partials.iterdir()))
    long_ago = time.time() - 3600
    for partial in partials.iterdir():
        os.utime(partial, (long_ago, long_ago))
    assert await storage.sweep_abandoned_writes(older_than_s=0) == 0
    go_on.set()
    response = await upload
    assert response.status_code == 200
    stored = (await app.client.get(f"/uploads/{response.json()['id']}")).json()
    original = await app.client.get(stored["files"][0]["original_path"])
    assert original.content == content
