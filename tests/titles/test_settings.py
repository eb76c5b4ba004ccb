"""The titles cap can be lowered but never raised above the 10 s the API promises."""

import pytest
from pydantic import ValidationError

from errands.config import Settings, SettingsError, load_settings


def test_defaults() -> None:
    settings = Settings()
    assert settings.titles_timeout_s == 10
    assert settings.titles_max_domains == 1000
    assert settings.titles_max_body_bytes == 1024 * 1024


@pytest.mark.parametrize("value", [10.5, 0, -1])
def test_cap_outside_zero_to_ten_seconds_is_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        Settings(titles_timeout_s=value)


def test_bad_cap_from_the_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERRANDS_TITLES_TIMEOUT_S", "30")
    with pytest.raises(SettingsError, match="ERRANDS_TITLES_TIMEOUT_S"):
        load_settings()
