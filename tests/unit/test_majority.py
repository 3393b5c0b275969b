"""The day a child comes of age, as the access rules' SQL bound and as the date a page shows,
against age counted as a person counts it."""
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from gateway.access.context import came_of_age_on, minor_born_after


def age_on(born: date, day: date) -> int:
    """Whole years: one more each birthday (one born on 29 February has it on 1 March, some years)."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


@given(born=st.dates(date(1900, 1, 1), date(2100, 12, 31)), day=st.dates(date(1918, 1, 1), date(2118, 12, 31)))
def test_the_sql_bound_and_the_date_shown_agree_with_age_counted_in_years(born, day):
    minor = age_on(born, day) < 18
    assert (born.isoformat() >= minor_born_after(day)) == minor
    assert (day < came_of_age_on(born)) == minor


def test_the_boundaries():
    assert came_of_age_on(date(2008, 12, 6)) == date(2026, 12, 6)
    assert minor_born_after(date(2026, 12, 6)) == "2008-12-07"   # born on 6 December 2008: of age today
    # Born on 29 February: of age on 1 March (eighteen years after a leap year is none).
    assert came_of_age_on(date(2008, 2, 29)) == date(2026, 3, 1)
    assert came_of_age_on(date(2012, 2, 29)) == date(2030, 3, 1)
    assert came_of_age_on(date(2010, 2, 28)) == date(2028, 2, 28)
    assert minor_born_after(date(2026, 2, 28)) == "2008-02-29"
    assert minor_born_after(date(2028, 2, 29)) == "2010-03-01"
