from __future__ import annotations

from decimal import Decimal

import pytest

from common.slots import ResourceSlots, SlotError, format_binary_size, parse_binary_size


@pytest.mark.parametrize("raw, expected", [
    ("8g", 8 * 1024**3), ("512m", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3)), ("4GiB", 4 * 1024**3),
    ("1024", 1024), (2048, 2048), ("10k", 10240), ("1t", 1024**4),
])
def test_binary_sizes(raw: object, expected: int) -> None:
    assert parse_binary_size(raw) == expected


@pytest.mark.parametrize("raw", ["lots", "-1g", "1x", "", True, None, [1]])
def test_bad_sizes(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_binary_size(raw)


def test_format_binary_size() -> None:
    assert format_binary_size(8 * 1024**3) == "8g"
    assert format_binary_size(1536) == "1536"
    assert format_binary_size(3072) == "3k"


def test_slots_parse_and_arithmetic() -> None:
    a = ResourceSlots.parse({"cpu": 2, "mem": "4g", "cuda.shares": "0.5"})
    b = ResourceSlots.parse({"cpu": "1.5", "mem": "1g", "cuda.shares": 0.25})
    assert (a - b) == {"cpu": Decimal("0.5"), "mem": Decimal(3 * 1024**3), "cuda.shares": Decimal("0.25")}
    assert b.fits_in(a) and not a.fits_in(b)
    assert a.missing_in(b) == ["cpu", "cuda.shares", "mem"]
    assert ResourceSlots.parse(a.to_json()) == a


@pytest.mark.parametrize("raw, field", [
    ({"cpu": -1}, "cpu"), ({"cuda.shares": "0.333"}, "cuda.shares"), ({"cuda.device": 1.5}, "cuda.device"),
    ({"mem": "lots"}, "mem"), ({"Bad Name": 1}, "Bad Name"), ({"cpu": "nan"}, "cpu"), ({"cpu": True}, "cpu"),
])
def test_invalid_slots_name_the_slot(raw: dict, field: str) -> None:
    with pytest.raises(SlotError) as info:
        ResourceSlots.parse(raw)
    assert info.value.field == field
