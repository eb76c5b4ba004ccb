"""`errands monitors sync FILE`: YAML or TOML lists of sites, matched by URL."""

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from errands.config import Settings
from errands.core.resources import Resources, open_resources
from errands.monitors.sync import SitesFileError, read_sites, sync_sites

YAML_SITES = """
monitors:
  - url: https://example.com/
    interval_s: 60
    regex: "Example Domain"
  - url: https://example.org/health
    interval_s: 30
    method: HEAD
    timeout_s: 5
"""

TOML_SITES = """
[[monitors]]
url = "https://example.com/"
interval_s = 120
regex = "Example Domain"

[[monitors]]
url = "https://example.net/"
interval_s = 10
"""


async def sync(settings: Settings, path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": str(settings.database_url),
        "ERRANDS_DATA_DIR": str(settings.data_dir),
        "ERRANDS_LOG_LEVEL": "warning",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "errands", "monitors", "sync", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def monitors(settings: Settings) -> dict[str, dict[str, object]]:
    async with await psycopg.AsyncConnection.connect(
        str(settings.database_url), row_factory=dict_row
    ) as conn:
        cursor = await conn.execute(
            "SELECT url, interval_s, method, timeout_s, regex FROM monitors"
        )
        return {str(row["url"]): row for row in await cursor.fetchall()}


async def test_sync_creates_updates_and_reports_what_changed(
    settings: Settings, tmp_path: Path
) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text(YAML_SITES)
    first = await sync(settings, sites)
    assert first.returncode == 0, first.stderr
    assert "created    https://example.com/" in first.stdout
    assert "created    https://example.org/health" in first.stdout
    assert "2 of 2 monitors changed" in first.stdout
    stored = await monitors(settings)
    assert stored["https://example.org/health"]["method"] == "HEAD"
    assert stored["https://example.org/health"]["timeout_s"] == 5
    assert stored["https://example.com/"]["regex"] == "Example Domain"

    again = await sync(settings, sites)
    assert "unchanged  https://example.com/" in again.stdout
    assert "0 of 2 monitors changed" in again.stdout

    toml = tmp_path / "sites.toml"
    toml.write_text(TOML_SITES)
    third = await sync(settings, toml)
    assert third.returncode == 0, third.stderr
    assert "updated    https://example.com/" in third.stdout
    assert "created    https://example.net/" in third.stdout
    stored = await monitors(settings)
    assert stored["https://example.com/"]["interval_s"] == 120
    # Sites missing from the file are left alone.
    assert set(stored) == {
        "https://example.com/",
        "https://example.org/health",
        "https://example.net/",
    }


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        (
            "bad.yaml",
            "- {url: 'https://a.test/', interval_s: 60}\n- {url: 'https://b.test/', regex: '(x'}\n",
            "site 2: interval_s: Field required; regex: invalid regex",
        ),
        ("broken.toml", "[[monitors]\nurl =", "not valid toml"),
        ("scalar.yaml", "just text", "expected a list"),
        (
            "twice.yaml",
            "- {url: 'https://a.test/', interval_s: 60}\n"
            "- {url: 'https://a.test/', interval_s: 90}\n",
            "listed more than once: https://a.test/",
        ),
    ],
)
def test_a_file_that_is_not_a_list_of_sites_is_refused(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SitesFileError, match=re.escape(reason)):
        read_sites(path)


async def test_an_invalid_site_changes_nothing(resources: Resources, tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text(
        "- {url: 'https://a.test/', interval_s: 60}\n- {url: 'gopher://b.test/', interval_s: 60}\n"
    )
    with pytest.raises(SitesFileError, match="url is not allowed"):
        await sync_sites(resources, read_sites(path))
    assert await monitors(resources.settings) == {}


async def test_the_command_exits_2_with_the_reason(settings: Settings, tmp_path: Path) -> None:
    result = await sync(settings, tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert result.stdout == ""


async def test_a_site_naming_no_such_channel_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "sites.yaml"
    missing = "00000000-0000-4000-8000-000000000000"
    path.write_text(
        "- {url: 'https://a.test/', interval_s: 60}\n"
        f"- {{url: 'https://b.test/', interval_s: 60, channels: ['{missing}']}}\n"
    )
    result = await sync(settings, path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"errands: site 2: no channel {missing}"
    assert await monitors(settings) == {}, "the first site was not written either"


async def test_a_file_longer_to_write_than_the_pool_deadline_is_synced_whole(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text(
        "".join(f"- {{url: 'https://s{n}.test/', interval_s: 60}}\n" for n in range(400))
    )
    hurried = settings.model_copy(update={"db_statement_timeout_s": 0.2})
    async with open_resources(hurried) as resources:
        outcomes = await sync_sites(resources, read_sites(path))
    assert [outcome for outcome, _ in outcomes] == ["created"] * 400
    assert len(await monitors(settings)) == 400
