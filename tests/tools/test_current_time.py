from __future__ import annotations

import time
from datetime import datetime

import pytest

from tools.current_time import current_time
from tools.errors import ToolInputError


def test_named_zone_gives_iso_time_with_its_offset() -> None:
    result = current_time("Asia/Tokyo")
    assert result.timezone == "Asia/Tokyo"
    assert result.utc_offset == "+09:00"
    assert result.iso.endswith("+09:00")
    assert datetime.fromisoformat(result.iso).timestamp() == pytest.approx(result.unix_time, abs=1e-3)
    assert abs(result.unix_time - time.time()) < 5


def test_default_is_the_local_zone_with_a_zone_name() -> None:
    result = current_time()
    assert result.timezone
    assert abs(result.unix_time - time.time()) < 5


def test_utc_spellings_are_accepted() -> None:
    assert current_time("utc").utc_offset == "+00:00"


def test_negative_offsets_are_formatted() -> None:
    assert current_time("America/St_Johns").utc_offset in {"-03:30", "-02:30"}


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe", ""])
def test_unknown_zone_is_a_clear_error(zone: str) -> None:
    if not zone:
        assert current_time(zone).timezone  # blank means the default zone
        return
    with pytest.raises(ToolInputError, match="unknown time zone"):
        current_time(zone)
