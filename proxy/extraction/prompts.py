"""Prompt text for the LLM calls memproxy makes, and the JSON each must answer with.

Two small calls instead of one big one (measured with a real 1.5B model, see guards.py):

- facts: the user's statement sentences only (no stored memories, no assistant reply, no
  numbering or dates that a model could copy back or get wrong) → candidate facts;
- relation: one stored fact and one new fact that look like the same topic → one word.

Everything a model returns is checked in proxy/extraction/guards.py before it may change memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from proxy.memory.markup import neutralise_markup

FACTS_SYSTEM = """\
You write down facts about a user from what the user wrote in a chat.

Rules:
- Only what the user states about themself and their life: name, job, projects, tech stack,
  goals, plans, preferences, decisions, people, pets and places. Nothing else.
- One fact per item, short, in the third person, starting with "User", in the language the
  user wrote in.
- Split combined statements into separate facts.
- Keep names, numbers, versions, dates and times exactly as the user wrote them ("last week"
  stays "last week": the memory keeps the date it was said).
- Never write down passwords, API keys, tokens, card or account numbers.
- If the user states nothing about themself, answer {"facts": []}.

Example.
user: My sister Mia visits from Lisbon next week, and I'm learning Rust for a CLI tool.
Answer: {"facts": ["User has a sister named Mia", "User's sister Mia visits from Lisbon \
next week", "User is learning Rust", "User is writing a CLI tool in Rust"]}

Answer with JSON only: {"facts": ["User ...", ...]}"""

FACTS_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["facts"],
    "additionalProperties": False,
}

RELATIONS = ("same", "replaces", "more_detail", "separate")

RELATION_SYSTEM = """\
You compare two facts about the same user. OLD is what was known; NEW comes from what the
user just said. Answer with one word:
- "same": NEW says nothing that OLD does not already say.
- "replaces": OLD is no longer true because of NEW (the user moved, changed job, switched
  tools, changed their mind, or corrected OLD).
- "more_detail": NEW is OLD with more detail; both stay true.
- "separate": both can be true at the same time; they are different facts.
Answer with JSON only: {"relation": "same" | "replaces" | "more_detail" | "separate"}"""

RELATION_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"relation": {"type": "string", "enum": list(RELATIONS)}},
    "required": ["relation"],
    "additionalProperties": False,
}

def schema_reminder(schema: dict[str, object]) -> str:
    return (
        "Answer with one JSON object only, no prose, no code fences, matching this JSON "
        "schema: " + json.dumps(schema)
    )


def facts_prompt(statements: Sequence[str]) -> str:
    """The user's statements, one ``user:`` line each, and nothing else.

    No date: a small model given one turned "last week" into a wrong date; the memory's own
    ``created_at`` (shown with it, keyword-indexed) anchors relative dates instead.
    """
    return "\n".join(f"user: {neutralise_markup(s)}" for s in statements)


def relation_prompt(old: str, new: str, user_words: str) -> str:
    return "\n".join([
        f"OLD: {neutralise_markup(old)}",
        f"NEW: {neutralise_markup(new)}",
        f"The user said: {neutralise_markup(user_words)[:1000]}",
    ])
