"""The conversion supervisor: claims uploaded files and converts each in its own child process
under a memory limit, so a file that crashes or exhausts its child fails alone."""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from errands.config import Settings
from errands.conversions import store
from errands.conversions.convert import (
    EXIT_OUT_OF_MEMORY,
    UNLIMITED,
    Job,
    Limits,
    OutputQuota,
    job_to_json,
)
from errands.core import claims, metrics
from errands.core.resources import Resources
from errands.core.storage import StorageUnavailable, StoredFileMissing

__all__ = [
    "MAX_ATTEMPTS",
    "abandoned_write_age_s",
    "child_command",
    "child_environment",
    "child_job",
    "convert_uploaded_files",
    "run_child",
    "upload_output_quota",
]

log = structlog.get_logger(__name__)

# A child that crashes is given one more try (the crash may have been the machine's, not the
# file's); a second crash fails the file.
MAX_ATTEMPTS = 2
QUEUE_DEPTH_INTERVAL_S = 5.0
# Time for the row an upload writes once its files are stored.
ABANDONED_WRITE_MARGIN_S = 600.0
POLL_INTERVAL_S = 1.0
STDERR_TAIL_CHARS = 500
MAX_CHILD_THREADS = 8
# The result line lists every page; 500 pages of JSON fit many times over.
CHILD_LINE_LIMIT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Converted:
    pages: list[dict[str, int | str]]
    peak_rss_bytes: int


@dataclass(frozen=True)
class Refused:
    error: str
    peak_rss_bytes: int


@dataclass(frozen=True)
class Crashed:
    reason: str
    retry_after_s: float = 0.0


Outcome = Converted | Refused | Crashed


async def convert_uploaded_files(resources: Resources, stop: asyncio.Event) -> None:
    """The "conversions" loop: convert claimed files, `conversion_workers` at a time, until stop."""
    settings = resources.settings
    owner = claims.new_owner()
    queue = claims.ClaimQueue(
        table=store.TABLE,
        channel=store.CHANNEL,
        lease=timedelta(seconds=settings.conversion_lease_s),
        batch_size=settings.conversion_workers,
        max_in_flight=settings.conversion_workers,
        poll_interval_s=POLL_INTERVAL_S,
    )
    work_dir = settings.data_dir / "work"
    work_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(_remove_abandoned_work, work_dir, 2 * settings.conversion_timeout_s)

    async def convert_claimed(row: claims.Row) -> None:
        await convert_one_file(resources, owner, work_dir, row)

    depth = asyncio.create_task(_report_queue_depth(resources, stop), name="conversion-depth")
    try:
        await claims.run_claim_loop(
            queue,
            resources.pool,
            resources.database_url,
            convert_claimed,
            stop,
            owner=owner,
            grace_s=settings.shutdown_grace_s,
        )
    finally:
        depth.cancel()
        await asyncio.gather(depth, return_exceptions=True)


def _remove_abandoned_work(work_dir: Path, older_than_s: float) -> None:
    """Remove the folders of conversions whose supervisor died mid-way. A live conversion's
    folder is younger: its child is killed at the time limit and the folder removed after it."""
    cutoff = time.time() - older_than_s
    for folder in work_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another supervisor removed it first
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


async def convert_one_file(
    resources: Resources, owner: str, work_dir: Path, row: claims.Row
) -> None:
    """Convert one claimed file and record its PNGs or its error."""
    pool, storage, settings = resources.pool, resources.storage, resources.settings
    file_id: uuid.UUID = row["id"]
    attempts = await store.start_file(pool, file_id, owner)
    if attempts is None:
        return  # the lease went to another worker
    if attempts > MAX_ATTEMPTS:
        # Earlier attempts ended with their whole worker gone: no third chance.
        await store.fail_file(
            pool,
            file_id,
            owner,
            row["upload_id"],
            f"conversion did not finish after {MAX_ATTEMPTS} attempts",
        )
        return
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as out_dir:
            upload_quota = upload_output_quota(settings)
            quota = await store.output_quota_left(pool, row["upload_id"], file_id, upload_quota)
            try:
                async with storage.local_copy(row["original_key"]) as source:
                    outcome = await run_child(settings, source, row["kind"], Path(out_dir), quota)
                if isinstance(outcome, Converted):
                    outcome = await _record_pages(
                        resources, owner, row, Path(out_dir), outcome, upload_quota
                    )
            except StoredFileMissing:
                outcome = Refused("the original file is missing from storage", 0)
            except StorageUnavailable as error:
                # Likely the storage's outage, not the file's fault: tried again a little later.
                outcome = Crashed(error.detail, retry_after_s=settings.conversion_storage_retry_s)
    except asyncio.CancelledError:
        # Shutting down: the file goes back to the queue without counting this attempt.
        await store.requeue_file(pool, file_id, owner, count_attempt=False)
        raise
    elapsed = time.monotonic() - started
    if isinstance(outcome, Converted | Refused) and outcome.peak_rss_bytes:
        metrics.CONVERSION_CHILD_PEAK_RSS.observe(outcome.peak_rss_bytes)
    if isinstance(outcome, Refused):
        await store.fail_file(pool, file_id, owner, row["upload_id"], outcome.error)
    elif isinstance(outcome, Crashed):
        log.warning("conversion_child_crashed", file_id=str(file_id), reason=outcome.reason)
        if attempts < MAX_ATTEMPTS:
            await store.requeue_file(
                pool, file_id, owner, count_attempt=True, delay_s=outcome.retry_after_s
            )
            metrics.CONVERSION_DURATION.labels(outcome="retried").observe(elapsed)
            return
        await store.fail_file(
            pool,
            file_id,
            owner,
            row["upload_id"],
            f"{outcome.reason}; gave up after {attempts} attempts",
        )
    outcome_name = "done" if isinstance(outcome, Converted) else "failed"
    metrics.CONVERSION_DURATION.labels(outcome=outcome_name).observe(elapsed)
    log.info("file_converted", file_id=str(file_id), outcome=outcome_name, seconds=elapsed)


def abandoned_write_age_s(settings: Settings) -> float:
    """How old a write must be to count as abandoned: older than any upload may take to arrive
    (`408` past it) or any file to convert, with a margin for the row written after."""
    longest = max(settings.upload_max_duration_s, settings.conversion_timeout_s)
    return longest + ABANDONED_WRITE_MARGIN_S


def upload_output_quota(settings: Settings) -> OutputQuota:
    """What one upload may produce in all, from the settings."""
    return OutputQuota(
        pages=settings.upload_max_output_pages,
        pixels=settings.upload_max_output_pixels,
        bytes=settings.upload_max_output_bytes,
    )


async def _record_pages(
    resources: Resources,
    owner: str,
    row: claims.Row,
    out_dir: Path,
    converted: Converted,
    upload_quota: OutputQuota,
) -> Outcome:
    """Store the PNGs and previews the child made and record them; what was stored is removed
    again when the record cannot be made (over the upload's quota, or the file taken away)."""
    pool, storage = resources.pool, resources.storage
    prefix = f"uploads/{row['upload_id']}/{row['id']}"
    images = []
    stored: list[str] = []
    try:
        for page in converted.pages:
            image = store.Image(
                page=int(page["page"]),
                storage_key=f"{prefix}/{page['filename']}",
                width=int(page["width"]),
                height=int(page["height"]),
                size_bytes=int(page["size_bytes"]),
                preview_key=f"{prefix}/{page['preview_filename']}",
            )
            for key, filename in (
                (image.storage_key, page["filename"]),
                (image.preview_key, page["preview_filename"]),
            ):
                assert key is not None
                stored.append(key)
                await storage.put_file(key, out_dir / str(filename))
            images.append(image)
        if await store.finish_file(pool, row["id"], owner, row["upload_id"], images, upload_quota):
            return converted
        outcome: Outcome = converted  # another worker or a deletion took it: record nothing
    except store.OutputQuotaExceeded as exceeded:
        outcome = Refused(str(exceeded), converted.peak_rss_bytes)
    except BaseException:
        await _delete_keys(resources, stored)
        raise
    await _delete_keys(resources, stored)
    return outcome


async def _delete_keys(resources: Resources, keys: list[str]) -> None:
    for key in keys:
        try:
            await resources.storage.delete(key)
        except StorageUnavailable:  # never served without its row; a retry overwrites it
            log.warning("conversion_output_left_in_storage", key=key)


def child_command() -> list[str]:
    """How a conversion child is started: this Python, the converter module."""
    return [sys.executable, "-m", "errands.conversions.convert"]


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment of a conversion child, shaped for its memory limit (address space)."""
    # The cores are shared between the children running at once; each libvips thread also
    # reserves stack address space, and each malloc arena 64 MiB of it, against the limit.
    threads = max(1, (os.cpu_count() or 1) // settings.conversion_workers)
    return {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",
        "VIPS_CONCURRENCY": str(min(threads, MAX_CHILD_THREADS)),
    }


def child_job(
    settings: Settings, source: Path, kind: str, out_dir: Path, quota: OutputQuota = UNLIMITED
) -> Job:
    """What a conversion child is asked to do, within the limits `settings` set and what the
    upload's output `quota` leaves."""
    return Job(
        source=str(source),
        kind=kind,  # type: ignore[arg-type]
        out_dir=str(out_dir),
        limits=Limits(
            max_side=settings.conversion_max_side,
            pdf_dpi=settings.pdf_dpi,
            max_pixels=settings.max_pixels,
            max_pdf_pages=settings.max_pdf_pages,
            preview_width=settings.conversion_preview_width,
        ),
        memory_limit_bytes=settings.conversion_child_memory_mb * 1024 * 1024,
        quota=quota,
    )


async def run_child(
    settings: Settings,
    source: Path,
    kind: str,
    out_dir: Path,
    quota: OutputQuota = UNLIMITED,
) -> Outcome:
    """Convert `source` into `out_dir` in a new child process and say how it went.

    Each page must finish within `conversion_page_timeout_s` and the file within
    `conversion_timeout_s`; a child over either budget is killed and the file refused (the
    budget is the file's to blame, not the machine's, so it is not tried again).
    """
    job = child_job(settings, source, kind, out_dir, quota)
    child = await asyncio.create_subprocess_exec(
        *child_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(settings),
        limit=CHILD_LINE_LIMIT_BYTES,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    stderr = asyncio.create_task(child.stderr.read())
    try:
        # A child that dies before reading its job is told apart by its exit status below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            child.stdin.write(job_to_json(job).encode())
            await child.stdin.drain()
            child.stdin.close()
        result = await _follow_pages(child.stdout, settings, kind)
        await child.wait()
        return _outcome(child.returncode, result, await stderr, settings.conversion_child_memory_mb)
    except TimeBudgetExceeded as exceeded:
        return Refused(str(exceeded), 0)
    finally:
        await _kill(child)  # stopped, over its budget, or already ended
        stderr.cancel()


class TimeBudgetExceeded(Exception):
    """A page or the whole file took longer than allowed."""


async def _follow_pages(stdout: asyncio.StreamReader, settings: Settings, kind: str) -> bytes:
    """Read the child's progress lines, holding each page (from its announcement on) and the
    whole file (from the start, the child's start-up included) to their budgets; return its
    last line (the result), or b"" if it ended without one."""
    loop = asyncio.get_running_loop()
    file_deadline = loop.time() + settings.conversion_timeout_s
    page: int | None = None
    while True:
        deadline = file_deadline
        if page is not None:
            deadline = min(deadline, loop.time() + settings.conversion_page_timeout_s)
        try:
            async with asyncio.timeout_at(deadline):
                line = await stdout.readline()
        except TimeoutError:
            if page is None or loop.time() >= file_deadline:
                raise TimeBudgetExceeded(
                    f"conversion took longer than {settings.conversion_timeout_s:g} s"
                ) from None
            what = f"page {page}" if kind == "pdf" else "the image"
            raise TimeBudgetExceeded(
                f"{what} took longer than {settings.conversion_page_timeout_s:g} s to convert"
            ) from None
        if not line:
            return b""
        message = json.loads(line) if line.startswith(b"{") else {}
        if set(message) == {"page"}:
            page = int(message["page"])
            continue
        return line


async def _kill(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.kill()
    await child.wait()


def _outcome(returncode: int | None, stdout: bytes, stderr: bytes, memory_mb: int) -> Outcome:
    if returncode == 0:
        try:
            result = json.loads(stdout)
        except ValueError:
            return Crashed("conversion process ended without a result")
        if "error" in result:
            return Refused(result["error"], result["peak_rss_bytes"])
        return Converted(result["pages"], result["peak_rss_bytes"])
    tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
    log.warning("conversion_child_stderr", returncode=returncode, stderr=tail)
    if returncode == EXIT_OUT_OF_MEMORY:
        return Crashed(f"conversion ran out of memory (limit {memory_mb} MB)")
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return Crashed(f"conversion process was killed ({name})")
    return Crashed(f"conversion process crashed (exit status {returncode})")


async def _report_queue_depth(resources: Resources, stop: asyncio.Event) -> None:
    """Keep the queue-depth gauge current (files uploaded and not yet started)."""
    while not stop.is_set():
        metrics.CONVERSION_QUEUE_DEPTH.set(await store.count_waiting(resources.pool))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), QUEUE_DEPTH_INTERVAL_S)
