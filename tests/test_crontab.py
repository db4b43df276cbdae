"""Property tests of kiq's crontab parser, with croniter as the oracle."""

from __future__ import annotations

import datetime as dt

import pytest
from croniter import croniter
from croniter.croniter import CroniterBadDateError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiq import Crontab
from kiq.errors import CrontabError

UTC = dt.timezone.utc
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cased(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.capitalize()])


@st.composite
def value(draw: st.DrawFn, field: int, lo: int | None = None, hi: int | None = None) -> tuple[str, int]:
    """A value of a field as text, sometimes a name, and its number."""
    a, b = RANGES[field]
    n = draw(st.integers(a if lo is None else lo, b if hi is None else hi))
    if field == 3 and draw(st.booleans()):
        return draw(cased(MONTHS[n - 1])), n
    if field == 4 and n < 7 and draw(st.booleans()):
        return draw(cased(DAYS[n])), n
    return str(n), n


@st.composite
def item(draw: st.DrawFn, field: int) -> str:
    a, b = RANGES[field]
    kind = draw(st.sampled_from(["star", "value", "range", "star_step", "range_step"]))
    if kind == "star":
        return "*"
    if kind == "value":
        return draw(value(field))[0]
    if kind == "star_step":
        return f"*/{draw(st.integers(1, b - a + 2))}"
    # croniter 7 reads a one-value range ("3-3") as "*", so the oracle only
    # sees ranges of two values or more (kiq reads "3-3" as 3; a unit test pins it).
    start_text, start = draw(value(field, hi=(6 if field == 4 else b) - 1))
    end_text, _ = draw(value(field, lo=start + 1))
    text = f"{start_text}-{end_text}"
    if kind == "range_step":
        text += f"/{draw(st.integers(1, b - a + 1))}"
    return text


@st.composite
def expression(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]))
    fields = [",".join(draw(st.lists(item(i), min_size=1, max_size=3))) for i in range(5)]
    return draw(st.sampled_from([" ", "  ", "\t"])).join(fields)


instants = st.datetimes(min_value=dt.datetime(1999, 1, 1), max_value=dt.datetime(2041, 1, 1))
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(expression(), instants)
def test_matches_agrees_with_croniter(expr: str, when: dt.datetime) -> None:
    ours = Crontab(expr).matches(when)
    theirs = croniter.match(expr.replace("\t", " "), when)
    assert ours == theirs, f"{expr!r} at {when}"


@SETTINGS
@given(expression(), instants)
def test_next_after_agrees_with_croniter(expr: str, when: dt.datetime) -> None:
    ours = Crontab(expr).next_after(when)
    try:
        theirs = croniter(expr.replace("\t", " "), when).get_next(dt.datetime).replace(tzinfo=UTC)
    except CroniterBadDateError:
        theirs = None
    assert ours == theirs, f"{expr!r} after {when}"


@settings(max_examples=200, deadline=None)
@given(expression())
def test_render_parse_round_trips(expr: str) -> None:
    c = Crontab(expr)
    again = Crontab(str(c))
    assert again == c and str(again) == str(c)


@settings(max_examples=200, deadline=None)
@given(expression(), st.datetimes(min_value=dt.datetime(2023, 1, 1), max_value=dt.datetime(2026, 1, 1)))
def test_next_after_is_the_next_match(expr: str, when: dt.datetime) -> None:
    c = Crontab(expr)
    nxt = c.next_after(when)
    if nxt is not None:
        assert c.matches(nxt) and nxt > when.replace(tzinfo=UTC)
        # No matching minute in between (checked for the first day after `when`).
        probe = when.replace(second=0, microsecond=0, tzinfo=UTC) + dt.timedelta(minutes=1)
        while probe < nxt and probe < when.replace(tzinfo=UTC) + dt.timedelta(days=1):
            assert not c.matches(probe), f"{expr!r}: {probe} matches before {nxt}"
            probe += dt.timedelta(minutes=1)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"[-0-9*/,@A-Za-z ]{0,30}", fullmatch=True))
def test_invalid_input_only_ever_raises_crontab_error(text: str) -> None:
    try:
        c = Crontab(text)
    except CrontabError:
        return
    # Whatever parsed must be usable.
    c.next_after(dt.datetime(2024, 1, 1))
    assert Crontab(str(c)) == c


@pytest.mark.parametrize(
    "bad",
    ["60 * * * *", "* 24 * * *", "* * 32 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *", "1,,2 * * * *",
     "* * * * MON-FRI x", "MON-FRI * * * *", "5-3 * * * *", "* * * *", "@sometimes"],
)
def test_kiq_elixir_bugs_stay_fixed(bad: str) -> None:
    with pytest.raises(CrontabError):
        Crontab(bad)


def test_one_value_ranges() -> None:
    assert Crontab("* * * * 1-1") == Crontab("* * * * 1")
    assert not Crontab("* * * * 1-1").matches(dt.datetime(2000, 1, 1))  # a Saturday


def test_sunday_and_leap_day() -> None:
    assert Crontab("0 0 * * 0").next_after(dt.datetime(2024, 1, 6, 12)) == dt.datetime(2024, 1, 7, tzinfo=UTC)
    assert Crontab("0 0 * * 7").matches(dt.datetime(2024, 1, 7))
    assert Crontab("0 0 29 2 *").next_after(dt.datetime(2024, 3, 1)) == dt.datetime(2028, 2, 29, tzinfo=UTC)
    assert Crontab("0 0 30 2 *").next_after(dt.datetime(2024, 1, 1)) is None
    aware = dt.datetime(2024, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))  # 00:00 UTC
    assert Crontab("0 0 * * *").matches(aware)
