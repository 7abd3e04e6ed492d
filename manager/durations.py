"""Token durations: a number of seconds or ``30m``, ``1h``, ``3d``, ``1w``, ``1mo``, ``1yr``."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400, "yr": 365 * 86400,
          "y": 365 * 86400}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w|mo|yr|y)?\s*$", re.IGNORECASE)


def parse_duration(value: str | float) -> float:
    """Seconds; raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds or a string like '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _RE.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r}; use seconds or a suffix s, m, h, d, w, mo, yr")
        try:
            number = Decimal(match.group(1))
        except InvalidOperation:
            raise ValueError(f"invalid duration {value!r}") from None
        seconds = float(number * _UNITS[(match.group(2) or "s").lower()])
    if not seconds > 0:
        raise ValueError("must be positive")
    return seconds
