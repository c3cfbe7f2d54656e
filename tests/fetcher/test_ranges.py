from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.sources.ranges import RangeSet

spans = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=25)


def _model(pairs: list[tuple[int, int]]) -> set[int]:
    return {byte for start, size in pairs for byte in range(start, start + size)}


@settings(max_examples=300, deadline=None)
@given(spans, st.integers(0, 260), st.integers(0, 260))
def test_rangeset_agrees_with_a_set_of_bytes(
    pairs: list[tuple[int, int]], probe: int, cut: int
) -> None:
    ranges = RangeSet((start, start + size) for start, size in pairs)
    model = _model(pairs)
    covered = {b for start, end in ranges.as_list() for b in range(start, end)}
    assert covered == model
    merged = ranges.as_list()
    assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))
    end = probe
    while end in model:
        end += 1
    assert ranges.contiguous_end(probe) == end
    gap = ranges.first_gap(probe, 260)
    missing = [b for b in range(probe, 260) if b not in model]
    if missing:
        assert gap is not None
        assert gap[0] == missing[0]
        assert all(b not in model for b in range(*gap))
    else:
        assert gap is None
    assert ranges.total(cut) == len([b for b in model if b >= cut])
    ranges.remove_below(cut)
    assert {b for s, e in ranges.as_list() for b in range(s, e)} == {b for b in model if b >= cut}


@settings(max_examples=300, deadline=None)
@given(spans, st.integers(0, 260), st.integers(0, 60))
def test_rangeset_remove_agrees_with_a_set_of_bytes(
    pairs: list[tuple[int, int]], start: int, size: int
) -> None:
    ranges = RangeSet((s, s + n) for s, n in pairs)
    ranges.remove(start, start + size)
    expected = _model(pairs) - set(range(start, start + size))
    merged = ranges.as_list()
    assert {b for s, e in merged for b in range(s, e)} == expected
    assert all(s < e for s, e in merged)
    assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))
