"""`errands monitors sync FILE`: make the monitors match a YAML or TOML list of sites.

Sites are matched by URL: a new URL is created, a known one updated when a setting differs.
Monitors not in the file are left alone, or deleted with `prune`. A dry run reports the same
outcomes and writes nothing.
"""

import tomllib
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.rows import dict_row
from pydantic import ValidationError

from errands.core.errors import Unprocessable
from errands.core.http import masked_url
from errands.core.resources import Resources
from errands.core.validation import describe_problems
from errands.monitors import store
from errands.monitors.api import MonitorIn, fields_of, validated_fields

__all__ = ["SitesFileError", "read_sites", "sync_sites"]


class SitesFileError(Exception):
    """The file cannot be read as a list of sites; the message says where."""


def read_sites(path: Path) -> list[MonitorIn]:
    """Parse `path`: YAML (a list, or {"monitors": [...]}) or, for `.toml`, [[monitors]] tables."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SitesFileError(f"cannot read {path}: {error}") from None
    try:
        document: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise SitesFileError(f"{path} is not valid {path.suffix[1:] or 'YAML'}: {error}") from None
    if isinstance(document, dict):
        document = document.get("monitors")
    if not isinstance(document, list):
        raise SitesFileError(f"{path}: expected a list of sites or a 'monitors' list")
    sites = []
    for number, entry in enumerate(document, start=1):
        try:
            sites.append(MonitorIn.model_validate(entry))
        except ValidationError as error:
            problems = describe_problems(error.errors())
            raise SitesFileError(f"{path}: site {number}: {problems}") from None
    urls = [site.url for site in sites]
    duplicated = sorted({url for url in urls if urls.count(url) > 1})
    if duplicated:
        raise SitesFileError(f"{path}: listed more than once: {', '.join(duplicated)}")
    return sites


async def sync_sites(
    resources: Resources, sites: list[MonitorIn], *, dry_run: bool = False, prune: bool = False
) -> list[tuple[str, str]]:
    """Create or update each site's monitor; return (outcome, url) per site, in file order, then
    ("deleted", url) for each monitor pruned.

    Every site is validated before anything is written, and all are written in one
    transaction, so a bad file changes nothing."""
    default_timeout = resources.settings.monitor_default_timeout_s
    try:
        all_fields = [
            validated_fields(resources.http, fields_of(site, default_timeout)) for site in sites
        ]
    except Unprocessable as error:
        raise SitesFileError(error.detail) from None
    outcomes = []
    # A connection of its own: the pool's bound a single use by the statement deadline, which a
    # file of thousands of sites in one transaction may outlast.
    connecting = psycopg.AsyncConnection.connect(
        resources.database_url, autocommit=True, row_factory=dict_row
    )
    async with await connecting as conn, conn.transaction(force_rollback=dry_run):
        for number, fields in enumerate(all_fields, start=1):
            try:
                outcome = await store.sync_monitor(conn, fields)
            except store.UnknownChannels as error:
                raise SitesFileError(f"site {number}: {error.detail}") from None
            outcomes.append((outcome, masked_url(fields.url)))
        if prune:
            urls = [fields.url for fields in all_fields]
            deleted = await store.delete_monitors_not_listed(conn, urls)
            outcomes += [("deleted", masked_url(url)) for url in deleted]
    return outcomes
