"""Cron arithmetic for schedule signals (spec §5.6): when a schedule fires, and what to do about missed slots.

Pure functions only — no clock, no I/O — so every rule here is testable with fixed instants, and the scheduler
(`atlas.runtime.scheduler`) stays a thin layer of KV claims and accept calls around them.

**Why croniter runs on naive local wall-clock times.** croniter's own handling of aware datetimes across DST
transitions differs between versions and does not implement the spec's rules. Fed a *naive* datetime it does
plain calendar arithmetic, which is exactly "what the wall clock in that zone says". Each wall-clock candidate is
then mapped to one UTC instant here:

* a time that exists once maps to that instant;
* an **ambiguous** time (fall back: 02:30 happens twice in Europe/Berlin on the last Sunday of October) maps to its
  first occurrence (``fold=0``); the second pass through the hour fires nothing;
* a **non-existent** time (spring forward: 02:30 never happens on the last Sunday of March) maps to the first
  instant after the gap (03:00 local).

The mapping is monotone, so the candidates stay ordered in UTC; several candidates may map to the same instant
(every minute of a skipped hour lands on its end), and they are merged, so an instant fires at most once. The
upshot is the guarantee of §5.6: a daily job fires exactly once on every local day.

All instants returned are aware UTC datetimes; a naive input is taken as UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from atlas.sessions.events import format_iso

__all__ = [
    "MACROS",
    "MAX_CATCHUP",
    "MAX_COUNTED",
    "ONTIME_GRACE",
    "Plan",
    "count_slots",
    "iter_fires",
    "local_to_utc",
    "next_fire",
    "normalize",
    "plan_missed",
    "plan_ticks",
    "slots_between",
    "tick_payload",
    "zone",
]

Policy = Literal["skip", "coalesce", "catchup"]

#: The four macros the spec allows (§2.2), spelled out so croniter only ever sees five plain fields.
MACROS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}

#: `catchup` fires at most this many make-up runs per missed stretch (spec §5.6).
MAX_CATCHUP = 100

#: How late a single due slot may be and still count as on time rather than missed. A scheduler wakes a little
#: after the instant it waited for; a slot found much later than that was slept through (downtime, a suspended
#: laptop, a wall-clock jump), and the missed-run policy decides about it (spec §5.6).
ONTIME_GRACE = timedelta(seconds=60)

#: Upper bound on the slots counted (not fired) when a long downtime is scanned. Counting is a walk over every
#: slot, so an every-minute schedule left alone for years would otherwise cost seconds of CPU; beyond this the
#: `missedCount` is a lower bound, which is still an honest "a great many runs were missed".
MAX_COUNTED = 100_000


def normalize(expression: str) -> str:
    """The five-field form of an expression: macros expanded, surrounding whitespace dropped."""
    text = expression.strip()
    return MACROS.get(text, text)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone(tz: str | tzinfo) -> tzinfo:
    """A tzinfo for an IANA name (cached: schedules are evaluated every tick) or a tzinfo passed through."""
    return _zone(tz) if isinstance(tz, str) else tz


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _offset(moment_utc: datetime, tz: tzinfo) -> timedelta | None:
    return moment_utc.astimezone(tz).utcoffset()


def local_to_utc(wall: datetime, tz: str | tzinfo) -> datetime:
    """Map a naive wall-clock time in `tz` to the UTC instant it fires at, with the DST rules of spec §5.6.

    Existing and ambiguous times take ``fold=0`` (the first occurrence). A time inside a spring-forward gap maps
    to the transition instant, i.e. the first instant after the gap, found by bisection between the two
    readings PEP 495 gives for a gap time (the pre- and post-transition offsets), to the second.
    """
    zi = zone(tz)
    naive = wall.replace(tzinfo=None)
    first = naive.replace(tzinfo=zi, fold=0).astimezone(UTC)
    if first.astimezone(zi).replace(tzinfo=None) == naive:
        return first
    other = naive.replace(tzinfo=zi, fold=1).astimezone(UTC)
    lo, hi = min(first, other), max(first, other)
    after = _offset(hi, zi)
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())
    while hi_s - lo_s > 1:  # invariant: the offset at lo_s is the old one, at hi_s the new one
        mid = (lo_s + hi_s) // 2
        if _offset(datetime.fromtimestamp(mid, UTC), zi) == after:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def iter_fires(expression: str, tz: str | tzinfo, after: datetime) -> Iterator[datetime]:
    """Every fire instant strictly after `after`, ascending and distinct, forever (an infinite iterator).

    Iteration starts at `after`'s local wall-clock time: a candidate at or before it maps to an instant at or
    before `after` (the mapping is monotone), so nothing is missed. When `after` lies in the second pass of an
    ambiguous hour, the first candidates map back to the first pass, before `after`, and are skipped here.
    """
    zi = zone(tz)
    start = _utc(after)
    walker = croniter(normalize(expression), start.astimezone(zi).replace(tzinfo=None))
    last = start
    while True:
        moment = local_to_utc(walker.get_next(datetime), zi)
        if moment > last:
            last = moment
            yield moment


def next_fire(expression: str, tz: str | tzinfo, after: datetime) -> datetime:
    """The first fire instant strictly after `after` (aware UTC)."""
    return next(iter_fires(expression, tz, after))


def slots_between(expression: str, tz: str | tzinfo, start_excl: datetime, end_incl: datetime,
                  limit: int | None = None) -> list[datetime]:
    """The fire instants in ``(start_excl, end_incl]``, ascending; at most `limit` of them (the earliest)."""
    end = _utc(end_incl)
    out: list[datetime] = []
    if end <= _utc(start_excl):
        return out
    for moment in iter_fires(expression, tz, start_excl):
        if moment > end or (limit is not None and len(out) >= limit):
            break
        out.append(moment)
    return out


def count_slots(expression: str, tz: str | tzinfo, start_excl: datetime, end_incl: datetime,
                cap: int = MAX_COUNTED) -> tuple[int, datetime | None, datetime | None]:
    """How many fire instants lie in ``(start_excl, end_incl]``, with the first and the last of them.

    Counting stops at `cap`; the last instant is then unknown (None) and the count is a lower bound.
    """
    end = _utc(end_incl)
    count, first, last = 0, None, None
    if end <= _utc(start_excl):
        return 0, None, None
    for moment in iter_fires(expression, tz, start_excl):
        if moment > end:
            return count, first, last
        if count >= cap:
            return count, first, None
        count += 1
        first = first or moment
        last = moment
    return count, first, last  # not reached: iter_fires never ends


@dataclass
class Plan:
    """What one schedule does at one tick.

    `fire` lists ``(scheduled, extra payload)`` pairs, oldest first; `last_scheduled` is the new `lastScheduled`
    (None when no slot was due, so the state stays as it is); `missed` counts the slots that were missed.
    """

    fire: list[tuple[datetime, dict[str, Any]]] = field(default_factory=list)
    last_scheduled: datetime | None = None
    missed: int = 0


def plan_missed(policy: Policy | str, slots: list[datetime], now: datetime, missed_window: timedelta, *,
                dropped: int = 0, first_missed: datetime | None = None) -> tuple[list[tuple[datetime, dict[str, Any]]],
                                                                                 datetime | None]:
    """Apply the missed-run policy of spec §5.6 to the missed slots of one schedule.

    `slots` are the missed slots in ``(lastScheduled, now]`` that were listed, ascending; `dropped` counts earlier
    missed slots that were only counted (a long downtime), and `first_missed` is the first of those. Slots older
    than ``now - missed_window`` are dropped but counted in `missedCount`:

    * ``skip`` fires nothing;
    * ``coalesce`` fires one run, for the latest slot still inside the window;
    * ``catchup`` fires one run per slot inside the window, oldest first, at most `MAX_CATCHUP` (the latest ones:
      the stalest make-up runs are the least useful).

    Every make-up run carries ``policy``, ``missedCount`` and ``firstMissedAt``. Returns the runs to fire and the
    new `lastScheduled` (the latest listed slot; None if none was listed).
    """
    total = dropped + len(slots)
    if total == 0:
        return [], None
    horizon = _utc(now) - missed_window
    recent = [s for s in slots if s >= horizon]
    first = first_missed if first_missed is not None else slots[0]
    extra = {"missedCount": total, "firstMissedAt": format_iso(first)}
    fire: list[tuple[datetime, dict[str, Any]]]
    if policy == "coalesce":
        fire = [(recent[-1], {"policy": "coalesce", **extra})] if recent else []
    elif policy == "catchup":
        fire = [(s, {"policy": "catchup", **extra}) for s in recent[-MAX_CATCHUP:]]
    elif policy == "skip":
        fire = []
    else:
        raise ValueError(f"unknown onMissed policy {policy!r}")
    return fire, (slots[-1] if slots else None)


def plan_ticks(expression: str, tz: str | tzinfo, policy: Policy | str, last_scheduled: datetime, now: datetime,
               missed_window: timedelta, *, grace: timedelta = ONTIME_GRACE, count_cap: int = MAX_COUNTED) -> Plan:
    """Everything one schedule must do at `now`, given the `lastScheduled` it has settled up to.

    The due slots are those in ``(lastScheduled, now]``. A single slot found within `grace` of its time is an
    ordinary on-time tick (``policy: ontime``). Anything else — several slots, or one found late — means the
    scheduler was not running (daemon start, workspace load, a clock jump or resume from sleep), and the
    missed-run policy decides. Slots older than the window are only counted (up to `count_cap`), never listed, so
    the cost of a long downtime is bounded by what may actually fire.
    """
    now = _utc(now)
    last = _utc(last_scheduled)
    if now <= last:
        return Plan()
    horizon = now - missed_window
    dropped, first_old, last_old = 0, None, None
    scan_from = last
    if last < horizon:
        # Exclusive bound just before the horizon, so a slot exactly at the horizon is listed (it is not older).
        scan_from = horizon - timedelta(microseconds=1)
        dropped, first_old, last_old = count_slots(expression, tz, last, scan_from, count_cap)
    slots = slots_between(expression, tz, scan_from, now)
    if not dropped and len(slots) == 1 and now - slots[0] <= grace:
        return Plan([(slots[0], {"policy": "ontime"})], slots[0], 0)
    fire, new_last = plan_missed(policy, slots, now, missed_window, dropped=dropped, first_missed=first_old)
    if new_last is None and dropped:
        # Nothing inside the window: settle up to the last old slot, or to now if counting stopped early.
        new_last = last_old or now
    return Plan(fire, new_last, dropped + len(slots))


def tick_payload(scheduled: datetime, timezone: str, next_run: datetime, fired_at: datetime,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """The trigger payload of one tick (spec §5.6, the reference's field names), times as RFC 3339 UTC."""
    return {
        "scheduled": format_iso(scheduled),
        "timezone": timezone,
        "nextRun": format_iso(next_run),
        "actualFiredAt": format_iso(fired_at),
        **extra,
    }
