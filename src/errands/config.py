"""Settings, read from `ERRANDS_*` environment variables (and a `.env` file) and built once at
each entry point."""

import base64
import difflib
import os
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "decode_webhook_secrets", "load_settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERRANDS_", extra="ignore", frozen=True)

    # Core
    database_url: str | None = None
    data_dir: Path = Path("./.errands")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] | None = None  # unset: console on a terminal
    allow_private_targets: bool = False
    db_pool_max: int = Field(default=10, ge=1, le=200)
    db_pool_timeout_s: float = Field(default=10.0, gt=0, le=300)
    db_statement_timeout_s: float = Field(default=10.0, gt=0, le=3600)
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
    kafka_request_timeout_ms: int = Field(default=10_000, ge=1000)
    kafka_publish_wait_s: float = Field(default=2.0, gt=0)  # then the checker moves on
    kafka_publish_queue_max: int = Field(default=100_000, ge=1)  # results held while Kafka is out

    # Titles (the 10 s cap is the API's promise, so it can be lowered but never raised)
    titles_timeout_s: float = Field(default=10.0, gt=0, le=10)
    titles_max_domains: int = Field(default=1000, ge=1, le=10_000)
    titles_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    titles_cache_size: int = Field(default=1024, ge=0)  # 0 turns the cache off
    titles_cache_ttl_s: float = Field(default=300.0, gt=0)

    # Stats
    stats_flush_interval_s: float = Field(default=5.0, gt=0, le=60)
    stats_retention_days: int = Field(default=400, ge=1, le=36500)

    # Monitors: checker, sink and retention of check results
    monitor_default_timeout_s: float = Field(default=10.0, gt=0, le=60)
    monitor_max_in_flight: int = Field(default=2000, ge=1)
    monitor_regex_timeout_s: float = Field(default=0.25, gt=0)
    # A dead checker's monitors are checked again after this; renewed while a long check runs.
    monitor_lease_s: float = Field(default=15.0, gt=0)
    kafka_topic_partitions: int = Field(default=6, ge=1)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    sink_batch_size: int = Field(default=5000, ge=1)
    retention_days: int = Field(default=400, ge=1, le=36500)

    # Timers
    timer_max_total_s: int = Field(default=365 * 24 * 3600, ge=1)
    schedule_lease_s: float = Field(default=10.0, gt=0)  # queueing one occurrence: a transaction
    timer_retention_days: int = Field(default=30, ge=1, le=36500)  # finished timers

    # Webhook deliveries (every webhook Errands sends: timers, alerts, callbacks)
    webhook_secret: str | None = None  # space-separated whsec_<base64> secrets: sign with each
    delivery_timeout_s: float = Field(default=10.0, gt=0)  # per attempt, once a host slot is free
    delivery_max_per_host: int = Field(default=16, ge=1, le=32)  # the HTTP client opens 32 a host
    delivery_max_attempts: int = Field(default=12, ge=1)
    delivery_retry_base_s: float = Field(default=1.0, gt=0)
    delivery_retry_max_s: float = Field(default=3600.0, gt=0)
    delivery_retry_after_max_s: float = Field(default=3600.0, ge=0)  # cap on a receiver's wish
    delivery_lease_s: float = Field(default=30.0, gt=0)
    delivery_batch_size: int = Field(default=256, ge=1)
    # Deliveries in hand, sending or waiting for their host's slot; one host may hold half.
    delivery_max_in_flight: int = Field(default=4096, ge=2)
    delivery_poll_interval_s: float = Field(default=1.0, gt=0)
    # Deliveries are claimed this long before they are due and sent on time from memory.
    delivery_lookahead_s: float = Field(default=0.25, ge=0, le=5)
    delivery_retention_days: int = Field(default=30, ge=1, le=36500)  # finished, not timers'

    # Lifecycle: the sweeper applies each feature's retention this often
    sweep_interval_s: float = Field(default=300.0, gt=0, le=86400)

    @field_validator("webhook_secret")
    @classmethod
    def secrets_are_standard_webhooks_keys(cls, text: str | None) -> str | None:
        decode_webhook_secrets(text or "")
        return text

    @property
    def webhook_keys(self) -> list[bytes]:
        """The HMAC keys of `webhook_secret`; every webhook is signed with each."""
        return decode_webhook_secrets(self.webhook_secret or "")

    # The `errands` commands that call a running service (timers, uploads, monitors)
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    # Operations: API keys, request limits, rollout, metrics of processes without the API
    api_keys_enabled: bool = False
    api_key_cache_s: float = Field(default=5.0, ge=0, le=60)  # how late a revocation may bite
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_drain_s: float = Field(default=0.0, ge=0)  # /readyz 503 while still serving
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # worker and sink /metrics
    server_header_timeout_s: float = Field(default=10.0, gt=0, le=300)  # all headers, from byte 1
    server_body_idle_timeout_s: float = Field(default=30.0, gt=0, le=600)  # between body bytes
    server_max_connections: int = Field(default=1000, ge=1)  # more are closed when accepted

    # Console: how long a sign-in lasts, and how long the public status page is cached
    console_session_s: int = Field(default=8 * 3600, ge=60, le=30 * 24 * 3600)
    status_cache_s: float = Field(default=30.0, ge=0, le=3600)

    # Conversions: upload limits, output size, and the child processes that convert
    upload_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)  # one request, all files
    upload_max_files: int = Field(default=50, ge=1)
    upload_max_duration_s: float = Field(default=3600.0, gt=0, le=86400)  # first byte to last
    conversion_max_side: int = Field(default=3500, ge=16)
    pdf_dpi: int = Field(default=150, ge=18, le=1200)  # lowered per page to fit max_side
    max_pixels: int = Field(default=250_000_000, ge=1)  # larger images are refused unread
    max_pdf_pages: int = Field(default=500, ge=1)
    conversion_workers: int = Field(default=2, ge=1)  # child processes at once per supervisor
    conversion_child_memory_mb: int = Field(default=1024, ge=128)  # address-space limit
    conversion_timeout_s: float = Field(default=300.0, gt=0)  # one file, all its pages
    conversion_page_timeout_s: float = Field(default=20.0, gt=0)  # one page (or one image)
    conversion_lease_s: float = Field(default=60.0, gt=0)
    conversion_preview_width: int = Field(default=256, ge=16, le=1024)
    # What one upload may produce in all; the file that would exceed it fails.
    upload_max_output_pages: int = Field(default=1000, ge=1)
    upload_max_output_pixels: int = Field(default=2_500_000_000, ge=1)
    upload_max_output_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    upload_retention_days: int = Field(default=30, ge=1, le=36500)  # finished uploads, files too
    conversion_storage_retry_s: float = Field(default=10.0, gt=0)  # storage out of reach

    # Storage: unset is a folder under data_dir; s3://bucket/prefix a bucket (AWS_* variables)
    storage_url: str | None = Field(default=None, pattern=r"^s3://[^/?#]+(/[^?#]*)?$")
    storage_presign: bool = False  # GET /files answers 307 to a presigned URL of the bucket
    storage_presign_ttl_s: int = Field(default=300, ge=1, le=7 * 24 * 3600)


def decode_webhook_secrets(text: str) -> list[bytes]:
    """The keys of space-separated `whsec_<base64>` secrets (the Standard Webhooks form);
    ValueError names the first bad one."""
    keys = []
    for position, secret in enumerate(text.split(), start=1):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not secret.startswith("whsec_") or not key:
            raise ValueError(f"secret {position} is not of the form whsec_<base64>")
        keys.append(key)
    return keys


class SettingsError(Exception):
    """A setting has an invalid value; the message names it in one line."""


ENV_FILE = Path(".env")
# The test suite's own variables, read by its fixtures and never by Errands.
TEST_PREFIX = "ERRANDS_TEST_"


def load_settings(env_file: Path = ENV_FILE) -> Settings:
    """Read the environment, then `env_file` (the environment wins), turning a validation failure
    into one line per bad setting. An `ERRANDS_*` name that is no setting is refused rather than
    ignored: a misspelled `ERRANDS_API_KEYS_ENABLED` would otherwise leave the API open."""
    from_file = dotenv_values(env_file) if env_file.is_file() else {}
    unknown = sorted(
        name
        for name in {*os.environ, *from_file}
        if name.startswith("ERRANDS_")
        and not name.startswith(TEST_PREFIX)
        and name.removeprefix("ERRANDS_").lower() not in Settings.model_fields
    )
    if unknown:
        raise SettingsError("; ".join(_unknown_setting(name) for name in unknown))
    try:
        return Settings(_env_file=env_file if from_file else None)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = "ERRANDS_" + str(problem["loc"][0]).upper() if problem["loc"] else "settings"
            lines.append(f"invalid setting {name}: {problem['msg']}")
        raise SettingsError("; ".join(lines)) from None


def _unknown_setting(name: str) -> str:
    known = ["ERRANDS_" + field.upper() for field in Settings.model_fields]
    close = difflib.get_close_matches(name.upper(), known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {name}{hint}; every setting is listed in docs/operations.md"
