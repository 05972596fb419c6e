"""Long-chat trimming and the per-conversation memory block, as pure functions."""

from __future__ import annotations

import time

import numpy as np

from proxy.config import Settings
from proxy.gateway.shaping import RequestShaper
from proxy.memory.conversation import StableBlocks, conversation_key
from proxy.memory.model import Memory, ScoredMemory
from proxy.memory.ranking import RankingParams
from proxy.memory.trimming import TrimPlan, Turn, TurnRecall, plan_trim


def chat(exchanges: int, tokens: int = 100, system: bool = True) -> list[Turn]:
    turns = [Turn("system", "You are helpful.", 20)] if system else []
    for i in range(exchanges):
        turns.append(Turn("user", f"question {i}", tokens))
        turns.append(Turn("assistant", f"answer {i}", tokens))
    turns.append(Turn("user", "newest question", tokens))
    return turns


def test_no_trim_within_budget() -> None:
    turns = chat(5)
    plan = plan_trim(turns, budget=5000)
    assert not plan.trimmed
    assert plan.kept_tokens == sum(t.tokens for t in turns)


def test_trim_keeps_system_prompt_and_newest_turns_and_fits() -> None:
    turns = chat(100)
    plan = plan_trim(turns, budget=4000, step=2000)
    assert plan.trimmed
    assert plan.start == 1  # the system prompt is never left out
    assert plan.end <= len(turns) - 1 - 4  # newest user turn + 4 before it kept
    assert plan.kept_tokens <= 4000
    assert plan.kept_tokens + plan.dropped_tokens == sum(t.tokens for t in turns)


def test_cut_moves_in_steps_so_the_prefix_holds_for_many_turns() -> None:
    ends = [plan_trim(chat(n), budget=4000, step=2000).end for n in range(40, 120)]
    changes = sum(1 for a, b in zip(ends, ends[1:], strict=False) if a != b)
    # 80 turns of growth at 200 tokens each = 16,000 tokens = 8 steps of 2,000.
    assert 1 <= changes <= 9
    assert all(b >= a for a, b in zip(ends, ends[1:], strict=False))


def test_tool_results_stay_with_their_call() -> None:
    turns = [Turn("system", "s", 10)]
    for i in range(30):
        turns.append(Turn("user", f"u{i}", 100))
        turns.append(Turn("assistant", f"call {i}", 100))
        turns.append(Turn("tool", f"result {i}", 100, attached=True))
        turns.append(Turn("assistant", f"a{i}", 100))
    turns.append(Turn("user", "newest", 100))
    for budget in range(1000, 9000, 250):
        plan = plan_trim(turns, budget=budget, step=500)
        if plan.trimmed:
            assert not turns[plan.end].attached, budget


def test_nothing_to_leave_out_when_only_newest_turns_exceed() -> None:
    turns = [Turn("system", "s", 10), Turn("user", "huge", 10_000)]
    assert not plan_trim(turns, budget=1000).trimmed


def test_recall_prefers_turns_sharing_the_query_words() -> None:
    dropped = [
        Turn("user", "I adopted a beagle named Biscuit last spring", 12),
        Turn("assistant", "That is lovely, beagles are friendly", 10),
        Turn("user", "My favourite pasta is carbonara", 9),
    ]
    recall = TurnRecall()
    chosen = recall.recall(dropped, "what is my dog Biscuit's breed?", None, budget_tokens=100)
    assert chosen == [0]


def test_recall_uses_dense_vectors_once_embedded_and_respects_budget() -> None:
    dropped = [Turn("user", "alpha", 50), Turn("user", "beta", 50), Turn("user", "gamma", 50)]
    recall = TurnRecall()
    assert recall.missing(dropped) == ["alpha", "beta", "gamma"]
    vectors = np.eye(3, dtype=np.float32)
    recall.remember_vectors(["alpha", "beta", "gamma"], vectors)
    assert recall.missing(dropped) == []
    query = np.array([0.0, 1.0, 0.6], dtype=np.float32)
    assert recall.recall(dropped, "unrelated words", query, budget_tokens=50) == [1]
    assert recall.recall(dropped, "unrelated words", query, budget_tokens=100) == [1, 2]


def test_recall_ranks_like_memories_a_question_lifts_its_answer() -> None:
    """The answer often shares no word with the question; said right after a strong hit
    (here a turn that only asks, itself damped), it is lifted above a closer stranger."""
    dropped = [
        Turn("assistant", "Did you ever visit Lisbon?", 10),
        Turn("user", "Yes, I loved the trams and the custard tarts there!", 10),
        Turn("user", "My favourite pasta is carbonara", 10),
    ]
    recall = TurnRecall()
    recall.remember_vectors([t.text for t in dropped], np.array(
        [[0.9, 0.436, 0.0], [0.3, 0.0, 0.954], [0.35, 0.937, 0.0]], dtype=np.float32))
    query = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    assert recall.recall(dropped, "what did I think of Lisbon?", query, 20) == [0, 1]
    # Without the lift (neighbour_weight 0) the closer stranger wins the second place.
    plain = RankingParams(neighbour_weight=0.0)
    assert recall.recall(dropped, "what did I think of Lisbon?", query, 20, params=plain) == [0, 2]


def test_recall_skips_turns_already_in_the_request_as_memories() -> None:
    dropped = [Turn("user", "My dog Biscuit is a beagle", 8),
               Turn("user", "Biscuit hates the rain", 6)]
    recall = TurnRecall()
    assert recall.recall(dropped, "tell me about Biscuit", None, 100) == [0, 1]
    present = frozenset({"My dog Biscuit is a beagle"})
    assert recall.recall(dropped, "tell me about Biscuit", None, 100, present=present) == [1]


def test_recall_extends_a_conversations_keyword_index_as_the_cut_moves() -> None:
    recall = TurnRecall()
    early = [Turn("user", f"chatting about item{i}", 5) for i in range(50)]
    later = [*early, Turn("user", "my boat is named Wavebreaker", 8)]
    assert recall.recall(early, "what is my boat named", None, 100, conversation="c") == []
    assert recall.recall(later, "what is my boat named", None, 100, conversation="c") == [50]
    # A range that is not an extension (another history under the same key) is rebuilt.
    other = [Turn("user", "my boat is a dinghy", 5)]
    assert recall.recall(other, "what is my boat named", None, 100, conversation="c") == [0]


def scored(memory_id: str, text: str) -> ScoredMemory:
    return ScoredMemory(Memory(user_id="u", text=text, id=memory_id), 1.0)


def test_stable_block_is_kept_while_its_memories_are_unchanged() -> None:
    blocks = StableBlocks()
    store = {"a": Memory(user_id="u", text="User lives in Berlin", id="a"),
             "b": Memory(user_id="u", text="User likes tea", id="b")}

    def lookup(ids: list[str]) -> dict[str, Memory | None]:
        return {i: store.get(i) for i in ids}

    first = blocks.place("k", [scored("a", "User lives in Berlin")], lookup, late_limit=4)
    assert not first.kept and [s.memory.id for s in first.stable] == ["a"]
    second = blocks.place("k", [scored("b", "User likes tea"), scored("a", "User lives in Berlin")],
                          lookup, late_limit=4)
    assert second.kept
    assert [s.memory.id for s in second.stable] == ["a"]
    assert [s.memory.id for s in second.late] == ["b"]
    # The kept memory is superseded: the block is chosen again (the memories really changed).
    store["a"] = Memory(user_id="u", text="User lives in Berlin", id="a", superseded_by="c")
    third = blocks.place("k", [scored("c", "User lives in Paris")], lookup, late_limit=4)
    assert not third.kept and [s.memory.id for s in third.stable] == ["c"]


def test_an_empty_first_block_stays_empty_and_later_finds_go_late() -> None:
    blocks = StableBlocks()
    blocks.place("k", [], lambda ids: {}, late_limit=4)
    later = blocks.place("k", [scored("a", "x")], lambda ids: {}, late_limit=4)
    assert later.kept and later.stable == [] and [s.memory.id for s in later.late] == ["a"]


def test_by_default_every_memory_a_turn_found_is_in_the_request() -> None:
    """The kept block holds the first turn's finds; a later turn's top_k (8 by default) all
    go late when the block lacks them, not only the first few."""
    top_k = Settings().retrieval.top_k
    first = [scored(f"old{i}", f"old fact {i}") for i in range(top_k)]
    later = [scored(f"new{i}", f"new fact {i}") for i in range(top_k)]

    class Memories:  # the store's one read the placement makes: the kept memories unchanged
        def get(self, memory_id: str) -> Memory | None:
            return {s.memory.id: s.memory for s in first}.get(memory_id)

    shaper = RequestShaper(Settings(), store=Memories(), embedder=None)  # type: ignore[arg-type]
    opening = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    shaper.shape("t", "u", None, opening, first, "hi", [], TrimPlan(), 0)
    shaped = shaper.shape("t", "u", None, [*opening, {"role": "user", "content": "q"}], later,
                          "q", [], TrimPlan(), 0)
    assert shaped.kept and [s.memory.id for s in shaped.stable] == [f"old{i}" for i in range(top_k)]
    assert [s.memory.id for s in shaped.late] == [f"new{i}" for i in range(top_k)]


def test_one_background_job_embeds_a_long_conversations_left_out_turns() -> None:
    """A client sending a 1,000-turn history at once: all its left-out turns are embedded by
    one job off the hot path (not a few hundred per request), so the next questions rank them
    by meaning too."""

    class Embedder:  # a stand-in model: a unit vector per text
        dimension = 4

        def embed(self, texts: list[str]) -> np.ndarray:
            return np.tile(np.array([1.0, 0, 0, 0], dtype=np.float32), (len(texts), 1))

    settings = Settings()
    settings.conversation.history_budget = 500
    shaper = RequestShaper(settings, store=None, embedder=Embedder())  # type: ignore[arg-type]
    turns = [Turn("user" if i % 2 else "assistant", f"turn number {i} about topic {i % 37}", 12)
             for i in range(1000)]
    plan = shaper.plan(turns, 500)
    assert plan.dropped > 900
    shaper.shape("t", "u", None, [{"role": "user", "content": "q"}], [], "topic 5", turns,
                 plan, 500)
    dropped = turns[plan.start:plan.end]
    deadline = time.monotonic() + 30
    while shaper.recall.missing(dropped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shaper.recall.missing(dropped) == []


def test_conversation_key_by_session_or_opening_turns() -> None:
    by_session = conversation_key("t", "u", "s1", ["sys", "hello"])
    assert by_session == conversation_key("t", "u", "s1", ["other"])
    assert by_session != conversation_key("t", "u2", "s1", ["sys", "hello"])
    opening = conversation_key("t", "u", None, ["sys", "hello", "later turn"])
    assert opening == conversation_key("t", "u", None, ["sys", "hello", "another later turn"])
    assert opening != conversation_key("t", "u", None, ["sys", "hi"])


def test_recalled_turns_fill_the_budget_the_kept_history_leaves() -> None:
    """The cut moves in steps, so the kept history is often well under its part of the budget:
    the left-out turns that match take the room it leaves, and never more than the budget."""
    settings = Settings()
    settings.conversation.recall_share = 0.25
    shaper = RequestShaper(settings, store=None, embedder=None)  # type: ignore[arg-type]
    turns = [Turn("system", "s", 10)]
    for i in range(300):
        turns.append(Turn("user", f"my garden story part {i}", 20))
        turns.append(Turn("assistant", f"reply {i}", 20))
    turns.append(Turn("user", "what about my garden story?", 20))
    budget = 2000
    plan = shaper.plan(turns, budget)
    assert plan.trimmed and plan.kept_tokens <= budget * 0.75
    room = budget - plan.kept_tokens
    assert room > budget * 0.25  # the step left part of the history's share unused
    shaped = shaper.shape("t", "u", None, [{"role": "user", "content": "q"}], [],
                          "what about my garden story?", turns, plan, budget)
    recalled = sum(turn.tokens for turn in shaped.recalled)
    assert budget * 0.25 < recalled <= room
    assert plan.kept_tokens + recalled <= budget
