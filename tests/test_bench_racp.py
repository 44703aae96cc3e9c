"""Smoke test of bench.racp on a few records: both sides complete and exact (no timing asserted)."""

from __future__ import annotations

import pytest

from bench import racp


async def test_a_small_round_downloads_every_record_and_the_raw_side_gets_the_same_bytes():
    meter = racp.meter_profile(20)
    values = racp.raw_values(meter)
    assert len(values) == 20 and all(context is not None for _, context in values)

    download, raw = await racp.one_round(meter, values, raw_first=True)  # checks both sides

    assert download.records == 20 and download.download > 0 and raw > 0
    assert [r.sequence for r in download.readings] == list(range(20))
    assert [r.raw for r in download.readings] == [m.hex() for m, _ in values]
    assert all(dict(r.context).keys() >= {"meal", "tester", "health"} for r in download.readings)
    assert download.summary.readings == 20 and not download.summary.malformed


async def test_the_checks_catch_an_incomplete_download():
    meter = racp.meter_profile(20)
    values = racp.raw_values(meter)
    download, _ = await racp.one_round(meter, values, raw_first=False)
    download.readings.pop(7)
    with pytest.raises(AssertionError, match="incomplete"):
        racp.check_download(download, values)


async def test_the_profiled_round_reports_where_time_goes():
    meter = racp.meter_profile(20)
    report = await racp.profile_round(meter, racp.raw_values(meter), 5)
    assert "drivers.codecs (decode)" in report and "(b) raw" in report
