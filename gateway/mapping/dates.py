"""HL7 v3 TS values (CDA) to FHIR date/dateTime/instant, and FHIR dates to index ranges."""
from __future__ import annotations

import calendar
import functools
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

# A CDA time without an offset is local time of its French sender.
SENDER_ZONE = ZoneInfo("Europe/Paris")

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?)?([+-]\d{4}|Z)?$")
_FHIR = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class InvalidTime(ValueError):
    pass


@functools.lru_cache(maxsize=64)
def _zone(offset: str | None):
    """The zone of a TS offset ('+0100', 'Z' or none). FHIR's offsets run from -14:00 to +14:00 with
    minutes under 60 (its dateTime pattern): '-2400' or '+0060' is refused, not read as another
    moment."""
    if not offset:
        return SENDER_ZONE
    if offset == "Z":
        return timezone.utc
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if minutes > 59 or hours > 14 or (hours == 14 and minutes):
        raise InvalidTime(f"'{offset}' is not a UTC offset (-1400 to +1400)")
    sign = -1 if offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def fhir_now() -> str:
    """This moment as a FHIR dateTime in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def ts_to_fhir(ts: str) -> str:
    """'20191203133000+0100' -> '2019-12-03T13:30:00+01:00'; '20191203' -> '2019-12-03'."""
    m = _TS.match(ts.strip())
    if not m:
        raise InvalidTime(f"'{ts}' is not an HL7 TS value (YYYYMMDDHHMMSS+ZZZZ)")
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    try:
        if hour is None:
            datetime(int(year), int(month or 1), int(day or 1))
            _zone(offset)   # a day has no offset to keep, but one that is no offset is an error
            return "-".join(p for p in (year, month, day) if p)
        if not (month and day):
            raise InvalidTime(f"'{ts}' has a time but no full date")
        local = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0),
                         int(float(fraction) * 1_000_000) if fraction else 0)
    except ValueError as exc:
        raise InvalidTime(f"'{ts}' is not a valid date: {exc}") from None
    aware = local.replace(tzinfo=_zone(offset))
    return aware.isoformat(timespec="seconds" if not fraction else "milliseconds")


def ts_to_instant(ts: str) -> str:
    """A full FHIR instant; a value known only to the day is taken at local midnight."""
    value = ts_to_fhir(ts)
    if "T" in value:
        return value
    parts = [int(p) for p in value.split("-")] + [1, 1]
    return datetime(parts[0], parts[1], parts[2], tzinfo=SENDER_ZONE).isoformat()


def fhir_range(value: str) -> tuple[str, str]:
    """The UTC interval a FHIR date/dateTime/instant covers, as sortable index strings."""
    try:
        return _range(value)
    except ValueError as exc:
        if isinstance(exc, InvalidTime):
            raise
        raise InvalidTime(f"'{value}' is not a valid date: {exc}") from None


def _range(value: str) -> tuple[str, str]:
    m = _FHIR.match(value.strip())
    if not m:
        raise InvalidTime(f"'{value}' is not a FHIR date or dateTime")
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    y = int(year)
    if month is None:
        low, high = datetime(y, 1, 1), datetime(y, 12, 31, 23, 59, 59, 999999)
    elif day is None:
        mo = int(month)
        low = datetime(y, mo, 1)
        high = datetime(y, mo, calendar.monthrange(y, mo)[1], 23, 59, 59, 999999)
    elif hour is None:
        low = datetime(y, int(month), int(day))
        high = _plus(low, timedelta(days=1, microseconds=-1))
    else:
        base = datetime(y, int(month), int(day), int(hour), int(minute))
        if offset:
            base = _plus(base, -_zone(offset.replace(":", "")).utcoffset(None))
        if second is None:
            low, high = base, _plus(base, timedelta(minutes=1, microseconds=-1))
        else:
            low = _plus(base, timedelta(seconds=int(second)))
            if fraction:
                low = _plus(low, timedelta(microseconds=int(float(fraction) * 1_000_000)))
                high = low
            else:
                high = _plus(low, timedelta(seconds=1, microseconds=-1))
    return _index(low), _index(high)


def _plus(moment: datetime, delta: timedelta) -> datetime:
    """`moment + delta`, held within the years 1 to 9999 that Python's datetime and the index
    strings cover: '9999-12-31T23:00:00-12:00' is in UTC past the last of them. Searches meet such
    values (`period=le9999-12-31` asks for everything), and a bound held at the end of the
    representable time finds the same rows, since nothing kept lies beyond it."""
    try:
        return moment + delta
    except OverflowError:
        return datetime.max if delta > timedelta(0) else datetime.min


def index_now() -> str:
    """Now, as an index string (UTC)."""
    return _index(datetime.now(timezone.utc).replace(tzinfo=None))


def _index(moment: datetime) -> str:
    """A naive UTC moment as an index string: 'YYYY-MM-DDTHH:MM:SS.ffffff', the year always on four
    digits (strftime wrote the year 999 as '999', which sorted after '1999')."""
    return moment.isoformat(timespec="microseconds")
