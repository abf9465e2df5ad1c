"""PURE: Kubernetes resource quantities (the subset kubemaas needs)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity's value in base units (bytes, cores)."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if not match:
        raise QuantityError(f"{value!r} is not a quantity (expected for example 500m, 2, 4Gi)")
    number, suffix = match.groups()
    if "e" in number.lower() and suffix:
        raise QuantityError(f"{value!r} is not a quantity")
    try:
        return Decimal(number) * _SUFFIXES[suffix or ""]
    except InvalidOperation as err:
        raise QuantityError(f"{value!r} is not a quantity") from err


def same_quantity(a: object, b: object) -> bool:
    """True when a and b are the same quantity written differently (1000m == 1)."""
    if not isinstance(a, str | int) or not isinstance(b, str | int):
        return False
    try:
        return parse_quantity(a) == parse_quantity(b)
    except QuantityError:
        return False
