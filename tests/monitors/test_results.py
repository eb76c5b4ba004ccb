"""The check message format and the latency histogram, without I/O."""

import random
import uuid
from datetime import UTC, datetime

import pytest

from errands.monitors.results import (
    LATENCY_BOUNDS_MS,
    CheckResult,
    InvalidCheckMessage,
    decode_check,
    encode_check,
    histogram_of,
    is_up,
    percentile_from_histogram,
)


def a_result(**changes: object) -> CheckResult:
    fields: dict[str, object] = {
        "check_id": uuid.uuid4(),
        "monitor_id": uuid.uuid4(),
        "checked_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "url": "https://example.com/",
        "status_code": 200,
        "response_time_ms": 12.5,
        "dns_ms": 1.0,
        "connect_ms": 2.0,
        "tls_ms": None,
        "first_byte_ms": 10.0,
        "regex_matched": True,
        "error_kind": None,
        "error": None,
    }
    fields.update(changes)
    return CheckResult(**fields)  # type: ignore[arg-type]


def test_a_result_survives_encoding() -> None:
    result = a_result()
    assert decode_check(encode_check(result)) == result


def test_the_message_carries_the_schema_version_and_ids() -> None:
    result = a_result()
    text = encode_check(result).decode()
    assert '"schema":1' in text
    assert str(result.check_id) in text
    assert str(result.monitor_id) in text


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"schema": 2}', "unknown schema"),
        (b'{"schema": 1, "check_id": "x"}', "bad check_id"),
    ],
)
def test_a_malformed_message_is_refused_with_its_reason(value: bytes, problem: str) -> None:
    with pytest.raises(InvalidCheckMessage, match=problem):
        decode_check(value)


def test_wrong_types_are_refused() -> None:
    good = encode_check(a_result()).decode()
    with pytest.raises(InvalidCheckMessage, match="status_code"):
        decode_check(good.replace('"status_code":200', '"status_code":true').encode())
    with pytest.raises(InvalidCheckMessage, match="error_kind"):
        decode_check(good.replace('"error_kind":null', '"error_kind":"gremlins"').encode())
    with pytest.raises(InvalidCheckMessage, match="response_time_ms"):
        decode_check(good.replace('"response_time_ms":12.5', '"response_time_ms":-1').encode())


def test_a_time_without_zone_is_refused() -> None:
    good = encode_check(a_result()).decode()
    with pytest.raises(InvalidCheckMessage, match="time zone"):
        decode_check(good.replace("+00:00", "").encode())


@pytest.mark.parametrize(
    ("status", "error_kind", "regex_matched", "up"),
    [
        (200, None, None, True),
        (301, None, True, True),
        (200, None, False, False),
        (404, None, None, False),
        (None, "timeout", None, False),
        (200, "other", None, False),
    ],
)
def test_up_means_answered_below_400_with_the_regex_found(
    status: int | None, error_kind: str | None, regex_matched: bool | None, up: bool
) -> None:
    assert is_up(status, error_kind, regex_matched) is up


def test_histogram_percentiles_are_within_the_bucket_width() -> None:
    generator = random.Random(7)
    latencies = [generator.lognormvariate(4, 0.8) for _ in range(5000)]
    ordered = sorted(latencies)
    histogram = histogram_of(latencies)
    assert sum(histogram) == len(latencies)
    for fraction in (0.5, 0.95):
        exact = ordered[int(fraction * len(ordered))]
        estimate = percentile_from_histogram(histogram, fraction, ordered[0], ordered[-1])
        assert estimate is not None
        assert abs(estimate - exact) / exact < 0.125


def test_histogram_edges() -> None:
    assert percentile_from_histogram(histogram_of([]), 0.5, None, None) is None
    single = percentile_from_histogram(histogram_of([42.0]), 0.95, 42.0, 42.0)
    assert single == 42.0
    huge = LATENCY_BOUNDS_MS[-1] * 3
    assert percentile_from_histogram(histogram_of([huge]), 0.5, huge, huge) == round(huge, 3)
    assert percentile_from_histogram(histogram_of([0.2]), 0.5, 0.2, 0.2) == 0.2
