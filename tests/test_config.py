"""Settings: defaults, and one clear line naming an invalid setting."""

import os
import subprocess
import sys

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
