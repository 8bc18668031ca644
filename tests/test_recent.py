"""recent(): a cache keeps its most recently asked entries, each made once while it stays."""

from onnxprune.widths.recent import recent


def test_recent_keeps_the_latest_entries_and_makes_each_once_while_kept():
    cache, made = {}, []

    def get(key):
        return recent(cache, key, lambda: made.append(key) or key * 10, 2)
    assert [get(k) for k in (1, 2, 1, 3, 1, 2)] == [10, 20, 10, 30, 10, 20]
    assert made == [1, 2, 3, 2]  # 2 was the least recent when 3 came, 3 when 2 came back
    assert list(cache) == [1, 2]
