"""Pure cron arithmetic (spec §5.6): next fire times, DST rules, missed-run plans. No clock, no bus."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.runtime.cron import (
    MAX_CATCHUP,
    ONTIME_GRACE,
    count_slots,
    local_to_utc,
    next_fire,
    plan_missed,
    plan_ticks,
    slots_between,
    tick_payload,
)

BERLIN = "Europe/Berlin"
# 2026: the last Sunday of March is the 29th (02:00 CET → 03:00 CEST, at 01:00Z), the last Sunday of October the
# 25th (03:00 CEST → 02:00 CET, at 01:00Z).
SPRING = date(2026, 3, 29)
FALL = date(2026, 10, 25)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def local(moment: datetime, tz: str) -> datetime:
    return moment.astimezone(ZoneInfo(tz))


# ---------------------------------------------------------------- next fire, several expressions and zones


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("* * * * *", "UTC", utc(2026, 1, 1, 12, 0, 30), utc(2026, 1, 1, 12, 1)),
        ("* * * * *", "UTC", utc(2026, 1, 1, 12, 1), utc(2026, 1, 1, 12, 2)),  # strictly after
        ("*/15 * * * *", "UTC", utc(2026, 1, 1, 12, 7), utc(2026, 1, 1, 12, 15)),
        ("0 9 * * 1-5", "UTC", utc(2026, 1, 2, 10), utc(2026, 1, 5, 9)),  # Friday after 9 → Monday
        ("0 9 * * 1-5", "Asia/Kolkata", utc(2026, 1, 3), utc(2026, 1, 5, 3, 30)),  # +05:30, Saturday → Monday
        ("30 8 * * *", "America/New_York", utc(2026, 1, 10), utc(2026, 1, 10, 13, 30)),  # EST −5
        ("30 8 * * *", "America/New_York", utc(2026, 7, 10), utc(2026, 7, 10, 12, 30)),  # EDT −4
        ("0 0 1 * *", "Asia/Tokyo", utc(2026, 1, 15), utc(2026, 1, 31, 15)),  # 1 Feb 00:00 JST
        ("@hourly", "UTC", utc(2026, 1, 1, 12, 0, 0, 1), utc(2026, 1, 1, 13)),
        ("@daily", BERLIN, utc(2026, 1, 1, 12), utc(2026, 1, 1, 23)),  # midnight CET
        ("@daily", BERLIN, utc(2026, 7, 1, 12), utc(2026, 7, 1, 22)),  # midnight CEST
        ("@weekly", "UTC", utc(2026, 1, 1), utc(2026, 1, 4)),  # Thursday → Sunday 00:00
        ("@monthly", "UTC", utc(2026, 1, 1), utc(2026, 2, 1)),
        ("  @daily ", "UTC", utc(2026, 1, 1, 1), utc(2026, 1, 2)),
    ],
)
def test_next_fire(expr: str, tz: str, after: datetime, expected: datetime) -> None:
    got = next_fire(expr, tz, after)
    assert got == expected
    assert got.tzinfo is UTC


def test_next_fire_takes_any_aware_or_naive_start() -> None:
    """The result depends on the instant only: an offset-aware start and a naive (UTC) one agree."""
    instant = utc(2026, 5, 5, 10, 20)
    expected = utc(2026, 5, 5, 10, 30)
    assert next_fire("*/10 * * * *", BERLIN, instant.astimezone(ZoneInfo("America/Los_Angeles"))) == expected
    assert next_fire("*/10 * * * *", BERLIN, instant.replace(tzinfo=None)) == expected


def test_slots_between_is_half_open_and_limited() -> None:
    start, end = utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 3)
    assert slots_between("* * * * *", "UTC", start, end) == [utc(2026, 1, 1, 12, m) for m in (1, 2, 3)]
    assert slots_between("* * * * *", "UTC", start, end, limit=2) == [utc(2026, 1, 1, 12, 1), utc(2026, 1, 1, 12, 2)]
    assert slots_between("* * * * *", "UTC", end, start) == []


def test_count_slots_reports_first_last_and_stops_at_cap() -> None:
    start, end = utc(2026, 1, 1, 12), utc(2026, 1, 1, 13)
    assert count_slots("* * * * *", "UTC", start, end) == (60, utc(2026, 1, 1, 12, 1), utc(2026, 1, 1, 13))
    assert count_slots("* * * * *", "UTC", start, end, cap=10) == (10, utc(2026, 1, 1, 12, 1), None)
    assert count_slots("* * * * *", "UTC", end, start) == (0, None, None)


# ---------------------------------------------------------------- DST: Europe/Berlin, last Sundays of March and October


def test_daily_in_spring_gap_fires_once_at_the_end_of_the_gap() -> None:
    """02:30 does not exist on 29 March 2026 in Berlin: the daily job runs at 03:00 CEST, once."""
    slots = slots_between("30 2 * * *", BERLIN, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert slots == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]
    gap_day = local(slots[1], BERLIN)
    assert (gap_day.date(), gap_day.hour, gap_day.minute) == (SPRING, 3, 0)
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1)


def test_daily_in_fall_overlap_fires_once_at_first_occurrence() -> None:
    """02:30 happens twice on 25 October 2026 in Berlin: the daily job runs at the first (CEST) one only."""
    slots = slots_between("30 2 * * *", BERLIN, utc(2026, 10, 23, 12), utc(2026, 10, 27, 12))
    assert slots == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30),
                     utc(2026, 10, 27, 1, 30)]
    first = local(slots[1], BERLIN)
    assert (first.date(), first.hour, first.minute, first.utcoffset()) == (FALL, 2, 30, timedelta(hours=2))
    # Starting inside the second pass of the hour (02:40 CET) does not fire 02:30 again that day.
    assert next_fire("30 2 * * *", BERLIN, utc(2026, 10, 25, 1, 40)) == utc(2026, 10, 26, 1, 30)


def test_hourly_across_both_transitions() -> None:
    """Hourly: the skipped 02:00 merges into 03:00 CEST; the repeated 02:00 fires only in its CEST pass."""
    spring = slots_between("0 * * * *", BERLIN, utc(2026, 3, 28, 23, 30), utc(2026, 3, 29, 3, 30))
    assert [local(s, BERLIN).strftime("%H:%M%z") for s in spring] == ["01:00+0100", "03:00+0200", "04:00+0200",
                                                                        "05:00+0200"]
    fall = slots_between("@hourly", BERLIN, utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3, 30))
    assert [local(s, BERLIN).strftime("%H:%M%z") for s in fall] == ["01:00+0200", "02:00+0200", "03:00+0100",
                                                                      "04:00+0100"]
    assert len(set(fall)) == len(fall) and len(set(spring)) == len(spring)


def test_several_slots_in_the_gap_fire_once() -> None:
    """02:00 and 02:30 both fall in the spring gap; they map to the same instant and fire once."""
    assert slots_between("*/30 2 * * *", BERLIN, utc(2026, 3, 28, 22), utc(2026, 3, 29, 4)) == [utc(2026, 3, 29, 1)]


def test_daily_midnight_is_unaffected_by_dst() -> None:
    days = slots_between("@daily", BERLIN, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert [local(d, BERLIN).strftime("%d %H:%M") for d in days] == ["28 00:00", "29 00:00", "30 00:00", "31 00:00"]


def test_other_zones_follow_the_same_rules() -> None:
    ny = "America/New_York"  # 8 Mar 2026 02:00 → 03:00; 1 Nov 2026 02:00 → 01:00
    assert next_fire("30 2 * * *", ny, utc(2026, 3, 8)) == utc(2026, 3, 8, 7)  # 03:00 EDT
    assert next_fire("30 1 * * *", ny, utc(2026, 11, 1)) == utc(2026, 11, 1, 5, 30)  # first 01:30 (EDT)
    lord_howe = "Australia/Lord_Howe"  # a 30-minute shift: 4 Oct 2026 02:00 → 02:30
    fire = local(next_fire("15 2 * * *", lord_howe, utc(2026, 10, 3)), lord_howe)
    assert (fire.day, fire.hour, fire.minute) == (4, 2, 30)


def test_local_to_utc_rules() -> None:
    assert local_to_utc(datetime(2026, 3, 29, 2, 30), BERLIN) == utc(2026, 3, 29, 1)  # gap → its end
    assert local_to_utc(datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)  # overlap → first
    assert local_to_utc(datetime(2026, 6, 1, 12), BERLIN) == utc(2026, 6, 1, 10)


@settings(max_examples=40, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    tz=st.sampled_from([BERLIN, "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "Asia/Kolkata"]),
)
def test_a_daily_job_fires_exactly_once_every_local_day(minute: int, hour: int, tz: str) -> None:
    """Over a whole year, every local date gets exactly one run of `M H * * *`, whatever the DST transitions."""
    slots = slots_between(f"{minute} {hour} * * *", tz, utc(2026, 1, 1), utc(2027, 1, 1))
    days = [local(s, tz).date() for s in slots]
    assert len(days) == len(set(days))
    assert all((b - a).days == 1 for a, b in itertools.pairwise(days))
    assert len(days) in (365, 366)


# ---------------------------------------------------------------- missed-run policies (fake times)

T0 = utc(2026, 1, 1, 12, 0, 30)
DAY = timedelta(hours=24)


def test_an_on_time_tick() -> None:
    plan = plan_ticks("* * * * *", "UTC", "coalesce", utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 1, 0, 200_000), DAY)
    assert plan.fire == [(utc(2026, 1, 1, 12, 1), {"policy": "ontime"})]
    assert plan.last_scheduled == utc(2026, 1, 1, 12, 1) and plan.missed == 0


def test_nothing_due() -> None:
    plan = plan_ticks("* * * * *", "UTC", "catchup", T0, T0 + timedelta(seconds=20), DAY)
    assert plan.fire == [] and plan.last_scheduled is None


@pytest.mark.parametrize(
    ("policy", "fired"),
    [("coalesce", [(utc(2026, 1, 1, 12, 2), "coalesce")]),
     ("catchup", [(utc(2026, 1, 1, 12, 1), "catchup"), (utc(2026, 1, 1, 12, 2), "catchup")]),
     ("skip", [])],
)
def test_downtime_over_two_slots(policy: str, fired: list[tuple[datetime, str]]) -> None:
    """§13 item 29 in pure form: down from 12:00:30 to 12:02:30 misses 12:01 and 12:02."""
    plan = plan_ticks("* * * * *", "UTC", policy, T0, T0 + timedelta(minutes=2), DAY)
    assert [(s, extra["policy"]) for s, extra in plan.fire] == fired
    for _, extra in plan.fire:
        assert extra["missedCount"] == 2 and extra["firstMissedAt"] == "2026-01-01T12:01:00.000Z"
    assert plan.last_scheduled == utc(2026, 1, 1, 12, 2) and plan.missed == 2


def test_one_slot_found_late_is_missed_not_on_time() -> None:
    """A single slot seen long after its time (a suspended laptop) goes through the policy."""
    late = utc(2026, 1, 1, 12, 1) + ONTIME_GRACE + timedelta(seconds=1)
    plan = plan_ticks("0 * * * *", "UTC", "skip", utc(2026, 1, 1, 11, 30), late, DAY)
    assert plan.fire == [] and plan.last_scheduled == utc(2026, 1, 1, 12)
    plan = plan_ticks("0 * * * *", "UTC", "coalesce", utc(2026, 1, 1, 11, 30), late, DAY)
    assert plan.fire == [(utc(2026, 1, 1, 12), {"policy": "coalesce", "missedCount": 1,
                                                "firstMissedAt": "2026-01-01T12:00:00.000Z"})]


def test_slots_older_than_the_window_are_dropped_but_counted() -> None:
    last, now = utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 10, 30)  # hourly: 01:00 … 10:00 missed (10)
    window = timedelta(hours=3)  # only 08:00, 09:00, 10:00 are recent enough
    catchup = plan_ticks("@hourly", "UTC", "catchup", last, now, window)
    assert [s.hour for s, _ in catchup.fire] == [8, 9, 10]
    assert {e["missedCount"] for _, e in catchup.fire} == {10}
    assert {e["firstMissedAt"] for _, e in catchup.fire} == {"2026-01-01T01:00:00.000Z"}
    coalesce = plan_ticks("@hourly", "UTC", "coalesce", last, now, window)
    assert [(s.hour, e["missedCount"]) for s, e in coalesce.fire] == [(10, 10)]
    assert catchup.last_scheduled == coalesce.last_scheduled == utc(2026, 1, 1, 10)


def test_everything_outside_the_window_fires_nothing_but_settles() -> None:
    last, now = utc(2026, 1, 1, 1), utc(2026, 1, 3, 12)  # daily 00:00 on the 2nd and 3rd, both > 1 h old
    plan = plan_ticks("@daily", "UTC", "coalesce", last, now, timedelta(hours=1))
    assert plan.fire == [] and plan.missed == 2 and plan.last_scheduled == utc(2026, 1, 3)


def test_catchup_is_bounded() -> None:
    plan = plan_ticks("* * * * *", "UTC", "catchup", T0, T0 + timedelta(hours=3), DAY)
    assert len(plan.fire) == MAX_CATCHUP
    assert [s for s, _ in plan.fire] == sorted(s for s, _ in plan.fire)  # oldest first
    assert plan.fire[-1][0] == utc(2026, 1, 1, 15)  # the latest ones
    assert plan.fire[0][1]["missedCount"] == 180


def test_a_very_long_downtime_is_counted_up_to_a_cap() -> None:
    plan = plan_ticks("* * * * *", "UTC", "coalesce", T0, T0 + timedelta(days=3), timedelta(hours=1),
                      count_cap=500)
    (scheduled, extra), = plan.fire
    assert scheduled == utc(2026, 1, 4, 12) and extra["missedCount"] == 500 + 60
    assert plan.last_scheduled == scheduled


def test_plan_missed_on_a_plain_list() -> None:
    slots = [utc(2026, 1, 1, h) for h in (1, 2, 3)]
    fire, last = plan_missed("coalesce", slots, utc(2026, 1, 1, 3, 30), DAY)
    assert fire == [(slots[-1], {"policy": "coalesce", "missedCount": 3, "firstMissedAt": "2026-01-01T01:00:00.000Z"})]
    assert last == slots[-1]
    assert plan_missed("skip", [], T0, DAY) == ([], None)
    with pytest.raises(ValueError):
        plan_missed("sometimes", slots, T0, DAY)


def test_tick_payload_shape() -> None:
    payload = tick_payload(utc(2026, 1, 1, 12, 1), BERLIN, utc(2026, 1, 1, 12, 2), utc(2026, 1, 1, 12, 1, 0, 5000),
                           {"policy": "ontime"})
    assert payload == {"scheduled": "2026-01-01T12:01:00.000Z", "timezone": BERLIN,
                       "nextRun": "2026-01-01T12:02:00.000Z", "actualFiredAt": "2026-01-01T12:01:00.005Z",
                       "policy": "ontime"}
