"""A check result as the checker publishes it and the sink stores it, and the latency histogram
that the hourly rollups keep."""

import bisect
import functools
import json
import re
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "DEFAULT_EXPECTED_STATUS",
    "LATENCY_BOUNDS_MS",
    "SCHEMA_VERSION",
    "CheckResult",
    "ErrorKind",
    "InvalidCheckMessage",
    "decode_check",
    "encode_check",
    "histogram_of",
    "is_up",
    "latency_bucket",
    "parse_expected_status",
    "percentile_from_histogram",
    "status_expected",
]

SCHEMA_VERSION = 1

ErrorKind = Literal["dns", "connect", "tls", "timeout", "other"]
ERROR_KINDS: frozenset[str] = frozenset({"dns", "connect", "tls", "timeout", "other"})

# Upper bounds of the latency histogram buckets, 25% apart from 1 ms to about a minute, so a
# percentile read from a rollup is within 12.5% of the exact one. Stored rollups depend on these
# values: never change them, only add a new column if other buckets are ever needed.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(round(1.25**i, 3) for i in range(50))
HISTOGRAM_SIZE = len(LATENCY_BOUNDS_MS) + 1  # bucket 0 is below 1 ms, the last above the top

# Times are stored as PostgreSQL real (single precision), which refuses a number above its largest
# value or a non-zero one below its smallest: such a message could never be stored.
REAL_MIN, REAL_MAX = 1.401298464324817e-45, 3.4028234663852886e38


@dataclass(frozen=True)
class CheckResult:
    """One check of one monitor. `response_time_ms` and the phases are set only when a response
    arrived; `error_kind` and `error` only when none did (or the regex search failed).
    `accepted` is the monitor's own rules' verdict on the answer (expected status, regex mode);
    None, in results from checkers that predate those rules, means the default rule (is_up)."""

    check_id: uuid.UUID
    monitor_id: uuid.UUID
    checked_at: datetime
    url: str
    status_code: int | None
    response_time_ms: float | None
    dns_ms: float | None
    connect_ms: float | None
    tls_ms: float | None
    first_byte_ms: float | None
    regex_matched: bool | None
    error_kind: ErrorKind | None
    error: str | None
    accepted: bool | None = None
    tls_expires_at: datetime | None = None

    @property
    def up(self) -> bool:
        if self.accepted is not None:
            return self.error_kind is None and self.accepted
        return is_up(self.status_code, self.error_kind, self.regex_matched)


def is_up(status_code: int | None, error_kind: str | None, regex_matched: bool | None) -> bool:
    """A site is up when it answered below 400 and the regex, if any, was found."""
    return (
        error_kind is None
        and status_code is not None
        and status_code < 400
        and regex_matched is not False
    )


DEFAULT_EXPECTED_STATUS = "200-399"
STATUS_RANGE = re.compile(r"^([1-9]\d\d)(?:-([1-9]\d\d))?$")


def parse_expected_status(text: str) -> list[tuple[int, int]]:
    """ "200-299,301" -> [(200, 299), (301, 301)]; raise ValueError naming a bad part."""
    ranges = []
    for part in text.split(","):
        match = STATUS_RANGE.match(part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a status code (100-999) or a range of them")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if low > high:
            raise ValueError(f"{part.strip()!r}: the range ends before it starts")
        ranges.append((low, high))
    return ranges


@functools.lru_cache(maxsize=1024)
def _expected_ranges(expected: str) -> tuple[tuple[int, int], ...]:
    """A monitor's setting parsed once, not on each of its checks."""
    return tuple(parse_expected_status(expected))


def status_expected(status_code: int, expected: str) -> bool:
    return any(low <= status_code <= high for low, high in _expected_ranges(expected))


class InvalidCheckMessage(ValueError):
    """A message on the checks topic that is not a check result this version can store."""


def encode_check(result: CheckResult) -> bytes:
    fields = asdict(result)
    fields["check_id"] = str(result.check_id)
    fields["monitor_id"] = str(result.monitor_id)
    fields["checked_at"] = result.checked_at.isoformat()
    if result.tls_expires_at is not None:
        fields["tls_expires_at"] = result.tls_expires_at.isoformat()
    return json.dumps({"schema": SCHEMA_VERSION, **fields}, separators=(",", ":")).encode()


def _optional(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if value is None:
        return None
    # bool is a subclass of int: a boolean is only accepted where a boolean is expected.
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise InvalidCheckMessage(f"{name} has the wrong type")
    return value


def _milliseconds(doc: dict[str, Any], name: str) -> float | None:
    value = _optional(doc, name, (int, float))
    if value is not None and not (value == 0 or REAL_MIN <= value <= REAL_MAX):
        raise InvalidCheckMessage(f"{name} is not a non-negative number that fits a real")
    return None if value is None else float(value)


def decode_check(value: bytes) -> CheckResult:
    """Parse and validate one message; raise InvalidCheckMessage naming the first problem."""
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InvalidCheckMessage(f"not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise InvalidCheckMessage("not a JSON object")
    if doc.get("schema") != SCHEMA_VERSION:
        raise InvalidCheckMessage(f"unknown schema {doc.get('schema')!r}")
    try:
        check_id = uuid.UUID(doc["check_id"])
        monitor_id = uuid.UUID(doc["monitor_id"])
        checked_at = datetime.fromisoformat(doc["checked_at"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InvalidCheckMessage(f"bad check_id, monitor_id or checked_at: {error!r}") from None
    if checked_at.tzinfo is None:
        raise InvalidCheckMessage("checked_at has no time zone")
    try:
        checked_at = checked_at.astimezone(UTC)
    except OverflowError:  # a time at either end of the calendar, moved to UTC
        raise InvalidCheckMessage("checked_at is out of range") from None
    status_code = _optional(doc, "status_code", int)
    if status_code is not None and not 100 <= status_code <= 999:
        raise InvalidCheckMessage("status_code is out of range")
    error_kind = _optional(doc, "error_kind", str)
    if error_kind is not None and error_kind not in ERROR_KINDS:
        raise InvalidCheckMessage(f"unknown error_kind {error_kind!r}")
    tls_expires_at = _optional(doc, "tls_expires_at", str)
    try:
        tls_expiry = None if tls_expires_at is None else datetime.fromisoformat(tls_expires_at)
    except ValueError:
        raise InvalidCheckMessage("tls_expires_at is not an ISO 8601 time") from None
    if tls_expiry is not None and tls_expiry.tzinfo is None:
        raise InvalidCheckMessage("tls_expires_at has no time zone")
    return CheckResult(
        check_id=check_id,
        monitor_id=monitor_id,
        checked_at=checked_at,
        url=_optional(doc, "url", str) or "",
        status_code=status_code,
        response_time_ms=_milliseconds(doc, "response_time_ms"),
        dns_ms=_milliseconds(doc, "dns_ms"),
        connect_ms=_milliseconds(doc, "connect_ms"),
        tls_ms=_milliseconds(doc, "tls_ms"),
        first_byte_ms=_milliseconds(doc, "first_byte_ms"),
        regex_matched=_optional(doc, "regex_matched", bool),
        error_kind=error_kind,
        error=_optional(doc, "error", str),
        accepted=_optional(doc, "accepted", bool),
        tls_expires_at=tls_expiry,
    )


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a response time; the same rule as SQL's width_bucket."""
    return bisect.bisect_right(LATENCY_BOUNDS_MS, ms)


def histogram_of(latencies_ms: list[float]) -> list[int]:
    counts = [0] * HISTOGRAM_SIZE
    for ms in latencies_ms:
        counts[latency_bucket(ms)] += 1
    return counts


def percentile_from_histogram(
    histogram: list[int], fraction: float, min_ms: float | None, max_ms: float | None
) -> float | None:
    """Estimate a percentile by interpolating within the bucket that holds it, clamped to the
    observed minimum and maximum."""
    total = sum(histogram)
    if total == 0 or min_ms is None or max_ms is None:
        return None
    rank = fraction * total
    seen = 0
    for bucket, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_MS[bucket - 1] if bucket > 0 else 0.0
            high = LATENCY_BOUNDS_MS[bucket] if bucket < len(LATENCY_BOUNDS_MS) else max_ms
            low, high = max(low, min_ms), min(high, max_ms)
            estimate = low + (high - low) * (rank - seen) / count
            return round(min(max(estimate, min_ms), max_ms), 3)
        seen += count
    return round(max_ms, 3)
