"""Crontab expressions, parsed and matched by kiq's core (UTC, minute resolution).

    >>> c = Crontab("*/15 9-17 * * MON-FRI")
    >>> c.next_after(datetime(2024, 1, 1, tzinfo=timezone.utc))
    datetime.datetime(2024, 1, 1, 9, 0, tzinfo=datetime.timezone.utc)

Five fields (minute, hour, day of month, month, day of week) or a macro
(``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``,
``@midnight``, ``@hourly``); ``*``, ``N``, ``A-B``, ``*/S``, ``A-B/S`` and
comma lists; month and weekday names in any case; weekday 7 is Sunday. When
both day fields are restricted, a time matching either matches. Bad input
raises :class:`~kiq.errors.CrontabError` naming the field and the text.
"""

from __future__ import annotations

import calendar
import datetime as dt

from kiq import _kiq

__all__ = ["Crontab"]

When = dt.datetime | float | int


def _epoch(when: When) -> int:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:  # naive datetimes are taken as UTC
            return calendar.timegm(when.timetuple())
        return int(when.timestamp() // 1)
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise TypeError(f"expected a datetime or epoch seconds, not {type(when).__name__}")
    return int(when // 1)


class Crontab:
    """A parsed crontab expression."""

    __slots__ = ("_core", "expression")

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._core = _kiq.Crontab(expression)

    def matches(self, when: When) -> bool:
        """Whether the minute holding ``when`` matches (naive datetimes are UTC)."""
        return self._core.matches(_epoch(when))

    def next_after(self, when: When) -> dt.datetime | None:
        """The first matching minute strictly after ``when``, as an aware UTC
        datetime; None if none comes within 32 years (e.g. February 30th)."""
        nxt = self._core.next_after(_epoch(when))
        return None if nxt is None else dt.datetime.fromtimestamp(nxt, dt.timezone.utc)

    def __str__(self) -> str:
        """The canonical form (it parses back to an equal crontab)."""
        return str(self._core)

    def __repr__(self) -> str:
        return f"Crontab({self.expression!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Crontab) and self._core == other._core

    def __hash__(self) -> int:
        return hash(self._core)
