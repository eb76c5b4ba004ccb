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


def test_a_dotenv_file_sets_what_the_environment_does_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ERRANDS_PORT=9002\nERRANDS_LOG_LEVEL=debug\n# a comment\nOTHER=1\n")
    monkeypatch.setenv("ERRANDS_LOG_LEVEL", "warning")

    settings = load_settings(env_file)

    assert settings.port == 9002
    assert settings.log_level == "warning"


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_misspelled_setting_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    env_file = tmp_path / ".env"
    if where == "environment":
        monkeypatch.setenv("ERRANDS_API_KEY_ENABLED", "true")
    else:
        env_file.write_text("ERRANDS_API_KEY_ENABLED=true\n")

    with pytest.raises(SettingsError) as refused:
        load_settings(env_file)

    assert str(refused.value) == (
        "unknown setting ERRANDS_API_KEY_ENABLED (did you mean ERRANDS_API_KEYS_ENABLED?); "
        "every setting is listed in docs/operations.md"
    )


def test_the_test_suites_own_variables_are_not_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERRANDS_TEST_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert load_settings(tmp_path / ".env").kafka_bootstrap_servers is None


def test_the_cli_refuses_to_start_on_a_misspelled_setting(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ERRANDS_")}
    done = subprocess.run(
        [sys.executable, "-m", "errands", "migrate"],
        env={**env, "ERRANDS_PROT": "9000", "ERRANDS_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "errands: unknown setting ERRANDS_PROT (did you mean ERRANDS_PORT?); every setting is "
        "listed in docs/operations.md\n"
    )
