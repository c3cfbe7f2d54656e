import pytest

from fetcher.errors import UsageError
from fetcher.units import parse_rate, parse_seconds, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        ("64K", 64_000),
        ("64k", 64_000),
        ("256MiB", 256 * 2**20),
        ("256Mi", 256 * 2**20),
        ("1.5G", 1_500_000_000),
        ("1GiB", 2**30),
        ("2T", 2 * 10**12),
        (" 10 MB ", 10_000_000),
    ],
)
def test_sizes_follow_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1M", "1X", "1.2.3M", "0", "1 GiB/s"])
def test_bad_sizes_are_usage_errors_that_show_the_value(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_size(text, what="--max-disk-buffer")
    assert "--max-disk-buffer" in caught.value.line()


@pytest.mark.parametrize(
    ("text", "expected"), [("200MB/s", 200_000_000), ("50Mi", 50 * 2**20), ("1G/s", 10**9)]
)
def test_rates_may_end_in_per_second(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("30", 30.0), ("0.5", 0.5), (" 2 ", 2.0)])
def test_seconds_are_plain_numbers(text: str, expected: float) -> None:
    assert parse_seconds(text, what="--timeout") == expected


def test_zero_seconds_only_where_zero_means_something() -> None:
    assert parse_seconds("0", what="--checkpoint-interval", zero=True) == 0
    with pytest.raises(UsageError, match="--timeout '0'"):
        parse_seconds("0", what="--timeout")


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "-inf", "1e400", "", "30s", "abc"])
def test_bad_seconds_are_usage_errors_that_show_the_value(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_seconds(text, what="--lock-wait", zero=True)
    assert f"--lock-wait {text!r}" in caught.value.line()
