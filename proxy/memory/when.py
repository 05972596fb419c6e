"""The times a question asks about, as spans of calendar days: "on 5 Jan 2024", "yesterday",
"last week", "two months ago", "in March", "over the weekend", "recently".

Relative words are read against the day the question is asked, in the days of
``retrieval.timezone`` (``Clock``). Retrieval lifts the memories dated
in a span (proxy/memory/ranking.py ``lift_dated``); a question with nothing else to go on
("What did I do last week?") is ranked by its dates first.

English only, like the keyword analyzer's stop-words. Times in the future ("next week",
"this weekend" on a Wednesday) name no span: a memory is dated when it was said.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from proxy.memory.keyword import DOTTED_DATE, ENGLISH_STOPWORDS, ISO_DATE, MONTHS

__all__ = [
    "DAY_SECONDS", "Clock", "DaySpan", "TimeAsked", "day_of", "days_asked_about", "iso_day",
    "read_time", "time_asked_about", "today",
]

DAY_SECONDS = 86_400
_MONTH = (r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
# A whole date, one day: "5 Jan 2024", "5th of January, 2024", "January 5, 2024",
# "05.01.2024", "2024-01-05"; the groups of its year, month and day.
_ASKED_DATES = (
    (re.compile(rf"\b{_DAY}(?:\s+of)?\s+{_MONTH}\.?,?\s+(\d{{4}})\b", re.IGNORECASE), (3, 2, 1)),
    (re.compile(rf"\b{_MONTH}\.?\s+{_DAY},?\s+(\d{{4}})\b", re.IGNORECASE), (3, 1, 2)),
    (DOTTED_DATE, (3, 2, 1)),
    (ISO_DATE, (1, 2, 3)),
)


def _month_number(written: str) -> int:
    """1–12 of a month written as a number or a name ("Jan", "january", "Sept")."""
    if written.isdigit():
        return int(written)
    return [m.casefold() for m in MONTHS].index(written[:3].casefold()) + 1


def today(now: float | None = None) -> int:
    """The day (since 1970-01-01, UTC) ``now`` (default: the clock) falls on."""
    return int((time.time() if now is None else now) // DAY_SECONDS)


@dataclass(frozen=True)
class Clock:
    """Days as this proxy's users count them: in ``zone`` (``retrieval.timezone``), which is
    ``offset`` seconds ahead of UTC at ``now``. A memory's day is read with the same offset
    (near a daylight-saving change, an hour off: within the date window)."""

    zone: str
    now: float
    offset: float

    @classmethod
    def at(cls, zone: str = "UTC", now: float | None = None) -> Clock:
        now = time.time() if now is None else now
        ahead = datetime.fromtimestamp(now, ZoneInfo(zone)).utcoffset()
        return cls(zone, now, ahead.total_seconds() if ahead is not None else 0.0)

    @property
    def today(self) -> int:
        return self.day(self.now)

    def day(self, at: float) -> int:
        """The day (since 1970-01-01, in the zone) the time ``at`` falls on."""
        return int((at + self.offset) // DAY_SECONDS)

    def date(self, at: float) -> str:
        return iso_day(self.day(at))

    def today_text(self) -> str:
        """"Tuesday, 2026-12-08 (Europe/Berlin)"."""
        return f"{_WEEKDAYS[_weekday(self.today)].title()}, {iso_day(self.today)} ({self.zone})"



def day_of(year: int, month: int, day: int) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0)) // DAY_SECONDS


def _ymd(day: int) -> tuple[int, int, int]:
    t = time.gmtime(day * DAY_SECONDS)
    return t.tm_year, t.tm_mon, t.tm_mday


def _weekday(day: int) -> int:
    return (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0


def _month_span(year: int, month: int) -> tuple[int, int]:
    first = day_of(year, month, 1)
    return first, first + calendar.monthrange(year, month)[1] - 1


def _months_back(day: int, months: int) -> tuple[int, int]:
    year, month, _ = _ymd(day)
    index = year * 12 + (month - 1) - months
    return _month_span(index // 12, index % 12 + 1)


def _year_span(year: int) -> tuple[int, int]:
    return day_of(year, 1, 1), day_of(year, 12, 31)


@dataclass(frozen=True)
class DaySpan:
    """Days ``first`` to ``last`` (both included, days since 1970-01-01 in the asker's zone)
    and the words that named them; ``relative``: read against the day asked ("yesterday")."""

    first: int
    last: int
    said: str
    relative: bool

    def to_json(self) -> dict[str, str]:
        return {"from": iso_day(self.first), "to": iso_day(self.last), "said": self.said}


@functools.lru_cache(maxsize=4096)
def iso_day(day: int) -> str:
    """2024-01-05 (days since 1970-01-01, UTC): the spans' dates, and each memory's in an
    injected block (~10 a chat); "0001-01-01" where strftime's %Y would write "1"."""
    year, month, day_of_month = _ymd(day)
    return f"{year:04d}-{month:02d}-{day_of_month:02d}"


@dataclass(frozen=True)
class TimeAsked:
    spans: tuple[DaySpan, ...]
    # Nothing but the time to go on: every other word a stop-word or a word any memory could
    # answer ("What did we talk about last week?").
    only_time: bool
    # The spans are days of a zone this many seconds ahead of UTC (Clock.offset).
    offset: float = 0.0

    @property
    def relative(self) -> bool:
        return any(span.relative for span in self.spans)

    def days(self) -> list[tuple[int, int]]:
        return [(span.first, span.last) for span in self.spans]


_NUMBERS = {
    "a": (1, 1), "an": (1, 1), "one": (1, 1), "two": (2, 2), "three": (3, 3), "four": (4, 4),
    "five": (5, 5), "six": (6, 6), "seven": (7, 7), "eight": (8, 8), "nine": (9, 9),
    "ten": (10, 10), "eleven": (11, 11), "twelve": (12, 12),
    "a couple of": (2, 2), "a couple": (2, 2), "couple of": (2, 2), "a few": (2, 4),
    "few": (2, 4), "several": (3, 6),
}
_COUNT = r"(\d{1,3}|a couple(?: of)?|couple of|a few|few|several|an?|one|two|three|four|five" \
         r"|six|seven|eight|nine|ten|eleven|twelve)"
_UNIT = r"(day|week|month|year)s?"
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY = r"(monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
# Words any memory could answer: a question made only of these and stop-words asks for a
# time, not a topic.
_GENERIC = frozenset(
    """
    happen happened happening go going went gone say said tell told talk talked talking
    discuss discussed mention mentioned share shared up anything something everything stuff
    thing things new get got ask asked ago last past previous week weekend month year day
    days weeks months years today yesterday tonight morning afternoon evening night recently
    lately earlier remember recall
    """.split()
)
_WORD = re.compile(r"[^\W_]+")


def _count(words: str) -> tuple[int, int]:
    words = " ".join(words.lower().split())
    return (int(words), int(words)) if words.isdigit() else _NUMBERS[words]


Resolver = Callable[[re.Match[str], int], tuple[int, int] | None]


def _ago(found: re.Match[str], t: int) -> tuple[int, int] | None:
    low, high = _count(found[1])
    unit = found[2].lower()
    if unit == "day":
        return t - high, t - low
    if unit == "week":
        return t - 7 * high - 3, t - 7 * low + 3
    if unit == "month":
        return _months_back(t, high)[0], _months_back(t, low)[1]
    return t - 365 * high - 31, t - 365 * low + 31  # "a year ago": about that day


def _past(found: re.Match[str], t: int) -> tuple[int, int] | None:
    """"the past two weeks", "over the last few days": up to today."""
    count = _count(found[1])[1] if found[1] else 1
    return t - count * _UNIT_DAYS[found[2].lower()], t


def _last_unit(found: re.Match[str], t: int) -> tuple[int, int] | None:
    """"last week" (Monday to Sunday before this week's), "last month", "last year"."""
    unit = found[1].lower()
    if unit == "week":
        monday = t - _weekday(t) - 7
        return monday, monday + 6
    if unit == "month":
        return _months_back(t, 1)
    return _year_span(_ymd(t)[0] - 1)


def _this_unit(found: re.Match[str], t: int) -> tuple[int, int] | None:
    unit = found[1].lower()
    if unit == "week":
        return t - _weekday(t), t
    if unit == "month":
        return _months_back(t, 0)[0], t
    return _year_span(_ymd(t)[0])[0], t


def _past_weekend(found: re.Match[str], t: int) -> tuple[int, int] | None:
    """The last Saturday and Sunday wholly before today."""
    saturday = t - ((_weekday(t) - 5) % 7) - (7 if _weekday(t) in (5, 6) else 0)
    if saturday + 1 >= t:
        saturday -= 7
    return saturday, saturday + 1


def _this_weekend(found: re.Match[str], t: int) -> tuple[int, int] | None:
    weekday = _weekday(t)
    if weekday < 5:
        return None  # the coming one: nothing said yet is dated then
    return t - (weekday - 5), t


def _weekday_before(found: re.Match[str], t: int) -> tuple[int, int] | None:
    """"on Monday", "last Monday": the last Monday before today."""
    wanted = _WEEKDAYS.index(found[1].lower())
    back = (_weekday(t) - wanted) % 7 or 7
    return t - back, t - back


def _month_without_year(found: re.Match[str], t: int) -> tuple[int, int] | None:
    """"in March": this year's when it has begun, else last year's; "since March": to today."""
    year, current, _ = _ymd(t)
    month = _month_number(found[2])
    lead = found[1].lower()
    before = lead == "last"  # "last March" in March: a year ago
    if month > current or (before and month == current):
        year -= 1
    first, last = _month_span(year, month)
    return (first, t) if lead == "since" else (first, min(last, t))


def _month_with_year(found: re.Match[str], t: int) -> tuple[int, int] | None:
    return _month_span(int(found[2]), _month_number(found[1]))


def _the_verb_may(found: re.Match[str], month_group: int) -> bool:
    """"I may 5 …": the verb, not the month (which is written "May", or "on may 5")."""
    before = found.string[:found.start()].split()
    return found[month_group] == "may" and not (before and before[-1].lower() in _BEFORE_DAY)


_BEFORE_DAY = frozenset({"on", "since", "by", "from", "until", "till", "of", "before", "after"})


def _day_without_year(day_group: int, month_group: int) -> Resolver:
    def resolve(found: re.Match[str], t: int) -> tuple[int, int] | None:
        if _the_verb_may(found, month_group):
            return None
        year = _ymd(t)[0]
        month, day = _month_number(found[month_group]), int(found[day_group])
        for candidate in (year, year - 1):
            try:
                at = day_of(candidate, month, day)
            except ValueError:
                return None
            if _ymd(at) != (candidate, month, day):
                continue  # 29 Feb of a common year; 31 April: no such day
            if at <= t:
                return at, at
        return None
    return resolve


def _year(found: re.Match[str], t: int) -> tuple[int, int] | None:
    year = int(found[1])
    return _year_span(year) if 1900 <= year <= _ymd(t)[0] else None


def _fixed(back: int) -> Resolver:
    return lambda found, t: (t - back, t - back)


def _recently(found: re.Match[str], t: int) -> tuple[int, int] | None:
    return t - 14, t


def _whole_date(year: int, month: int, day: int) -> Resolver:
    """"5 Jan 2024": that day, if there is one (not 31 Feb)."""
    def resolve(found: re.Match[str], t: int) -> tuple[int, int] | None:
        wanted = (int(found[year]), _month_number(found[month]), int(found[day]))
        try:
            at = day_of(*wanted)
        except (OverflowError, ValueError):
            return None
        return (at, at) if _ymd(at) == wanted else None
    return resolve


@dataclass(frozen=True)
class _Phrase:
    pattern: re.Pattern[str]
    resolve: Resolver
    relative: bool  # read against the day asked
    words: frozenset[str]  # it holds one of these (lower case; a digit as "0"–"9")
    # Past or future by the rest of the question ("in March", "on Monday"): read only when
    # the question is about the past ("What did I do in March?", not "What should I pack
    # for Bruges in March?").
    either_way: bool = False


_I = re.IGNORECASE
_DIGITS = frozenset("0123456789")
_MONTH_WORDS = frozenset(
    """
    jan january feb february mar march apr april may jun june jul july aug august sep sept
    september oct october nov november dec december
    """.split()
)
_WEEKDAY_WORDS = frozenset(_WEEKDAYS)
# Longest phrases first: a span of text is read once ("the day before yesterday" is not also
# "yesterday"; "last week" inside "the last week" is the rolling week); whole dates first.
_PHRASES: tuple[_Phrase, ...] = (
    *(_Phrase(pattern, _whole_date(*groups), False, _DIGITS) for pattern, groups in _ASKED_DATES),
    _Phrase(re.compile(rf"\b{_MONTH}\.?,?\s+(\d{{4}})\b", _I), _month_with_year, False,
            _DIGITS),
    _Phrase(re.compile(r"\b(?:in|during|since)\s+(\d{4})\b", _I), _year, False, _DIGITS),
    _Phrase(re.compile(r"\bthe day before yesterday\b", _I), _fixed(2), True,
            frozenset({"yesterday"})),
    _Phrase(re.compile(r"\b(?:yesterday|last night)\b", _I), _fixed(1), True,
            frozenset({"yesterday", "night"})),
    _Phrase(re.compile(r"\b(?:today|tonight|this (?:morning|afternoon|evening))\b", _I),
            _fixed(0), True, frozenset({"today", "tonight", "morning", "afternoon", "evening"})),
    _Phrase(re.compile(rf"\b{_COUNT}\s+{_UNIT}\s+ago\b", _I), _ago, True, frozenset({"ago"})),
    # Not "the last day of school": that names a day by what happened.
    _Phrase(re.compile(rf"\bthe\s+(?:past|last|previous)\s+(?:{_COUNT}\s+)?{_UNIT}\b"
                       r"(?!\s+of\b)", _I), _past, True, frozenset({"past", "last", "previous"})),
    _Phrase(re.compile(r"\b(?:last|this past|over the|on the|at the)\s+weekend\b", _I),
            _past_weekend, True, frozenset({"weekend"})),
    _Phrase(re.compile(r"\bthis\s+weekend\b", _I), _this_weekend, True, frozenset({"weekend"})),
    _Phrase(re.compile(r"\b(?:last|previous|this past)\s+(week|month|year)\b(?!\s+of\b)", _I),
            _last_unit, True, frozenset({"week", "month", "year"})),
    _Phrase(re.compile(r"\bthis\s+(week|month|year)\b", _I), _this_unit, True,
            frozenset({"week", "month", "year"})),
    _Phrase(re.compile(rf"\b(?:last|this past)\s+{_WEEKDAY}\b", _I), _weekday_before, True,
            _WEEKDAY_WORDS),
    _Phrase(re.compile(rf"\bon\s+{_WEEKDAY}\b", _I), _weekday_before, True, _WEEKDAY_WORDS,
            either_way=True),
    _Phrase(re.compile(rf"\b(last|since)\s+{_MONTH}\b(?![\s,.]*\d)", _I), _month_without_year,
            True, _MONTH_WORDS),
    _Phrase(re.compile(rf"\b(in|during|early|late|mid)[\s-]+(?:of\s+)?{_MONTH}\b"
                       r"(?![\s,.]*\d)", _I), _month_without_year, True, _MONTH_WORDS,
            either_way=True),
    _Phrase(re.compile(rf"\b{_DAY}(?:\s+of)?\s+{_MONTH}\b(?![\s,.]*\d)", _I),
            _day_without_year(1, 2), True, _MONTH_WORDS, either_way=True),
    _Phrase(re.compile(rf"\b{_MONTH}\.?\s+{_DAY}\b(?![\s,.]*\d)", _I),
            _day_without_year(2, 1), True, _MONTH_WORDS, either_way=True),
    _Phrase(re.compile(r"\b(?:recently|lately|these days)\b", _I), _recently, True,
            frozenset({"recently", "lately", "these"})),
)
_TIME_WORDS = frozenset().union(*(phrase.words for phrase in _PHRASES))
# Words that put a question in the past, for the phrases that read either way.
_PAST = frozenset(
    """
    did was were had went happened said told talked mentioned discussed spoke met ate bought
    visited saw made got started finished tried spent cooked played watched called ago
    """.split()
)
_GATE_WORD = re.compile(r"[a-z]+|\d")
NOTHING_ASKED = TimeAsked((), False)
# A question names a few times; a text naming thousands ("5 Jan 5 Jan …", pasted logs) is
# read up to this many, so reading stays linear in its length.
MAX_PHRASES = 32


def time_asked_about(text: str, day: int, offset: float = 0.0) -> TimeAsked:
    """The spans of days ``text`` names, in the order written, read against ``day`` (the day
    it is asked, days since 1970-01-01 in a zone ``offset`` seconds ahead of UTC)."""
    words = set(_GATE_WORD.findall(text.lower()))
    if _TIME_WORDS.isdisjoint(words):  # most questions: one pass over the words, ~2–12 µs
        return NOTHING_ASKED
    past = not _PAST.isdisjoint(words)
    taken: list[tuple[int, int]] = []  # character ranges already read
    found: list[tuple[int, DaySpan]] = []
    for phrase in _PHRASES:
        if phrase.words.isdisjoint(words):
            continue
        for match in phrase.pattern.finditer(text):
            if len(taken) >= MAX_PHRASES:
                break
            if any(match.start() < b and a < match.end() for a, b in taken):
                continue
            taken.append(match.span())  # read, even when it names no past day
            days = phrase.resolve(match, day)
            if days is None or days[0] > days[1] or (phrase.either_way and not past):
                continue
            found.append((match.start(), DaySpan(days[0], days[1], match[0], phrase.relative)))
    unique: dict[tuple[int, int], DaySpan] = {}  # the same days named twice: the first words
    for _, named in sorted(found, key=lambda f: f[0]):
        unique.setdefault((named.first, named.last), named)
    spans = tuple(unique.values())
    if not spans:
        return NOTHING_ASKED
    kept, at = [], 0
    for start, end in sorted(taken):
        kept.append(text[at:max(at, start)])
        at = max(at, end)
    rest = " ".join([*kept, text[at:]])
    only_time = not any(
        w not in ENGLISH_STOPWORDS and w not in _GENERIC and not w.isdigit()
        for w in (w.casefold() for w in _WORD.findall(rest))
    )
    return TimeAsked(spans, only_time, offset)


def read_time(text: str, clock: Clock) -> TimeAsked:
    """The times ``text`` asks about, in ``clock``'s days."""
    return time_asked_about(text, clock.today, clock.offset)


def days_asked_about(text: str) -> list[int]:
    """The calendar days a text names with day, month and year, in the order written;
    "5 Jan" without a year names none here (``time_asked_about`` reads it against a day)."""
    spans = time_asked_about(text, today()).spans
    return [span.first for span in spans if not span.relative and span.first == span.last]
