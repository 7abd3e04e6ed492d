"""Resource slots: ``cpu`` (cores), ``mem`` (bytes), ``cuda.device`` (whole GPUs), ``cuda.shares`` (GPU fractions).

Quantities are :class:`decimal.Decimal` so fractional GPU shares add and subtract exactly (quantum 0.01).
``mem`` accepts binary sizes such as ``8g``, ``512m``, ``1.5G``, ``4GiB`` or a plain byte count.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

KNOWN_SLOTS = ("cpu", "mem", "cuda.device", "cuda.shares")
BYTES_SLOTS = frozenset({"mem"})
SHARES_QUANTUM = Decimal("0.01")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SLOT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_\-]+)?$")
# Bounds keep a hostile request from building absurd numbers (the values are stored and summed).
MAX_SLOT_VALUE = Decimal(10) ** 20
MAX_SLOTS = 32


class SlotError(ValueError):
    """A slot name or quantity is invalid; ``field`` names the offending slot."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_binary_size(value: Any) -> Decimal:
    """Parse ``8g``/``512m``/``1.5GiB``/``1024`` into a byte count (binary units: 1k = 1024)."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number or a string like '8g'")
    if isinstance(value, (int, Decimal)):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(str(value))
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(f"invalid size {value!r}; use a byte count or a binary size like '8g' or '512m'")
        number, unit, _ = match.groups()
        result = Decimal(number) * (Decimal(1024) ** _SIZE_POW[unit.lower()])
    else:
        raise ValueError("a size must be a number or a string like '8g'")
    return result.to_integral_value(rounding=ROUND_DOWN)


def format_binary_size(num: Decimal | int) -> str:
    """Render bytes with the largest exact binary unit, e.g. ``8589934592`` → ``8g``."""
    value = int(num)
    for unit in ("e", "p", "t", "g", "m", "k"):
        factor = 1024 ** _SIZE_POW[unit]
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_quantity(name: str, value: Any) -> Decimal:
    if not _SLOT_NAME_RE.match(name):
        raise SlotError(name, "invalid slot name")
    try:
        if name in BYTES_SLOTS:
            qty = parse_binary_size(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
                raise ValueError("must be a number")
            qty = Decimal(str(value).strip())
            if not qty.is_finite():
                raise ValueError("must be finite")
    except InvalidOperation:  # its text is decimal's internal "[<class 'decimal.ConversionSyntax'>]"
        raise SlotError(name, "must be a number") from None
    except ValueError as exc:
        raise SlotError(name, str(exc) if str(exc) else "must be a number") from None
    if qty < 0:
        raise SlotError(name, "must not be negative")
    if qty > MAX_SLOT_VALUE:
        raise SlotError(name, "is too large")
    if name == "cuda.shares" and qty != qty.quantize(SHARES_QUANTUM):
        raise SlotError(name, f"must be a multiple of {SHARES_QUANTUM}")
    if name == "cuda.device" and qty != qty.to_integral_value():
        raise SlotError(name, "must be a whole number of devices (use cuda.shares for fractions)")
    return qty


class ResourceSlots(dict[str, Decimal]):
    """A mapping of slot name → quantity with exact arithmetic."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> ResourceSlots:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise SlotError("resources", "must be a mapping of slot name to quantity")
        if len(raw) > MAX_SLOTS:
            raise SlotError("resources", f"at most {MAX_SLOTS} slots")
        return cls({str(k): parse_quantity(str(k), v) for k, v in raw.items()})

    def to_json(self) -> dict[str, str]:
        """Serialise as strings so no precision is lost in JSON."""
        return {k: format(v.normalize(), "f") for k, v in sorted(self.items())}

    def __add__(self, other: Mapping[str, Decimal]) -> ResourceSlots:
        out = ResourceSlots(self)
        for k, v in other.items():
            out[k] = out.get(k, Decimal(0)) + v
        return out

    def __sub__(self, other: Mapping[str, Decimal]) -> ResourceSlots:
        out = ResourceSlots(self)
        for k, v in other.items():
            out[k] = out.get(k, Decimal(0)) - v
        return out

    def fits_in(self, capacity: Mapping[str, Decimal]) -> bool:
        """True when every requested quantity is available in ``capacity`` (missing slot = 0)."""
        return all(v <= capacity.get(k, Decimal(0)) for k, v in self.items() if v > 0)

    def missing_in(self, capacity: Mapping[str, Decimal]) -> list[str]:
        return [k for k, v in sorted(self.items()) if v > capacity.get(k, Decimal(0))]

    @classmethod
    def total(cls, items: Iterable[Mapping[str, Decimal]]) -> ResourceSlots:
        out = cls()
        for item in items:
            out = out + item
        return out
