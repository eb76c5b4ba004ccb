"""Settings, read from `ERRANDS_*` environment variables and built once at each entry point."""

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERRANDS_", extra="ignore", frozen=True)

    # Core
    database_url: str | None = None
    data_dir: Path = Path("./.errands")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_private_targets: bool = False
    db_pool_max: int = Field(default=10, ge=1, le=200)
    shutdown_grace_s: float = Field(default=20.0, gt=0)

    # Outbound HTTP
    http_max_connections: int = Field(default=1000, ge=1)
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    http_timeout_s: float = Field(default=10.0, gt=0)

    # Kafka (unset bootstrap servers: results pass through the in-process bus)
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "errands.checks"
    kafka_group_id: str = "errands-sink"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_enable_idempotence: bool = True


class SettingsError(Exception):
    """A setting has an invalid value; the message names it in one line."""


def load_settings() -> Settings:
    """Read the environment, turning a validation failure into one line per bad setting."""
    try:
        return Settings()
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = "ERRANDS_" + str(problem["loc"][0]).upper() if problem["loc"] else "settings"
            lines.append(f"invalid setting {name}: {problem['msg']}")
        raise SettingsError("; ".join(lines)) from None
