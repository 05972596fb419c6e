"""A scripted extraction model that makes, on purpose, the mistakes real small models make.

Plugged into the fake upstream as ``upstream.structured_reply = HostileModel(...)``; it answers
memproxy's two structured calls (facts, relation) with what a weak model was seen to return
(Qwen2.5-Coder-1.5B, llama.cpp, temperature 0):

- ``echo_assistant``: the assistant's reply restated as a fact ("You are using …");
- ``annotations``: the prompt's own numbering and "(since <date>)" copied into facts;
- ``second_person``: facts in "You …" / "I …" form;
- ``operations``: the older operations shape with deletes and updates of every id 1..9
  (ids memproxy never showed);
- ``duplicates``: every fact three times, plus a restatement;
- ``truncated`` / ``empty``: JSON cut off mid-string, an empty answer;
- relation ``always``: one fixed answer to every relation call ("replaces" everything).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fake_upstream import default_extract_facts, last_user_text


def _is_relation_call(body: dict[str, Any]) -> bool:
    schema = (body.get("response_format") or {}).get("json_schema") or {}
    return schema.get("name") == "fact_relation" or "OLD:" in last_user_text(body)


@dataclass
class HostileModel:
    mistakes: set[str] = field(default_factory=set)
    relation: str = "replaces"  # the answer to every relation call
    assistant_text: str = "You are using Next.js with a Postgres backend."
    calls: list[str] = field(default_factory=list)  # "facts" | "relation", in order

    def __call__(self, body: dict[str, Any]) -> str:
        if _is_relation_call(body):
            self.calls.append("relation")
            if "garbage_relation" in self.mistakes:
                return '{"relation": "delete all", "id": 99}'
            return json.dumps({"relation": self.relation, "id": 1})
        self.calls.append("facts")
        if "empty" in self.mistakes:
            return ""
        if "truncated" in self.mistakes:
            return '{"facts": ["User lives in Ber'
        honest = default_extract_facts(body)
        facts: list[str] = []
        if "echo_assistant" in self.mistakes:
            facts.append(f"{self.assistant_text} Since 2026-12-01")
        if "annotations" in self.mistakes:
            facts += [f"[{n}] {fact} (since 2026-12-01)" for n, fact in enumerate(honest, 1)]
        if "second_person" in self.mistakes:
            facts += ["You" + fact[len("User"):] if fact.startswith("User ") else fact
                      for fact in honest]
            facts += [fact.replace("User is ", "I'm ", 1) for fact in honest]
        if "duplicates" in self.mistakes:
            facts += honest * 3 + [fact + "." for fact in honest]
        if not facts:
            facts = honest
        if "operations" in self.mistakes:
            operations = [{"op": "delete", "id": n, "text": None} for n in range(1, 10)]
            operations += [{"op": "update", "id": n, "text": self.assistant_text}
                           for n in range(1, 10)]
            operations += [{"op": "add", "id": None, "text": fact} for fact in facts]
            return json.dumps({"operations": operations})
        return json.dumps({"facts": facts})
