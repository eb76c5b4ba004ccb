"""The recent-titles cache stays within its size and forgets entries after their time."""

from errands.titles.cache import RecentTitles


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_entry_goes_first() -> None:
    cache: RecentTitles[str, str] = RecentTitles(2, 60, clock=Clock())
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # "a" is now the most recent
    cache.put("c", "C")
    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == ("A", "C")


def test_entries_expire() -> None:
    clock = Clock()
    cache: RecentTitles[str, str] = RecentTitles(10, 5, clock=clock)
    cache.put("a", "A")
    clock.now = 4.9
    assert cache.get("a") == "A"
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0
