"""The times a question asks about, read against the day it is asked, and how they rank."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from proxy.memory.ranking import RankingParams, date_proximity, rank_memories
from proxy.memory.when import (
    MAX_PHRASES,
    Clock,
    day_of,
    days_asked_about,
    read_time,
    time_asked_about,
)

WEDNESDAY = day_of(2025, 3, 12)  # the day asked, in every case below


def spans(text: str, day: int = WEDNESDAY) -> list[tuple[str, str, str]]:
    return [(s.to_json()["from"], s.to_json()["to"], s.said)
            for s in time_asked_about(text, day).spans]


@pytest.mark.parametrize(("question", "first", "last"), [
    ("What did I do yesterday?", "2025-03-11", "2025-03-11"),
    ("What did I cook last night?", "2025-03-11", "2025-03-11"),
    ("What did I eat the day before yesterday?", "2025-03-10", "2025-03-10"),
    ("What did I say this morning?", "2025-03-12", "2025-03-12"),
    ("What did we talk about last week?", "2025-03-03", "2025-03-09"),  # Monday to Sunday
    ("What did I do this week?", "2025-03-10", "2025-03-12"),
    ("What happened in the past week?", "2025-03-05", "2025-03-12"),
    ("Anything new over the last few days?", "2025-03-08", "2025-03-12"),
    ("What did I read in the last 2 weeks?", "2025-02-26", "2025-03-12"),
    ("What did I buy three days ago?", "2025-03-09", "2025-03-09"),
    ("Who did I meet a couple of days ago?", "2025-03-10", "2025-03-10"),
    ("Where did I go a few days ago?", "2025-03-08", "2025-03-10"),
    ("What did I fix two weeks ago?", "2025-02-23", "2025-03-01"),
    ("What did I plan 2 months ago?", "2025-01-01", "2025-01-31"),
    ("What did I start a year ago?", "2024-02-10", "2024-04-12"),
    ("What did I do last month?", "2025-02-01", "2025-02-28"),
    ("What did I do this month?", "2025-03-01", "2025-03-12"),
    ("What did I learn last year?", "2024-01-01", "2024-12-31"),
    ("What did I do over the weekend?", "2025-03-08", "2025-03-09"),
    ("How was last weekend?", "2025-03-08", "2025-03-09"),
    ("What did I eat on Monday?", "2025-03-10", "2025-03-10"),
    ("Who called last Wednesday?", "2025-03-05", "2025-03-05"),
    ("What did I do in February?", "2025-02-01", "2025-02-28"),
    ("What did I do in March?", "2025-03-01", "2025-03-12"),  # so far
    ("Where was I in April?", "2024-04-01", "2024-04-30"),  # not begun: last year's
    ("What have I learned since January?", "2025-01-01", "2025-03-12"),
    ("What did I do on 5 Jan?", "2025-01-05", "2025-01-05"),
    ("What did I do on December 24th?", "2024-12-24", "2024-12-24"),
    ("What did I do in May 2024?", "2024-05-01", "2024-05-31"),
    ("What did I build in 2023?", "2023-01-01", "2023-12-31"),
    ("What have I been reading lately?", "2025-02-26", "2025-03-12"),
    ("What did I do on 5 Jan 2024?", "2024-01-05", "2024-01-05"),
])
def test_a_time_in_a_question_is_a_span_of_past_days(question: str, first: str, last: str
                                                     ) -> None:
    [(got_first, got_last, _)] = spans(question)
    assert (got_first, got_last) == (first, last)


def test_longer_phrases_are_read_once_and_the_same_days_once() -> None:
    assert spans("the day before yesterday") == [("2025-03-10", "2025-03-10",
                                                  "the day before yesterday")]
    assert [said for *_, said in spans("over the last week")] == ["the last week"]
    assert [said for *_, said in spans("last weekend")] == ["last weekend"]
    assert spans("on 5 Jan 2024, I mean 5 January 2024") == [
        ("2024-01-05", "2024-01-05", "5 Jan 2024")]
    assert [said for *_, said in spans("yesterday or last month")] == ["yesterday", "last month"]


@pytest.mark.parametrize("text", [
    "What's my name?", "What will I do next week?", "What are my plans this weekend?",
    "I may 5 times have said it", "What happens in 2031?", "Which Christmas gift did I like?",
    "I ran 5 km", "Remind me of my bees", "When was the last day of school?",
    # Past or future by the rest of the question: a plan is not a look back.
    "What should I pack for Bruges in February?", "What should I cook on Monday?",
    "Is the concert on 5 June?",
    "What did I do the last week of the course?",
])
def test_no_past_time_named_no_span(text: str) -> None:
    assert spans(text) == []


def test_this_weekend_on_a_weekend_is_the_weekend_so_far() -> None:
    sunday = day_of(2025, 3, 16)
    assert spans("What did I do this weekend?", sunday) == [
        ("2025-03-15", "2025-03-16", "this weekend")]


@pytest.mark.parametrize(("question", "only_time"), [
    ("What did I do yesterday?", True),
    ("What did we talk about last week?", True),
    ("Do you remember what happened over the weekend?", True),
    ("What did I eat yesterday?", False),
    ("What did I tell you about Berlin last week?", False),
])
def test_a_question_with_nothing_but_its_time_ranks_by_date_first(question: str,
                                                                  only_time: bool) -> None:
    assert time_asked_about(question, WEDNESDAY).only_time is only_time


def test_a_text_naming_thousands_of_times_is_read_up_to_a_bound() -> None:
    """Each phrase read is checked against those read before: "yesterday " × 20,000 took 14 s
    before the bound, "5 jan " × 20,000 19 s."""
    many = " ".join(f"on {d} Jan 2001, {d} Feb 2001, {d} Mar 2001" for d in range(1, 29))
    asked = time_asked_about(many, WEDNESDAY)
    assert len(asked.spans) == MAX_PHRASES == 32
    assert asked.spans[0].to_json()["from"] == "2001-01-01"
    assert len(time_asked_about("yesterday " * 20_000, WEDNESDAY).spans) == 1


def test_a_clock_counts_days_in_its_zone() -> None:
    """Kiritimati is UTC+14: at 12:00 UTC on 12 March it is 02:00 on the 13th there, so its
    "yesterday" is the 12th, whose memories are dated from 10:00 UTC on the 11th."""
    now = datetime(2025, 3, 12, 12, tzinfo=timezone.utc).timestamp()
    clock = Clock.at("Pacific/Kiritimati", now)
    assert clock.offset == 14 * 3600 and clock.today == day_of(2025, 3, 13)
    assert clock.today_text() == "Thursday, 2025-03-13 (Pacific/Kiritimati)"
    asked = read_time("What did I do yesterday?", clock)
    assert [s.to_json()["from"] for s in asked.spans] == ["2025-03-12"]
    said = [datetime(2025, 3, 11, h, tzinfo=timezone.utc).timestamp() for h in (9, 11, 20)]
    assert [clock.date(t) for t in said] == ["2025-03-11", "2025-03-12", "2025-03-12"]
    near = date_proximity(np.array(said), asked.days(), window=0, offset=asked.offset)
    assert near.tolist() == [0, 1, 1]
    utc = Clock.at("UTC", now)
    assert utc.offset == 0 and utc.today == day_of(2025, 3, 12)
    assert date_proximity(np.array(said), read_time("yesterday", utc).days(), 0).tolist() \
        == [1, 1, 1]


def test_far_dates_are_days_too_and_impossible_ones_none() -> None:
    assert spans("on 0001-01-01") == [("0001-01-01", "0001-01-01", "0001-01-01")]
    assert spans("31.12.9999") == [("9999-12-31", "9999-12-31", "31.12.9999")]
    assert spans("on 0000-01-05 or on 31 Feb 2024 or January 2000000") == []
    assert spans("999 years ago")[0][0].startswith("1026-")  # 365-day years: about then


def test_relative_and_whole_dates_are_told_apart() -> None:
    asked = time_asked_about("on 5 Jan 2024 and yesterday", WEDNESDAY)
    assert [s.relative for s in asked.spans] == [False, True]
    assert asked.relative
    assert not time_asked_about("on 5 Jan 2024", WEDNESDAY).relative
    assert days_asked_about("on 5 Jan 2024, or in 2024, or yesterday") == [day_of(2024, 1, 5)]


def test_a_span_is_whole_and_falls_off_beyond_its_ends() -> None:
    first, last = day_of(2025, 3, 3), day_of(2025, 3, 9)
    days = np.array([first - 3, first - 1, first, first + 3, last, last + 2, last + 3])
    near = date_proximity(days * 86_400.0 + 3600, [(first, last)], window=2)
    assert near.tolist() == pytest.approx([0, 2 / 3, 1, 1, 1, 1 / 3, 0])


def test_dates_first_puts_every_memory_of_the_span_above_every_other() -> None:
    first, last = day_of(2025, 3, 3), day_of(2025, 3, 9)
    created = np.array([first - 30, first + 1, last, first - 10, last + 10]) * 86_400.0
    # The two of the span match the (content-free) question worst.
    dense = np.array([0.9, 0.1, 0.2, 0.8, 0.7])
    keyword = np.array([2.0, 0.0, 0.0, 1.5, 1.0])
    params = RankingParams(mmr_lambda=1.0)
    nudged = rank_memories(dense, keyword, 5, params, created_at=created,
                           days=[(first, last)])
    assert nudged.indices.tolist()[:2] == [0, 3]  # the lift alone is a nudge
    first_by_date = rank_memories(dense, keyword, 5, params, created_at=created,
                                  days=[(first, last)], dates_first=True)
    assert sorted(first_by_date.indices.tolist()[:2]) == [1, 2]
    assert first_by_date.indices.tolist()[2:] == [0, 3, 4]  # the rest as before
    off = RankingParams(mmr_lambda=1.0, date_weight=0.0)
    assert rank_memories(dense, keyword, 5, off, created_at=created, days=[(first, last)],
                         dates_first=True).indices.tolist() == [0, 3, 4, 2, 1]
