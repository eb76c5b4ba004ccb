"""Percentiles read from the fixed bins are close to the exact ones, and bins from many
processes add up to the bins of all their requests together."""

import random

import pytest

from errands.stats.histogram import BIN_COUNT, bin_of, percentile_ms


def histogram_of(durations: list[float]) -> list[int]:
    bins = [0] * BIN_COUNT
    for duration in durations:
        bins[bin_of(duration)] += 1
    return bins


def exact_percentile(durations: list[float], quantile: float) -> float:
    ordered = sorted(durations)
    return ordered[max(int(quantile * len(ordered) + 0.999999) - 1, 0)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("quantile", [0.5, 0.95, 0.99])
def test_percentiles_are_within_five_percent(seed: int, quantile: float) -> None:
    rng = random.Random(seed)
    durations = [rng.lognormvariate(3, 1.2) for _ in range(5000)]  # median ~20 ms, long tail

    estimate = percentile_ms(histogram_of(durations), quantile)

    assert estimate == pytest.approx(exact_percentile(durations, quantile), rel=0.05)


def test_summed_histograms_equal_the_histogram_of_all_requests() -> None:
    rng = random.Random(7)
    first = [rng.uniform(1, 50) for _ in range(300)]
    second = [rng.uniform(100, 900) for _ in range(100)]

    summed = [a + b for a, b in zip(histogram_of(first), histogram_of(second), strict=True)]

    assert summed == histogram_of(first + second)
    assert percentile_ms(summed, 0.5) == percentile_ms(histogram_of(first + second), 0.5)
    assert 1 <= percentile_ms(summed, 0.5) <= 50  # type: ignore[operator]
    assert 100 <= percentile_ms(summed, 0.99) <= 900  # type: ignore[operator]


def test_bins_cover_every_duration_in_order() -> None:
    durations = [0.0, 0.01, 0.1, 0.5, 1, 9.9, 10, 250, 10_000, 600_000, 1e12]
    bins = [bin_of(duration) for duration in durations]
    assert bins == sorted(bins)
    assert bins[0] == 0 and bins[-1] == BIN_COUNT - 1


def test_no_requests_no_percentile() -> None:
    assert percentile_ms([0] * BIN_COUNT, 0.5) is None
    assert percentile_ms([], 0.99) is None
