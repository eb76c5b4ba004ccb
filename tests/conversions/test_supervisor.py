"""Uploads converted in the background by the supervisor's child processes, crashes included."""

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pyvips
from prometheus_client import REGISTRY

from errands.config import Settings
from tests.conversions import samples
from tests.fixtures.app import serve_app

FINISHED = ("done", "failed")
CONVERSION_MODULE = "errands.conversions.convert"


async def post_upload(api: httpx.AsyncClient, *files: tuple[str, bytes]) -> str:
    response = await api.post(
        "/uploads",
        files=[("files", (name, content, "application/octet-stream")) for name, content in files],
    )
    assert response.status_code == 200, response.text
    upload_id: str = response.json()["id"]
    return upload_id


async def wait_until_finished(
    api: httpx.AsyncClient, upload_id: str, within_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        upload: dict[str, Any] = (await api.get(f"/uploads/{upload_id}")).json()
        if upload["status"] in FINISHED:
            return upload
        assert time.monotonic() < deadline, f"upload not finished in time: {upload}"
        await asyncio.sleep(0.05)


def conversion_children() -> set[int]:
    """Pids of the conversion child processes this test process started."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if CONVERSION_MODULE in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


async def wait_for_new_child(known: set[int], within_s: float = 30.0) -> int:
    deadline = time.monotonic() + within_s
    while not (new := conversion_children() - known):
        assert time.monotonic() < deadline, "no new conversion child started"
        await asyncio.sleep(0.005)
    return new.pop()


def is_gone(pid: int) -> bool:
    """Ended: no such process, or one that died and waits to be reaped by its new parent."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sample_value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_uploaded_files_become_pngs_with_their_resolutions(settings: Settings) -> None:
    converted_before = sample_value(
        "errands_conversion_duration_seconds_count", {"outcome": "done"}
    )
    measured_before = sample_value("errands_conversion_child_peak_rss_bytes_count")
    async with serve_app(settings, loops=["conversions"]) as app:
        upload_id = await post_upload(
            app.client,
            ("large.jpg", samples.jpeg(8000, 6000)),
            ("rotated.jpg", samples.jpeg(400, 200, orientation=6)),
            ("print.jpg", samples.cmyk_jpeg(300, 200)),
            ("logo.png", samples.png(5000, 1000, alpha=True)),
            ("deep.png", samples.png(300, 200, bitdepth=16)),
            ("looks-like.pdf", samples.png(120, 80)),
            ("pages.pdf", samples.pdf([(200, 300), (300, 300), (400, 300)])),
        )
        upload = await wait_until_finished(app.client, upload_id)
        assert upload["status"] == "done"
        sizes = {
            file["filename"]: [(image["width"], image["height"]) for image in file["images"]]
            for file in upload["files"]
        }
        assert sizes == {
            "large.jpg": [(3500, 2625)],
            "rotated.jpg": [(200, 400)],
            "print.jpg": [(300, 200)],
            "logo.png": [(3500, 700)],
            "deep.png": [(300, 200)],
            "looks-like.pdf": [(120, 80)],
            "pages.pdf": [(417, 625), (625, 625), (834, 625)],
        }
        pdf_file = upload["files"][-1]
        assert [image["page"] for image in pdf_file["images"]] == [1, 2, 3]
        assert all(file["status"] == "done" and file["error"] is None for file in upload["files"])

        # What the database says is what was stored.
        for file in upload["files"]:
            for image in file["images"]:
                response = await app.client.get(image["path"])
                assert response.headers["content-type"] == "image/png"
                png = pyvips.Image.new_from_buffer(response.content, "")
                assert (png.width, png.height) == (image["width"], image["height"])
                if file["filename"] == "logo.png":
                    assert png.hasalpha()
                preview = await app.client.get(image["preview"])
                assert preview.headers["content-type"] == "image/png"
                small = pyvips.Image.new_from_buffer(preview.content, "")
                assert small.width == min(256, image["width"])

        images = (await app.client.get(f"/uploads/{upload_id}/images")).json()
        assert len(images["images"]) == 9
        assert images["images"][-1]["filename"] == "pages.pdf"
        assert images["images"][-1]["page"] == 3
        status = (await app.client.get(f"/uploads/{upload_id}/status")).json()
        assert (status["status"], status["files_done"], status["files_total"]) == ("done", 7, 7)

    converted = sample_value("errands_conversion_duration_seconds_count", {"outcome": "done"})
    assert converted - converted_before == 7
    assert sample_value("errands_conversion_child_peak_rss_bytes_count") - measured_before == 7


async def test_bad_files_fail_alone_with_a_clear_error(settings: Settings) -> None:
    async with serve_app(settings, loops=["conversions"]) as app:
        upload_id = await post_upload(
            app.client,
            ("bomb.png", samples.png_bomb()),
            ("broken.jpg", samples.jpeg(300, 200)[:400]),
            ("locked.pdf", samples.pdf([(612, 792)], encrypt=True)),
            ("poster.pdf", samples.pdf([(612, 792), (72 * 300, 72 * 10)])),
            ("fine.png", samples.png(50, 50)),
            ("truncated.jpg", samples.truncated_jpeg()),
        )
        upload = await wait_until_finished(app.client, upload_id)
    assert upload["status"] == "failed"
    outcomes = {file["filename"]: (file["status"], file["error"]) for file in upload["files"]}
    assert outcomes["bomb.png"] == ("failed", "image too large: 100000x100000")
    assert outcomes["broken.jpg"][0] == "failed"
    assert outcomes["broken.jpg"][1].startswith("not a readable image: ")
    assert outcomes["locked.pdf"] == ("failed", "the PDF is encrypted (password protected)")
    assert outcomes["poster.pdf"] == (
        "failed",
        "page 2 has an unusable size: 300x10 inches",
    )
    assert outcomes["fine.png"] == ("done", None)
    assert outcomes["truncated.jpg"][0] == "failed"
    assert "Corrupt JPEG data" in outcomes["truncated.jpg"][1]
    assert all(file["images"] == [] for file in upload["files"] if file["status"] == "failed")


async def test_a_child_out_of_memory_fails_its_file_only(settings: Settings) -> None:
    # A 60-inch page rendered at 150 dpi is 9000x9000 pixels, 324 MB at once: far over a
    # 256 MB limit, while a small JPEG needs a fraction of it.
    starved = settings.model_copy(
        update={"conversion_child_memory_mb": 256, "conversion_max_side": 9000}
    )
    async with serve_app(starved, loops=["conversions"]) as app:
        upload_id = await post_upload(
            app.client,
            ("poster.pdf", samples.pdf([(72 * 60, 72 * 60)])),
            ("small.jpg", samples.jpeg(400, 300)),
        )
        upload = await wait_until_finished(app.client, upload_id)
    poster, small = upload["files"]
    assert (poster["status"], poster["attempts"]) == ("failed", 2)
    assert (
        poster["error"] == "conversion ran out of memory (limit 256 MB); gave up after 2 attempts"
    )
    assert (small["status"], small["attempts"]) == ("done", 1)


async def test_a_killed_child_is_retried_once_then_fails_while_others_carry_on(
    settings: Settings,
) -> None:
    # Enough pages to take a few seconds, so its children can be caught and killed.
    many_pages = samples.pdf([(612, 792)] * 60)
    async with serve_app(settings, loops=["conversions"]) as app:
        doomed_id = await post_upload(app.client, ("doomed.pdf", many_pages))
        first_child = await wait_for_new_child(set())
        other_id = await post_upload(app.client, ("other.pdf", samples.pdf([(612, 792)] * 20)))
        other_child = await wait_for_new_child({first_child})

        os.kill(first_child, signal.SIGKILL)
        retry_child = await wait_for_new_child({first_child, other_child})
        os.kill(retry_child, signal.SIGKILL)

        doomed = await wait_until_finished(app.client, doomed_id)
        other = await wait_until_finished(app.client, other_id)
        [doomed_file], [other_file] = doomed["files"], other["files"]
        assert doomed_file["status"] == "failed"
        assert doomed_file["error"] == (
            "conversion process was killed (SIGKILL); gave up after 2 attempts"
        )
        assert doomed_file["attempts"] == 2
        assert (other_file["status"], other_file["attempts"], len(other_file["images"])) == (
            "done",
            1,
            20,
        )

        # The supervisor keeps working after its children died.
        later_id = await post_upload(app.client, ("later.png", samples.png(40, 30)))
        later = await wait_until_finished(app.client, later_id)
        assert later["status"] == "done"


async def test_a_killed_child_is_retried_and_the_retry_can_succeed(settings: Settings) -> None:
    async with serve_app(settings, loops=["conversions"]) as app:
        upload_id = await post_upload(app.client, ("pages.pdf", samples.pdf([(612, 792)] * 30)))
        child = await wait_for_new_child(set())
        os.kill(child, signal.SIGKILL)
        upload = await wait_until_finished(app.client, upload_id)
    [file] = upload["files"]
    assert (file["status"], file["attempts"], len(file["images"])) == ("done", 2, 30)


async def test_stopping_mid_conversion_puts_the_file_back_for_the_next_worker(
    settings: Settings, database_url: str
) -> None:
    impatient = settings.model_copy(update={"shutdown_grace_s": 0.1})
    async with serve_app(impatient, loops=["conversions"]) as app:
        upload_id = await post_upload(app.client, ("pages.pdf", samples.pdf([(612, 792)] * 60)))
        child = await wait_for_new_child(set())
    # Stopped: the child is gone and the file is queued again, this attempt not counted.
    assert not psutil.pid_exists(child)  # ended and reaped: no zombie left
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT status, attempts, lease_owner, due_at IS NOT NULL FROM upload_files"
        )
        assert await cursor.fetchall() == [("queued", 0, None, True)]
    async with serve_app(settings, loops=["conversions"]) as app:
        upload = await wait_until_finished(app.client, upload_id)
    [file] = upload["files"]
    assert (file["status"], file["attempts"], len(file["images"])) == ("done", 1, 60)


async def test_a_conversion_over_its_time_budget_is_killed_and_fails_at_once(
    settings: Settings,
) -> None:
    hurried = settings.model_copy(update={"conversion_timeout_s": 0.3})
    async with serve_app(hurried, loops=["conversions"]) as app:
        upload_id = await post_upload(app.client, ("pages.pdf", samples.pdf([(612, 792)] * 200)))
        upload = await wait_until_finished(app.client, upload_id)
    [file] = upload["files"]
    # The budget is the file's to blame, not the machine's: no second attempt.
    assert (file["status"], file["attempts"], file["images"]) == ("failed", 1, [])
    assert file["error"] == "conversion took longer than 0.3 s"
    assert conversion_children() == set()


async def test_a_page_over_its_time_budget_fails_its_file_and_frees_the_worker(
    settings: Settings,
) -> None:
    # One worker: the slow page must not hold it past its budget (it would take minutes).
    # Rendering it also takes about 430 MB more each second: the memory limit leaves room for
    # three times the budget, so the budget is what stops it.
    one_worker = settings.model_copy(
        update={
            "conversion_workers": 1,
            "conversion_page_timeout_s": 1.5,
            "conversion_child_memory_mb": 2048,
        }
    )
    async with serve_app(one_worker, loops=["conversions"]) as app:
        slow_id = await post_upload(app.client, ("nested.pdf", samples.nested_forms_pdf()))
        after_id = await post_upload(app.client, ("after.png", samples.png(40, 30)))
        slow = await wait_until_finished(app.client, slow_id, within_s=30)
        after = await wait_until_finished(app.client, after_id, within_s=30)
    [slow_file] = slow["files"]
    assert (slow_file["status"], slow_file["attempts"]) == ("failed", 1)
    assert slow_file["error"] == "page 1 took longer than 1.5 s to convert"
    assert after["status"] == "done"
    assert conversion_children() == set()


async def test_the_output_quota_holds_for_the_whole_upload(settings: Settings) -> None:
    four_pages = settings.model_copy(update={"upload_max_output_pages": 4})
    async with serve_app(four_pages, loops=["conversions"]) as app:
        upload_id = await post_upload(
            app.client,
            ("first.pdf", samples.pdf([(612, 792)] * 3)),
            ("second.pdf", samples.pdf([(612, 792)] * 3)),
        )
        upload = await wait_until_finished(app.client, upload_id)
    done, failed = sorted(upload["files"], key=lambda file: file["status"])
    assert (done["status"], len(done["images"])) == ("done", 3)
    # Refused by the child (the other file had finished) or when recording (both ran at once).
    assert failed["status"] == "failed"
    assert failed["error"].startswith(
        "output quota of the upload exceeded: more pages than ERRANDS_UPLOAD_MAX_OUTPUT_PAGES"
    )
    assert failed["images"] == []
    # Nothing of the refused file is left in storage but its original.
    folder = settings.data_dir / "files" / "uploads" / upload_id / failed["id"]
    assert [path.name for path in folder.iterdir()] == ["original.pdf"]


async def test_an_upload_deleted_mid_conversion_leaves_no_file_behind(settings: Settings) -> None:
    finished_before = sample_value("errands_conversion_duration_seconds_count", {"outcome": "done"})
    async with serve_app(settings, loops=["conversions"]) as app:
        upload_id = await post_upload(app.client, ("pages.pdf", samples.pdf([(612, 792)] * 30)))
        await wait_for_new_child(set())
        work = settings.data_dir / "work"
        deadline = time.monotonic() + 30
        while not any(work.rglob("page-0001.png")):  # the child is well into the file
            assert time.monotonic() < deadline, "the conversion did not start"
            await asyncio.sleep(0.01)
        assert (await app.client.delete(f"/uploads/{upload_id}")).status_code == 204
        deadline = time.monotonic() + 30
        while (
            sample_value("errands_conversion_duration_seconds_count", {"outcome": "done"})
            == finished_before
        ):
            assert time.monotonic() < deadline, "the conversion did not end"
            await asyncio.sleep(0.05)
        assert (await app.client.get(f"/uploads/{upload_id}")).status_code == 404
    # The PNGs it made were stored, then removed when the record found no upload.
    assert [path for path in (settings.data_dir / "files").rglob("*") if path.is_file()] == []


async def test_a_file_whose_workers_died_twice_is_not_tried_a_third_time(
    settings: Settings, database_url: str
) -> None:
    async with serve_app(settings) as app:
        upload_id = await post_upload(app.client, ("pages.pdf", samples.pdf([(612, 792)])))
    # As two workers leave it: both attempts counted, the last lease run out.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE upload_files SET status = 'processing', attempts = 2,"
            " lease_owner = 'gone:1:x', lease_until = now() - interval '1 second'"
        )
    async with serve_app(settings, loops=["conversions"]) as app:
        upload = await wait_until_finished(app.client, upload_id)
    [file] = upload["files"]
    assert (file["status"], file["error"]) == (
        "failed",
        "conversion did not finish after 2 attempts",
    )


# A supervisor in its own process, converting one file through `run_child`, to be killed.
SUPERVISOR = """
import asyncio, sys
from pathlib import Path
from errands.config import Settings
from errands.conversions.supervisor import run_child
asyncio.run(run_child(Settings(), Path(sys.argv[1]), "pdf", Path(sys.argv[2])))
"""


async def test_a_child_does_not_outlive_its_killed_supervisor(tmp_path: Path) -> None:
    source, out_dir = tmp_path / "pages.pdf", tmp_path / "out"
    source.write_bytes(samples.pdf([(612, 792)] * 500))  # seconds of work
    out_dir.mkdir()
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUPERVISOR, str(source), str(out_dir)
    )
    child = await wait_for_new_child(set())
    try:
        while not (out_dir / "page-0001.png").exists():
            assert supervisor.returncode is None, "the supervisor ended before converting"
            await asyncio.sleep(0.005)
        supervisor.kill()
        await supervisor.wait()
        deadline = time.monotonic() + 1.0
        while not is_gone(child):
            assert time.monotonic() < deadline, "the child kept converting without its supervisor"
            await asyncio.sleep(0.01)
        assert not (out_dir / "page-0500.png").exists()
    finally:
        if not is_gone(child):
            os.kill(child, signal.SIGKILL)


async def test_work_left_by_a_dead_supervisor_is_removed_at_start(settings: Settings) -> None:
    work = settings.data_dir / "work"
    abandoned, current = work / "tmp-abandoned", work / "tmp-current"
    for folder in (abandoned, current):
        folder.mkdir(parents=True)
        (folder / "page-0001.png").write_bytes(b"png")
    # Older than any live conversion can be: twice the time limit ago.
    long_ago = time.time() - 2 * settings.conversion_timeout_s - 60
    os.utime(abandoned, (long_ago, long_ago))
    async with serve_app(settings, loops=["conversions"]):
        deadline = time.monotonic() + 10
        while abandoned.exists():
            assert time.monotonic() < deadline, "the abandoned work was not removed"
            await asyncio.sleep(0.01)
    assert (current / "page-0001.png").exists()
