from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fetcher.errors import UsageError
from fetcher.units import parse_size
from webhook.core.quantities import (
    is_fetcher_rate,
    is_fetcher_size,
    is_positive_quantity,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20Gi", Decimal(20 * 2**30)),
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5G", Decimal(1_500_000_000)),
        ("1e3", Decimal(1000)),
        ("1E", Decimal(10**18)),
        (".5", Decimal("0.5")),
        ("128974848", Decimal(128974848)),
        ("-1", Decimal(-1)),
    ],
)
def test_kubernetes_quantities_parse(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "20GB", "20 Gi", "1.2.3", "ten", "5gi", "1e", "20Gi "])
def test_non_quantities_are_rejected(text: str) -> None:
    assert parse_quantity(text) is None
    assert not is_positive_quantity(text)


@pytest.mark.parametrize("text", ["0", "-1", "0Gi"])
def test_zero_and_negative_quantities_are_not_positive(text: str) -> None:
    assert not is_positive_quantity(text)


@pytest.mark.parametrize("text", ["256MiB", "1G", "1GiB", "512", "1.5GB", "64K", "64Ki"])
def test_fetcher_sizes(text: str) -> None:
    assert is_fetcher_size(text)


@pytest.mark.parametrize(
    "text", ["", "0", "256 MiB", "1T", "1g", "-5M", "MiB", "1Gi/s", "0.5", "0.9B", "0.0009K"]
)
def test_fetcher_sizes_refused(text: str) -> None:
    assert not is_fetcher_size(text)


@pytest.mark.parametrize("text", ["200MB/s", "50Mi", "1G/s", "100KB"])
def test_fetcher_rates(text: str) -> None:
    assert is_fetcher_rate(text)


@pytest.mark.parametrize("text", ["200MB/h", "fast", "0/s", "/s", "0.5/s", "0.5B/s"])
def test_fetcher_rates_refused(text: str) -> None:
    assert not is_fetcher_rate(text)


@given(
    whole=st.integers(0, 2) | st.integers(0, 10**6),  # the boundary at one byte, and beyond
    fraction=st.none() | st.from_regex(r"\A[0-9]{1,6}\Z"),
    unit=st.sampled_from(["", "K", "M", "G", "Ki", "Mi", "Gi"]),
    b=st.booleans(),
)
def test_a_size_the_webhook_admits_is_one_the_fetcher_takes(
    whole: int, fraction: str | None, unit: str, b: bool
) -> None:
    # Admitting what the fetcher refuses would leave the pod in Init:Error with exit 2.
    text = f"{whole}{'.' + fraction if fraction else ''}{unit}{'B' if b else ''}"
    try:
        parse_size(text)
        fetcher_takes = True
    except UsageError:
        fetcher_takes = False
    assert is_fetcher_size(text) == fetcher_takes, text
