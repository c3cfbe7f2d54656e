"""The size syntaxes the webhook accepts: Kubernetes quantities, the fetcher's sizes and rates."""

from __future__ import annotations

import re
from decimal import Decimal

# The Kubernetes quantity grammar (k8s.io/apimachinery resource.Quantity):
# signed number, then a binary SI suffix, a decimal SI suffix or a decimal exponent.
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|m|k|M|G|T|P|E)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

# The fetcher's size syntax, kept to the strict common subset documented for annotations:
# K/M/G decimal, Ki/Mi/Gi binary, an optional B; a rate may end in /s.
_FETCHER_SIZE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)(?P<unit>K|M|G|Ki|Mi|Gi)?B?$")
_FETCHER_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity, or None when `text` is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        return None
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    exponent = int(suffix[1:])
    if abs(exponent) > 100:  # far beyond any real resource; keeps Decimal arithmetic cheap
        return None
    return number.scaleb(exponent)


def is_positive_quantity(text: str) -> bool:
    value = parse_quantity(text)
    return value is not None and value > 0


def is_fetcher_size(text: str) -> bool:
    """Whether the fetcher takes `text` as a size: it counts whole bytes (rounding down, as
    here), so a size below one byte (`0.5`, `0.9B`) would stop the fetch container with exit 2."""
    match = _FETCHER_SIZE.match(text)
    if match is None:
        return False
    return int(float(match["number"]) * _FETCHER_UNITS[match["unit"] or ""]) >= 1


def is_fetcher_rate(text: str) -> bool:
    return is_fetcher_size(text.removesuffix("/s"))
