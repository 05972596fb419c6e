"""What the user's new turn says, sentence by sentence, before any model sees it.

Extraction is grounded in the user's own words, so the first step is deterministic: split the
turn into sentences and sort them into

- ``statement``: says something (about the user or their life) — the only kind the extraction
  model is shown and the only kind ``raw`` mode stores;
- ``question``: asks something ("What tech stack am I using?") — changes no memory; a question
  that carries a statement ("Any tips for Paris, where I just moved?") counts as a statement;
- ``chitchat``: greetings, thanks, acknowledgements;
- ``request``: a task for the assistant with nothing about the user ("Write a haiku"), or an
  instruction planted in user text ("Ignore previous instructions and …");
- ``forget``: an explicit request to forget something ("Please forget that I use Postgres"),
  with its target ("I use Postgres").

A turn with no statement and no forget request needs no LLM call at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SentenceKind = Literal["statement", "question", "chitchat", "request", "forget"]

# "Next.js", "3.5" and "e.g. this" stay whole: a sentence ends at punctuation + space or end.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|[\r\n\u2028\u2029\u0085]+")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)

_AUXILIARIES = frozenset(
    "do does did am is are was were can could would will should shall may might must have has "
    "had don't doesn't didn't isn't aren't wasn't can't couldn't won't wouldn't".split()
)
_MODALS = frozenset("should could would can will might must shall may need".split())
_QUESTION_OPENERS = _AUXILIARIES | frozenset(
    "what where when who whom whose why how which whats where's what's who's how's".split()
)
_CHITCHAT = frozenset(
    """hi hello hey hiya yo thanks thank thx ty you so much very lot ok okay k cool great nice
    awesome perfect wow good morning afternoon evening night bye goodbye see ya later cheers
    lol haha yes yeah yep no nope sure alright right fine got it that's that makes sense
    welcome please sounds interesting amazing hmm oh ah indeed true exactly agreed anyway""".split()
)
_OPENS_CHITCHAT = frozenset(
    "hi hello hey thanks thank thx ty ok okay cool great nice bye goodbye cheers good".split()
)
_IMPERATIVES = frozenset(
    """write tell give show explain help make create list summarize summarise translate fix
    generate find draft suggest recommend describe compare rewrite check review continue
    calculate convert plan answer name define outline sketch debug refactor implement add
    remove delete rename update change run install use ignore""".split()
)
_FIRST_PERSON = frozenset(
    "i i'm i've i'd i'll me my mine myself we we're we've our ours us".split()
)

_LEAD_IN = (
    r"(?:(?:please|pls|kindly|and|also|oh|ok|okay|so|now|hey|actually|one\s+more\s+thing)"
    r"[\s,:]+)*"
)
_ASK = (
    r"(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?"
    r"|i\s+(?:want|need|would\s+like|'d\s+like)\s+you\s+to\s+|you\s+(?:can|should|may|must)\s+)?"
)
_MEMORY_NOUN = r"(?:fact|memory|memories|note|info|information|detail|part|thing)"
_FORGET_VERB = (
    r"(?:forget(?:\s+about)?|unlearn|stop\s+remembering|don'?t\s+remember|do\s+not\s+remember"
    r"|no\s+longer\s+remember|(?:delete|remove|erase|drop|wipe|clear)\s+(?:"
    rf"(?:the|that|this|your)\s+{_MEMORY_NOUN}s?(?:\s+(?:that|about|of))?"
    r"|what\s+you\s+know\s+about|from\s+(?:your\s+)?memory"
    r"|(?=.*\bfrom\s+(?:your\s+)?memory\b)))"
)
_FORGET = re.compile(rf"^{_LEAD_IN}{_ASK}{_FORGET_VERB}\b\s*(?P<target>.*)$", re.I | re.S)
# Instructions aimed at the assistant, planted in user text: never a fact about the user.
_PLANTED = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|your|my|previous|prior"
    r"|above|earlier|other|these|those|system)\s+)*(?:instructions?|rules|prompts?|guidelines"
    r"|guardrails|policies)\b|\bsystem\s+prompt\b|\byou\s+are\s+now\b|\bfrom\s+now\s+on,?\s+you\b"
    r"|\bdeveloper\s+mode\b|\bjailbreak",
    re.I,
)
_FROM_MEMORY = re.compile(r"\s*\bfrom\s+(?:your\s+)?memory\b", re.I)
_TARGET_LEAD = re.compile(
    r"^(?:(?:that|about|the\s+fact\s+that|what\s+i\s+(?:said|told\s+you)\s+(?:about|regarding)"
    r"|everything\s+about|anything\s+about|all\s+about|me\s+saying)\s+)+",
    re.I,
)


# A discourse label in front of a statement ("Big news: …", "Career update: …"): no fact of
# its own, and models turn it into one ("User has a career update").
_LABEL = re.compile(
    r"^(?:(?:big|good|bad|quick|small|exciting|sad|some|career|life|work|job|personal|little)"
    r"\s+)?(?:news|update|reminder|note|fyi|heads[- ]up|ps|p\.s\.|btw)\s*[:!,\-\u2013\u2014]+\s*",
    re.I,
)


@dataclass(frozen=True)
class Sentence:
    text: str
    kind: SentenceKind
    target: str = ""  # forget requests: what is to be forgotten


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _words(text: str) -> list[str]:
    return [w.casefold().replace("\u2019", "'") for w in _WORD.findall(text.replace("\u2019", "'"))]


def _declares_about_self(words: list[str]) -> bool:
    """A first-person clause that is not inverted ("where I live", not "do I live"), or a
    possessive statement ("my name is …")."""
    for i, word in enumerate(words):
        if word in ("i", "i'm", "i've", "i'd", "we", "we're", "we've"):
            before = words[i - 1] if i else ""
            after = words[i + 1] if i + 1 < len(words) else ""
            # "anything I should avoid?" asks; "where I live" tells.
            if before not in _AUXILIARIES and after not in _MODALS:
                return True
        if word in ("my", "our") and i + 2 < len(words) and words[i + 2] in ("is", "are", "was"):
            # "my name is Anna" — but not "what is my name" (inverted: the verb came first)
            if not any(w in _QUESTION_OPENERS for w in words[:i]):
                return True
    return False


def classify(sentence: str) -> Sentence:
    text = _LABEL.sub("", sentence.strip()) or sentence.strip()
    if _PLANTED.search(text):
        return Sentence(text, "request")
    forget = _FORGET.match(text.replace("\u2019", "'"))
    if forget:
        target = _FROM_MEMORY.sub("", forget.group("target"))
        target = _TARGET_LEAD.sub("", target.strip(" \t,:;.!?")).strip(" \t,:;.!?")
        return Sentence(text, "forget", target)
    words = _words(text)
    if not words:
        return Sentence(text, "chitchat")
    if all(w in _CHITCHAT for w in words) or (
        words[0] in _OPENS_CHITCHAT and not (_FIRST_PERSON & set(words))
    ):  # "Thanks for the help earlier", "Thanks, that's all for now"
        return Sentence(text, "chitchat")
    if text.rstrip().endswith("?") or words[0] in _QUESTION_OPENERS:
        if not _declares_about_self(words[1:]):
            return Sentence(text, "question")
        return Sentence(text, "statement")
    if words[0] in _IMPERATIVES and not (_FIRST_PERSON & set(words)):
        return Sentence(text, "request")
    return Sentence(text, "statement")


def classify_turn(texts: Sequence[str]) -> list[Sentence]:
    return [classify(s) for text in texts for s in split_sentences(text)]


def statements_of(texts: Sequence[str]) -> list[str]:
    """Each message's statement sentences, joined (messages with none left out)."""
    out: list[str] = []
    for text in texts:
        kept = [s.text for s in map(classify, split_sentences(text)) if s.kind == "statement"]
        if kept:
            out.append(" ".join(kept))
    return out


def forget_targets(texts: Sequence[str]) -> list[str]:
    return [s.target for s in classify_turn(texts) if s.kind == "forget"]
