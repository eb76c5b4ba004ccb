"""Settings: defaults, and one clear line naming an invalid setting."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from errands.config import Settings, SettingsError, load_settings


def test_defaults_serve_the_embedded_quickstart(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ERRANDS_"):
            monkeypatch.delenv(name)
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_url is None
    assert str(settings.data_dir) == ".errands"
    assert settings.allow_private_targets is False


def test_settings_come_from_errands_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRANDS_PORT", "9001")
    monkeypatch.setenv("ERRANDS_ALLOW_PRIVATE_TARGETS", "true")
    monkeypatch.setenv("ERRANDS_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    settings = load_settings()
    assert settings.port == 9001
    assert settings.allow_private_targets is True
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert Settings().port == 9001


def test_an_invalid_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRANDS_PORT", "eighty")
    with pytest.raises(SettingsError, match="ERRANDS_PORT"):
        load_settings()


def test_the_cli_stops_with_one_line_on_an_invalid_setting() -> None:
    env = {**os.environ, "ERRANDS_LOG_LEVEL": "loud"}
    done = subprocess.run(
        [sys.executable, "-m", "errands", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "ERRANDS_LOG_LEVEL" in lines[0]


def documented_settings() -> dict[str, str]:
    """Each `ERRANDS_*` name in docs/operations.md's settings table, with its default as written.

    A row may list several names, later ones by their last words only (`ERRANDS_X_BASE_S` /
    `_MAX_S`), with one default for all or one per name (`1 / 3600`).
    """
    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    found = {}
    for row in re.findall(r"^\| (`ERRANDS_.*?) \| (.*?) \|", text, flags=re.MULTILINE):
        names = [name.strip("` ") for name in row[0].split(" / ")]
        full = [
            "_".join(names[0].split("_")[: -name.count("_")]) + name
            if name.startswith("_")
            else name
            for name in names
        ]
        defaults = [default.strip("` ") for default in row[1].split(" / ")]
        found |= dict(
            zip(full, defaults * len(full) if len(defaults) == 1 else defaults, strict=True)
        )
    return found


def test_the_operations_guide_lists_every_setting_with_its_default() -> None:
    documented = documented_settings()
    fields = {"ERRANDS_" + name.upper(): field for name, field in Settings.model_fields.items()}

    assert sorted(documented) == sorted(fields)
    for name, field in fields.items():
        default = field.default
        if default is None:
            assert documented[name] == "unset", name
        elif isinstance(default, bool):
            assert documented[name] == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(documented[name]) == default, name
        else:
            assert documented[name] == str(default) or Path(documented[name]) == default, name


def test_retention_is_bounded_to_dates_python_can_compute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ERRANDS_RETENTION_DAYS", "1000000")
    with pytest.raises(SettingsError, match="ERRANDS_RETENTION_DAYS"):
        load_settings()
