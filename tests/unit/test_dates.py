from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mapping.dates import InvalidTime, fhir_range, ts_to_fhir, ts_to_instant


@pytest.mark.parametrize("ts, expected", [
    ("20191203133000+0100", "2019-12-03T13:30:00+01:00"),
    ("20191203", "2019-12-03"),
    ("201912", "2019-12"),
    ("2019", "2019"),
    ("201907011200", "2019-07-01T12:00:00+02:00"),   # no offset: Paris summer time
    ("20190101120000", "2019-01-01T12:00:00+01:00"),  # no offset: Paris winter time
    ("20191203133000Z", "2019-12-03T13:30:00+00:00"),
    ("20191203133000.123-0500", "2019-12-03T13:30:00.123-05:00"),
])
def test_cda_times_become_fhir_datetimes(ts, expected):
    assert ts_to_fhir(ts) == expected


@pytest.mark.parametrize("ts", ["", "2019-12-03", "20191332", "20190230", "abc", "2019120312"[:9],
                                "20240101000000-2400", "20240101000000+0060", "20240101000000+1401",
                                "20240101+9999"])
def test_invalid_times_are_refused(ts):
    with pytest.raises(InvalidTime):
        ts_to_fhir(ts)


def test_offsets_reach_fourteen_hours_either_way():
    assert ts_to_fhir("20240101000000+1400") == "2024-01-01T00:00:00+14:00"
    assert ts_to_fhir("20240101000000-1400") == "2024-01-01T00:00:00-14:00"
    assert ts_to_fhir("20240101+0100") == "2024-01-01"


def test_instant_needs_a_time():
    assert ts_to_instant("20191203") == "2019-12-03T00:00:00+01:00"


def test_ranges_cover_the_precision():
    assert fhir_range("2019") == ("2019-01-01T00:00:00.000000", "2019-12-31T23:59:59.999999")
    assert fhir_range("2020-02") == ("2020-02-01T00:00:00.000000", "2020-02-29T23:59:59.999999")
    assert fhir_range("2019-12-03T13:30:00+01:00") == ("2019-12-03T12:30:00.000000", "2019-12-03T12:30:00.999999")


def test_ranges_past_the_last_or_before_the_first_moment_stop_there():
    """In UTC, '9999-12-31T23:00-12:00' is in the year 10000, which no datetime holds."""
    assert fhir_range("9999-12-31") == ("9999-12-31T00:00:00.000000", "9999-12-31T23:59:59.999999")
    assert fhir_range("9999-12-31T23:00:00-12:00") == ("9999-12-31T23:59:59.999999", "9999-12-31T23:59:59.999999")
    assert fhir_range("0001-01-01T00:00+14:00")[0] == "0001-01-01T00:00:00.000000"


@given(st.one_of(st.datetimes(min_value=datetime(1, 1, 1)), st.sampled_from([datetime(1, 1, 1), datetime.max])),
       st.sampled_from([4, 7, 10, 16, 19, 26]), st.integers(-14 * 60, 14 * 60))
def test_any_fhir_moment_of_any_year_and_offset_has_a_range(moment, length, offset):
    value = moment.isoformat(timespec="microseconds")[:length]
    if length > 10:
        sign = "-" if offset < 0 else "+"
        value += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    low, high = fhir_range(value)
    assert low <= high


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)))
def test_any_full_ts_round_trips_to_a_range_containing_it(moment):
    ts = moment.strftime("%Y%m%d%H%M%S") + "+0000"
    low, high = fhir_range(ts_to_fhir(ts))
    expected = moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S")
    assert low.startswith(expected) and low <= high


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)),
       st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)))
def test_index_strings_sort_as_the_moments_they_stand_for(first, second):
    """Dates are searched by comparing index strings: they must sort as the moments do, in any year
    (the year 999 was written '999', after '1999')."""
    low_first = fhir_range(first.isoformat(timespec="microseconds") + "Z")[0]
    low_second = fhir_range(second.isoformat(timespec="microseconds") + "Z")[0]
    assert (low_first < low_second) == (first < second)
