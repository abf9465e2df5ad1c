"""PURE: Kubernetes resource quantities (the subset kubemaas needs)."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

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


# Kubernetes keeps a quantity's value in an int64 (bytes, or millicores for cpu): anything past
# it is clamped by the API server, and exponents like 9e999999999 overflow Decimal arithmetic.
MAX_QUANTITY = Decimal(2**63 - 1)


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity, or one too large to mean anything."""


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity's value in base units (bytes, cores)."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        return _bounded(Decimal(str(value)), value)
    match = _QUANTITY.match(value.strip())
    if not match:
        raise QuantityError(f"{value!r} is not a quantity (expected for example 500m, 2, 4Gi)")
    number, suffix = match.groups()
    if "e" in number.lower() and suffix:
        raise QuantityError(f"{value!r} is not a quantity")
    try:
        parsed = Decimal(number)
    except InvalidOperation as err:
        raise QuantityError(f"{value!r} is not a quantity") from err
    if parsed.is_finite() and parsed.adjusted() < -30:
        return Decimal(0)  # far below a byte or a millicore; Decimal would underflow
    return _bounded(_bounded(parsed, value) * _SUFFIXES[suffix or ""], value)


def _bounded(parsed: Decimal, value: object) -> Decimal:
    """`parsed`, refused when it is not finite or past int64 (checked before any arithmetic)."""
    if not parsed.is_finite():
        raise QuantityError(f"{value!r} is not a finite quantity")
    if parsed.copy_abs() > MAX_QUANTITY:  # copy_abs and comparing: no rounding, no overflow
        raise QuantityError(f"{value!r} is too large: a Kubernetes quantity holds at most "
                            f"{MAX_QUANTITY} (about 8Ei)")
    return parsed


def same_quantity(a: object, b: object) -> bool:
    """True when a and b are the same quantity written differently (1000m == 1)."""
    if not isinstance(a, str | int) or not isinstance(b, str | int):
        return False
    try:
        return _stored(parse_quantity(a)) == _stored(parse_quantity(b))
    except QuantityError:
        return False


def _stored(value: Decimal) -> Decimal:
    """The value as the API server keeps it: nothing finer than a milli-unit, rounded up
    (cpu '0.00001' comes back as '1m'; compared exactly, it drifted on every resync)."""
    return (value * 1000).to_integral_value(rounding=ROUND_CEILING) / 1000
