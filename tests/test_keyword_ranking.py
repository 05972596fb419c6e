"""Keyword index (analyzer, BM25) and ranking (fusion, recency ties, MMR, superseded)."""

from __future__ import annotations

import calendar
import threading

import numpy as np
import pytest

from proxy.memory.keyword import (
    Analyzer,
    KeywordIndex,
    asks_only,
    dated_text,
)
from proxy.memory.ranking import (
    RankingParams,
    damp_questions,
    date_proximity,
    eligible_mask,
    lift_dated,
    lift_neighbours,
    minmax,
    mmr_select,
    order_by_score,
    rank_memories,
    rrf_fusion,
    weighted_fusion,
)
from proxy.memory.when import days_asked_about

NO_MMR = RankingParams(mmr_lambda=1.0)


def index_of(*texts: str) -> KeywordIndex:
    index = KeywordIndex()
    index.add(list(texts))
    return index


def unit(*rows: list[float]) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


# -- analyzer -----------------------------------------------------------------------------
def test_terms_are_lowercased_stemmed_and_without_stopwords() -> None:
    assert Analyzer().terms("The dogs were RUNNING through the parks!") == ["dog", "run", "park"]


def test_inflections_share_a_stem() -> None:
    analyzer = Analyzer()
    assert analyzer.terms("moved") == analyzer.terms("moving") == analyzer.terms("moves")
    assert analyzer.terms("switched") == analyzer.terms("switching")


def test_contractions_and_possessives_leave_no_fragments() -> None:
    assert Analyzer().terms("I'm sure Luna's bowl isn't empty, don't worry") == [
        "sure", "luna", "bowl", "empti", "worri",
    ]


def test_unicode_words_split_and_fold_without_english_stemming() -> None:
    analyzer = Analyzer()
    assert analyzer.terms("Moving to ZÜRICH, Kraków and Москва") == [
        "move", "zürich", "kraków", "москва",
    ]
    assert analyzer.terms("ﬁsh") == ["fish"]  # NFKC: the ligature is two letters
    assert analyzer.terms("Python_3.12 2023") == ["python", "3", "12", "2023"]


def test_without_stemming() -> None:
    assert Analyzer(stem=False).terms("running dogs") == ["running", "dogs"]


def test_dated_text_keeps_the_month_searchable() -> None:
    ts = calendar.timegm((2023, 5, 8, 19, 0, 0))
    assert dated_text("User moved to Lisbon.", ts) == "[8 May 2023] User moved to Lisbon."
    assert dated_text("no date", None) == "no date"
    assert Analyzer().terms(dated_text("x", ts)) == ["8", "may", "2023", "x"]


# -- BM25 ---------------------------------------------------------------------------------
def test_scores_are_aligned_with_insertion_order_and_zero_without_a_match() -> None:
    index = index_of("User has a beagle named Biscuit", "User likes jazz", "Biscuit is a dog")
    scores = index.scores("What is Biscuit?")
    assert scores.shape == (3,) and scores.dtype == np.float32
    assert scores[1] == 0.0 and scores[0] > 0 and scores[2] > 0


def test_rare_terms_outweigh_common_ones() -> None:
    index = index_of(
        "User lives in Lisbon", "User lives near the sea", "User lives with a cat",
        "User visited Lisbon once",
    )
    scores = index.scores("lives in Lisbon")
    # "lisbon" (2 of 4 documents) is worth more than "live" (3 of 4).
    assert scores[0] > scores[3] > scores[1]


def test_term_frequency_saturates_and_long_documents_are_penalised() -> None:
    index = index_of(
        "cat", "cat cat", "cat cat cat cat cat cat cat cat", "cat and a very long story about "
        "the weather the garden the neighbours and everything else", "dog",
    )
    s = index.scores("cat")
    assert s[1] > s[0]  # more occurrences, more score ...
    assert s[2] - s[1] < s[1] - s[0] + 0.5  # ... but with diminishing returns (k1)
    assert s[0] > s[3]  # same single match, shorter document wins (b)


def test_stopword_only_query_and_empty_index_score_nothing() -> None:
    assert index_of("what is it", "User is here").scores("what is it?").tolist() == [0.0, 0.0]
    assert KeywordIndex().scores("anything").shape == (0,)


def test_incremental_adds_equal_one_bulk_add() -> None:
    texts = ["User adopted a beagle", "User's beagle is called Biscuit", "User likes tea"]
    bulk = index_of(*texts)
    step = KeywordIndex()
    step.scores("beagle")  # a query in between must not break later appends
    for text in texts:
        step.add([text])
    np.testing.assert_allclose(step.scores("beagle Biscuit"), bulk.scores("beagle Biscuit"))


def test_remove_and_replace_keep_alignment() -> None:
    index = index_of("User likes tea", "User adopted a beagle", "User lives in Porto")
    index.remove([0])
    assert len(index) == 2
    np.testing.assert_allclose(
        index.scores("beagle Porto"),
        index_of("User adopted a beagle", "User lives in Porto").scores("beagle Porto"),
    )
    index.replace(1, "User moved to Lisbon")
    assert index.scores("Porto").tolist() == [0.0, 0.0]
    assert index.scores("Lisbon")[1] > 0


def test_dates_are_indexed_when_given() -> None:
    index = KeywordIndex()
    index.add(
        ["User went to a wedding", "User went to a conference"],
        created_at=[calendar.timegm((2023, 5, 8, 0, 0, 0)), calendar.timegm((2023, 6, 1, 0, 0, 0))],
    )
    scores = index.scores("What did I do in May 2023?")
    assert scores[0] > scores[1]
    with pytest.raises(ValueError):
        index.add(["a", "b"], created_at=[0.0])


def test_concurrent_adds_and_queries() -> None:
    index = KeywordIndex()
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(200):
            index.add([f"User note {i} about beagles"])

    def reader() -> None:
        try:
            for _ in range(200):
                assert index.scores("beagle").shape[0] <= 200
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(index) == 200


# -- fusion -------------------------------------------------------------------------------
def test_minmax_over_eligible_entries() -> None:
    np.testing.assert_allclose(minmax(np.array([1.0, 3.0, 2.0])), [0.0, 1.0, 0.5])
    assert minmax(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]
    # A superseded memory's score neither stretches the scale nor gets a value.
    eligible = np.array([True, False, True])
    np.testing.assert_allclose(minmax(np.array([1.0, 9.0, 3.0]), eligible), [0.0, 0.0, 1.0])


def test_hybrid_wins_where_dense_and_keyword_each_pick_a_wrong_memory() -> None:
    dense = np.array([0.55, 0.60, 0.20, 0.10])  # dense alone: memory 1
    keyword = np.array([2.0, 0.0, 2.5, 0.0])  # keyword alone: memory 2
    assert int(np.argmax(dense)) == 1 and int(np.argmax(keyword)) == 2
    assert rank_memories(dense, keyword, 1, NO_MMR).indices.tolist() == [0]
    # Rank fusion cannot see that memory 0 is close behind in both: 1/62 + 1/62 < 1/61 + 1/63.
    rrf = RankingParams(fusion="rrf", mmr_lambda=1.0)
    assert rank_memories(dense, keyword, 1, rrf).indices.tolist() == [2]


def test_keyword_rescues_what_dense_scores_low() -> None:
    # docs/design.md: MiniLM scores "What tech stack am I using?" ~0.1 against the stack fact.
    memories = [
        "User is building Pantry Pal with a Next.js and Postgres tech stack.",
        "User asked how to stack firewood for the winter.",
        "User enjoys programming puzzles on weekends.",
    ]
    dense = np.array([0.10, 0.05, 0.30])
    keyword = index_of(*memories).scores("What tech stack am I using?")
    assert int(np.argmax(dense)) == 2
    assert rank_memories(dense, keyword, 3, NO_MMR).indices[0] == 0


def test_dense_rescues_what_keywords_rank_wrong() -> None:
    memories = [
        "User adopted a beagle named Biscuit.",
        "User's neighbour's dog barks at every dog in the street.",
        "User's name is Maya Chen.",
        "User likes jazz.",
    ]
    question = "What's my dog's name?"
    keyword = index_of(*memories).scores(question)
    dense = np.array([0.62, 0.15, 0.40, 0.05])
    assert int(np.argmax(keyword)) == 1
    assert rank_memories(dense, keyword, 4, NO_MMR).indices[0] == 0


def test_weighted_fusion_weights_and_scale() -> None:
    dense, keyword = np.array([1.0, 0.0]), np.array([0.0, 5.0])
    np.testing.assert_allclose(weighted_fusion(dense, keyword, 0.7, 0.3), [0.7, 0.3])
    np.testing.assert_allclose(weighted_fusion(dense, keyword, 2.0, 2.0), [0.5, 0.5])
    with pytest.raises(ValueError):
        weighted_fusion(dense, keyword, 0.0, 0.0)


def test_no_keyword_match_leaves_the_dense_order() -> None:
    dense = np.array([0.2, 0.9, 0.5])
    ranked = rank_memories(dense, np.zeros(3), 3, NO_MMR)
    assert ranked.indices.tolist() == [1, 2, 0]


def test_rrf_gives_no_keyword_share_without_a_match() -> None:
    fused = rrf_fusion(np.array([0.9, 0.8, 0.7]), np.array([0.0, 0.0, 1.0]), k=60)
    assert fused[2] > fused[0] > fused[1]
    assert fused[0] == pytest.approx(1 / 61)


# -- recency, MMR, superseded ---------------------------------------------------------------
def test_recency_breaks_ties_only() -> None:
    created = np.array([100.0, 300.0, 200.0])
    assert order_by_score(np.array([0.5, 0.5, 0.5]), created).tolist() == [1, 2, 0]
    # Within the tolerance: tied; beyond it: the score decides.
    assert order_by_score(np.array([0.501, 0.499, 0.2]), created, tie_tolerance=0.01)[0] == 1
    assert order_by_score(np.array([0.6, 0.5, 0.2]), created, tie_tolerance=0.01)[0] == 0
    assert order_by_score(np.array([0.5, 0.5]), None).tolist() == [0, 1]


def test_mmr_drops_a_near_duplicate_but_keeps_related_memories() -> None:
    vectors = unit([1, 0, 0], [0.99, 0.05, 0], [0, 1, 0], [0.5, 0.5, 0.707])
    scores = np.array([1.0, 0.97, 0.8, 0.75])
    order = np.array([0, 1, 2, 3])
    chosen = mmr_select(order, scores, vectors, k=3)
    assert chosen[:3].tolist() == [0, 2, 3]  # the duplicate of 0 waits
    assert chosen.tolist() == [0, 2, 3, 1]  # ... but is not lost
    # Related but not duplicates (cosine 0.5): the order is the score order.
    assert mmr_select(np.array([0, 2, 3]), scores, vectors, k=3).tolist() == [0, 2, 3]
    assert mmr_select(order, scores, vectors, k=3, lambda_=1.0).tolist() == [0, 1, 2, 3]


def test_rank_memories_runs_mmr_on_the_vectors() -> None:
    vectors = unit([1, 0], [0.999, 0.04], [0.3, 1], [-1, 0.2])
    dense = np.array([0.80, 0.81, 0.70, 0.10])
    keyword = np.array([2.0, 2.0, 1.5, 0.0])
    # Memories 0 and 1 are the same fact twice: only one of them makes the top 2.
    assert rank_memories(dense, keyword, 2, NO_MMR, vectors=vectors).indices.tolist() == [1, 0]
    assert rank_memories(dense, keyword, 2, vectors=vectors).indices.tolist() == [1, 2]


def test_superseded_memories_are_excluded_unless_asked_for() -> None:
    superseded_by = [None, "m2", None]
    assert eligible_mask(superseded_by).tolist() == [True, False, True]
    dense = np.array([0.3, 0.9, 0.8])  # "lives in Berlin" (superseded) scores highest
    keyword = np.array([0.0, 3.0, 1.0])
    ranked = rank_memories(dense, keyword, 3, NO_MMR, superseded_by=superseded_by)
    assert ranked.indices.tolist() == [2, 0]
    history = RankingParams(mmr_lambda=1.0, include_superseded=True)
    ranked = rank_memories(dense, keyword, 3, history, superseded_by=superseded_by)
    assert ranked.indices.tolist() == [1, 2, 0]


def test_current_fact_beats_its_superseded_twin_on_a_tie() -> None:
    dense, keyword = np.array([0.7, 0.7]), np.array([1.0, 1.0])
    ranked = rank_memories(
        dense, keyword, 2, RankingParams(include_superseded=True),
        created_at=np.array([1_000.0, 2_000.0]), superseded_by=["m1", None],
    )
    assert ranked.indices.tolist() == [1, 0]


def test_empty_and_fully_superseded_inputs() -> None:
    empty = rank_memories(np.zeros(0), np.zeros(0), 5)
    assert empty.indices.size == 0 and empty.scores.size == 0
    gone = rank_memories(np.array([0.9]), np.array([1.0]), 5, superseded_by=["m9"])
    assert gone.indices.size == 0


def test_a_month_is_one_term_however_written_and_numeric_dates_are_spelled() -> None:
    analyzer = Analyzer()
    assert analyzer.terms("5 January 2024") == analyzer.terms("5 Jan 2024") == [
        "5", "jan", "2024"]
    assert analyzer.terms("Sept, September") == ["sep", "sep"]
    assert analyzer.terms("on 05.01.2024 or 2024-01-05") == analyzer.terms("5 Jan 2024") * 2
    assert analyzer.terms("13.13.2024") == ["13", "13", "2024"]  # not a date: left alone


def day_of(year: int, month: int, day: int) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0)) // 86_400


def test_the_days_a_question_names_however_written() -> None:
    jan5 = day_of(2024, 1, 5)
    for text in ("on 5 Jan 2024", "on the 5th of January, 2024", "January 5, 2024",
                 "05.01.2024", "2024-01-05", "5 jan. 2024"):
        assert days_asked_about(f"What did I do {text}?") == [jan5], text
    assert days_asked_about("from 2024-01-05 to 7 Jan 2024, and 5 January 2024 again") == [
        jan5, day_of(2024, 1, 7)]
    # No year, no such day, no date at all: no day named.
    assert days_asked_about("on 5 Jan") == []
    assert days_asked_about("on 31 Feb 2024 or 13.13.2024") == []
    assert days_asked_about("I ran 5 km in 2024") == []


def test_date_proximity_falls_linearly_to_nothing_beyond_the_window() -> None:
    day = day_of(2024, 1, 5)
    created = (np.array([0, 1, -1, 2, 3, 30]) + day) * 86_400.0 + 20 * 3600  # evenings
    near = date_proximity(created, [day], window=2)
    assert near.tolist() == pytest.approx([1, 2 / 3, 2 / 3, 1 / 3, 0, 0])
    both = date_proximity(created, [day, day + 30], window=2)
    assert both[5] == 1.0 and both[0] == 1.0  # the nearest named day counts
    assert date_proximity(created, [day], window=0).tolist() == [1, 0, 0, 0, 0, 0]


def test_a_named_day_lifts_its_memories_over_equal_ones_and_nothing_else_changes() -> None:
    day = day_of(2024, 1, 5)
    created = np.array([day - 20, day + 1, day + 10], dtype=np.float64) * 86_400.0
    scores = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    lifted = lift_dated(scores, created, [day], 0.2, 2)
    assert lifted.argmax() == 1 and lifted.max() <= 1.0
    assert lifted[0] == lifted[2] == pytest.approx(0.5 / 1.2)
    blocked = lift_dated(scores, created, [day], 0.2, 2,
                         eligible=np.array([True, False, True]))
    assert blocked[1] == pytest.approx(0.5 / 1.2)
    assert lift_dated(scores, created, [], 0.2, 2) is scores
    assert lift_dated(scores, created, [day], 0.0, 2) is scores
    # Through rank_memories: without the day the newest of the tie wins, with it the day's.
    dense, keyword = np.full(3, 0.4), np.full(3, 1.0)
    plain = rank_memories(dense, keyword, 3, NO_MMR, created_at=created)
    dated = rank_memories(dense, keyword, 3, NO_MMR, created_at=created, days=[day])
    assert plain.indices.tolist() == [2, 1, 0]
    assert dated.indices.tolist() == [1, 2, 0]
    off = RankingParams(mmr_lambda=1.0, date_weight=0.0)
    assert rank_memories(dense, keyword, 3, off, created_at=created,
                         days=[day]).indices.tolist() == [2, 1, 0]


def test_a_memory_asks_only_when_every_sentence_is_a_question() -> None:
    assert asks_only("Any plans for the weekend?")
    assert asks_only("lol what? Really??")
    assert not asks_only("Oh nice! What about you?")
    assert not asks_only("Any plans? I have none")
    assert not asks_only("I went hiking.")
    assert not asks_only("") and not asks_only("   ")


def test_a_question_keeps_less_of_its_score_after_lifting_its_reply() -> None:
    scores = np.array([1.0, 0.5, 0.6], dtype=np.float32)
    asks = np.array([True, False, False])
    assert damp_questions(scores, asks, 0.3).tolist() == pytest.approx([0.7, 0.5, 0.6])
    assert damp_questions(scores, asks, 0.0) is scores
    # Row 0 asks, row 1 is its reply (its session neighbour), row 2 a statement elsewhere,
    # row 3 matches nothing.
    asks = np.array([True, False, False, False])
    pairs = {0: [1], 1: [0], 2: [], 3: []}
    dense, keyword = np.array([0.9, 0.6, 0.62, 0.1]), np.array([3.0, 1.5, 1.5, 0.0])
    plain = rank_memories(dense, keyword, 4, replace_params(question_penalty=0.0),
                          neighbours=lambda i: pairs[i], asks=asks)
    damped = rank_memories(dense, keyword, 4, replace_params(question_penalty=0.5),
                           neighbours=lambda i: pairs[i], asks=asks)
    assert plain.indices.tolist() == [0, 1, 2, 3]
    assert damped.indices.tolist() == [1, 2, 0, 3]
    # The reply kept the lift of the question's full score: damping comes after the lift.
    lifted = lift_neighbours(weighted_fusion(dense, keyword), lambda i: pairs[i], 0.2, 32)
    assert damped.scores.tolist() == pytest.approx(
        [lifted[1], lifted[2], 0.5 * lifted[0], lifted[3]])


def replace_params(**changes: float) -> RankingParams:
    return RankingParams(mmr_lambda=1.0, **changes)  # type: ignore[arg-type]
