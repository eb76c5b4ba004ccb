"""Latency histograms with fixed log-spaced bins, so histograms from many processes add up."""

import math
from collections.abc import Sequence

__all__ = ["BIN_COUNT", "bin_of", "percentile_ms"]

# Bin 0 holds everything under SMALLEST_MS; bin i >= 1 spans SMALLEST_MS * 2**((i-1)/8) up to
# SMALLEST_MS * 2**(i/8), about 9% wide, so a percentile read from the bins is within ~4.5%.
SMALLEST_MS = 0.1
BINS_PER_DOUBLING = 8
# The last bin is open-ended and starts at about ten minutes.
BIN_COUNT = 1 + math.ceil(math.log2(600_000 / SMALLEST_MS) * BINS_PER_DOUBLING)


def bin_of(duration_ms: float) -> int:
    """The index of the bin that counts a request which took `duration_ms`."""
    if duration_ms < SMALLEST_MS:
        return 0
    index = 1 + int(math.log2(duration_ms / SMALLEST_MS) * BINS_PER_DOUBLING)
    return min(index, BIN_COUNT - 1)


def _bin_middle_ms(index: int) -> float:
    if index == 0:
        return SMALLEST_MS / 2
    # The geometric middle of the bin: the estimate with the smallest relative error.
    return SMALLEST_MS * 2 ** ((index - 0.5) / BINS_PER_DOUBLING)


def percentile_ms(histogram: Sequence[int], quantile: float) -> float | None:
    """The duration under which `quantile` of the counted requests finished, None if none."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(math.ceil(quantile * total), 1)
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return round(_bin_middle_ms(index), 2)
    raise AssertionError("unreachable: rank is at most the total")
