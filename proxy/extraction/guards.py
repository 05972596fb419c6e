"""The model proposes, memproxy decides: checks on every fact before it may touch memory.

Measured with a real 1.5B model, the combined "here are the memories, return operations" call
rewrote stored facts with the assistant's reply, copied the prompt's annotations into facts,
chose ``update`` where ``add`` was right and deleted a whole fact for "forget that I use
Postgres". So the model is only asked for what it is good at (candidate facts from the user's
statements; a one-word relation between two facts) and everything that changes memory is
decided here, deterministically:

- ``normalise_fact``: the prompt's own annotations stripped ("(since 2026-12-01)", "[3]"),
  first/second person rewritten to third ("I'm …", "You are …" → "User is …"), secrets out;
- ``grounding``: how much of a fact the user's own words hold — a fact the user did not say
  (taken from the assistant's reply, an example, or made up) is rejected;
- ``same_topic``: whether a new fact may replace or extend an old one at all;
- ``keeps_information``: an update may not drop what the old fact held (that is a supersede,
  which keeps the old fact as history);
- ``restates``: a fact the user has just said again, marking no change, is not replaced;
- ``forget_matches`` / ``without_target``: a forget request removes only what it names — the
  clause naming it when a memory says more ("… in Next.js with a Postgres backend" minus
  Postgres keeps Next.js).

Every rejection is counted by reason (``Extractor.guard_events`` → ``/metrics``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Set

import numpy as np

from proxy.extraction.secrets import scrub_fact
from proxy.memory.keyword import Analyzer

ANALYZER = Analyzer()

# Words that carry no topic of their own: a match on them alone grounds nothing.
_GENERIC = frozenset(
    """user use live work like love prefer want need have get go make know think say call name
    also just realli actual thing stuff someth lot way time day now new current today""".split()
)
_RELATIVE_TIME = re.compile(
    r"\b(?:yesterday|today|tonight|tomorrow|ago|last|next|this\s+(?:week|month|year|weekend)"
    r"|since|recently|soon)\b",
    re.I,
)
# However the analyzer writes a month ("November", "Nov", the 11 of "2026-11-26").
_MONTH_TERMS = frozenset(t for t in ANALYZER.terms(
    "January February March April May June July August September October November December "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec 2000-01-01 2000-02-01 2000-03-01 2000-04-01 "
    "2000-05-01 2000-06-01 2000-07-01 2000-08-01 2000-09-01 2000-10-01 2000-11-01 2000-12-01"
) if not t.isdigit())
# What our prompts add and a model may echo back: numbers in brackets, "(since …)" dates.
_ANNOTATIONS = (
    re.compile(r"^\s*(?:\[\d+\]|\d+[.)]|[-*•])\s*"),
    re.compile(
        r"[\s.,;]*\(?\b(?:since|as\s+of|from|added|stored|valid\s+from)\s*:?\s*"
        r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?(?:\s*UTC)?)?\)?",
        re.I,
    ),
    re.compile(r"\b(?:OLD|NEW|Message\s+(?:time|date))\s*:\s*", re.I),
)
_LEADING_PERSON = (
    (re.compile(r"^(?:the\s+user|user)\b", re.I), "User"),
    (re.compile(r"^(?:i\s+am|i'm|im|you\s+are|you're|youre)\b", re.I), "User is"),
    (re.compile(r"^(?:i\s+was|you\s+were)\b", re.I), "User was"),
    (re.compile(r"^(?:i\s+have|i've|you\s+have|you've)\b", re.I), "User has"),
    (re.compile(r"^(?:i\s+will|i'll|you\s+will|you'll)\b", re.I), "User will"),
    (re.compile(r"^(?:i\s+would|i'd|you\s+would|you'd)\b", re.I), "User would"),
    (re.compile(r"^(?:my|your)\b", re.I), "User's"),
    (re.compile(r"^(?:i|you)\b", re.I), "User"),
)
_INNER_PERSON = (
    (re.compile(r"\b(?:I'm|I am|you're|you are)\b"), "they are"),
    (re.compile(r"\b(?:I've|you've)\b"), "they have"),
    (re.compile(r"\b(?:myself|yourself)\b", re.I), "themself"),
    (re.compile(r"\b(?:mine|yours)\b", re.I), "theirs"),
    (re.compile(r"\b(?:my|your)\b", re.I), "their"),
    (re.compile(r"\bme\b"), "them"),
    (re.compile(r"\bI\b|\byou\b", re.I), "they"),
)
# "User live in Berlin" (from "I live …"): the verb agrees with the third person.
_THIRD_PERSON = {"have": "has", "do": "does", "go": "goes", "am": "is", "are": "is", "were": "was"}
_BASE_VERB = re.compile(
    r"^User (?P<adverb>(?:also|now|still|just|really|often|usually|always|never|currently"
    r"|mostly|mainly|only) )?"
    r"(live|work|like|love|use|want|need|prefer|own|play|speak|study|build|run|drive"
    r"|plan|hate|enjoy|know|think|eat|drink|write|read|teach|travel|visit|watch|have|do|go"
    r"|am|are|were|cook|code|develop|manage|lead|spend|keep|feel|miss|volunteer|sail|swim"
    r"|hike|ski|surf|paint|sing|dance|climb|bake|garden|knit|collect|grow|raise|rent)\b"
)
_CLAUSE_SPLIT = re.compile(
    r"(\s*,\s*(?:and\s+|but\s+)?|\s+(?:and|with|but|using|plus|as\s+well\s+as)\s+)"
)


def terms(text: str) -> set[str]:
    return set(ANALYZER.terms(text)) - {"user"}


def normalise_fact(text: str, user_words: str) -> str | None:
    """The fact as memproxy stores it, or None when nothing storable is left."""
    fact = " ".join(text.split())
    said = user_words.casefold()

    def unless_said(match: re.Match[str]) -> str:
        return match.group(0) if match.group(0).strip(" .,;()").casefold() in said else " "

    for pattern in _ANNOTATIONS:
        fact = pattern.sub(unless_said, fact)
    fact = " ".join(fact.split()).strip(" \t,;:-")
    for pattern, replacement in _LEADING_PERSON:
        fact, n = pattern.subn(replacement, fact, count=1)
        if n:
            break
    rest = fact[len("User"):] if fact.startswith("User") else fact
    for pattern, replacement in _INNER_PERSON:
        rest = pattern.sub(replacement, rest)
    fact = ("User" + rest) if fact.startswith("User") else rest
    verb = _BASE_VERB.match(fact)
    if verb:
        word = verb.group(2)
        fact = (f"User {verb.group('adverb') or ''}{_THIRD_PERSON.get(word, word + 's')}"
                + fact[verb.end():])
    fact = fact[:1].upper() + fact[1:]
    fact = fact.rstrip(" .") if fact.count(".") <= 1 else fact
    scrubbed = scrub_fact(fact)
    if not scrubbed or not terms(scrubbed):
        return None
    return scrubbed


def grounding(fact: str, user_words: str) -> float:
    """Share of the fact's specific terms found in the user's words (generic ones such as
    "use" or "work" count only when the fact has nothing else); 0 when nothing specific
    matches. A term matches a word of the same stem (``_said``); digits count
    only where the user gave them or a relative date ("last week") became a date."""
    have = terms(user_words)
    want = terms(fact)
    if _RELATIVE_TIME.search(user_words):
        want = {t for t in want if not t.isdigit() and t not in _MONTH_TERMS}
    specific = want - _GENERIC
    if not specific:
        return 1.0 if want and want <= have else 0.0
    found = {t for t in specific if _said(t, have)}
    return len(found) / len(specific)


def _said(term: str, have: Set[str]) -> bool:
    """The term, or a word sharing its stem: a prefix of 3+ letters ("postgres" of
    "postgresql") or a part of 4+ letters of a compound ("bee", "keep" of "beekeeper")."""
    if term in have:
        return True
    for word in have:
        shorter, longer = sorted((term, word), key=len)
        if len(shorter) >= 3 and longer.startswith(shorter):
            return True
        if len(shorter) >= 4 and shorter in longer:
            return True
    return False


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


# Words that attach to any topic ("a cat named Miso", "my name is Alex"): sharing one does not
# make two facts about the same thing.
_NOT_A_TOPIC = frozenset(
    """name call have get go make know think say thing also realli actual just lot way time
    day now new current today one""".split()
)


# Stems that say the same slot of a user's life in other words ("moved to Paris" / "lives in
# Berlin"): a fact of each family shares a topic with any other of it.
_TOPIC_FAMILIES = (
    frozenset("live move relocat resid base home hometown citi apart flat".split()),
    frozenset("work job employ career role posit profess occup hire compani".split()),
    frozenset("drink eat diet vegan vegetarian".split()),
)


def _topics(text: str) -> set[str]:
    found = terms(text) - _NOT_A_TOPIC
    for n, family in enumerate(_TOPIC_FAMILIES):
        if any(_said(t, family) for t in found):
            found.add(f"family:{n}")
    return found


def same_topic(old: str, new: str, similarity: float) -> bool:
    """Whether two facts are about the same thing (so one may replace or extend the other).

    all-MiniLM-L6-v2, measured: "lives in Berlin" / "moved to Paris last week" 0.53, "drinks
    tea" / "switched to coffee" 0.53, "works at Acme as a nurse" / "now works at Globex" 0.38
    (shares "work"), unrelated facts about one user 0.09–0.39; so below 0.5 the two must also
    share a topic word or family.
    """
    if similarity >= 0.5:
        return True
    return similarity >= 0.3 and bool(_topics(old) & _topics(new))


_NEGATION = re.compile(r"\b(?:not|no|never|none|nobody|nothing|anymore|longer|stopped|quit"
                       r"|without)\b|n't\b", re.I)


def says_nothing_new(old: str, new: str) -> bool:
    """Every specific term of the new fact is in the old one, and it negates nothing the old
    one affirmed ("User doesn't like tea" is news to "User likes tea")."""
    if _NEGATION.search(new) and not _NEGATION.search(old):
        return False
    before = terms(old)
    return all(_said(t, before) for t in terms(new) - _GENERIC)


def believable_same(old: str, new: str, similarity: float) -> bool:
    """Whether a model's "same" verdict stands: a near paraphrase ("works as a nurse" / "job
    is nursing": 0.88) or nothing new by ``says_nothing_new``."""
    if _NEGATION.search(new) and not _NEGATION.search(old):
        return False
    return similarity >= 0.75 or says_nothing_new(old, new)


# Words with which a user marks that something changed ("moved from", "no longer", "switched",
# "my new job", "now"): with one of them, saying the old value again is naming what changed.
_CHANGE_MARKER = re.compile(
    r"\b(?:from|no\s+longer|not|never|anymore|used\s+to|left|leaving|quit|stopped|switch\w*"
    r"|chang\w*|mov\w*|instead|former(?:ly)?|previous(?:ly)?|ex|new|now)\b|n't\b", re.I)


def restates(old: str, user_words: str) -> bool:
    """The user's new turn says the old fact again (each of its specific terms, by stem) and
    marks no change: the old fact is confirmed, so no new fact of this turn replaces it.

    Measured with the real 1.5B model: "As I said, my job is nursing, mostly night shifts"
    became "User's job is mostly night shifts", judged to replace "User works as a nurse".
    """
    if _CHANGE_MARKER.search(user_words):
        return False
    specific = terms(old) - _GENERIC
    have = terms(user_words)
    return bool(specific) and all(_said(t, have) for t in specific)


def keeps_information(old: str, new: str, share: float = 0.8) -> bool:
    """An update must say (at least) what the old fact said."""
    before = terms(old)
    return not before or len(before & terms(new)) >= math.ceil(share * len(before))


def forget_terms(target: str) -> set[str]:
    return terms(target) - {"use", "also", "anymore", "ever", "thing", "stuff"}


def forget_matches(memory_text: str, target_terms: set[str]) -> bool:
    """A memory names what the user asked to forget: most of its terms, a specific one among
    them (or all of them when every term is generic: "forget where I work")."""
    if not target_terms:
        return False
    held = terms(memory_text)
    found = {t for t in target_terms if _said(t, held)}
    specific = target_terms - _GENERIC
    if not specific:
        return found == target_terms
    return bool(found & specific) and len(found) >= math.ceil(len(target_terms) / 2)


def without_target(memory_text: str, target_terms: set[str]) -> str | None:
    """The memory with the clauses naming the target removed, or None when nothing that says
    something else is left (then the whole memory goes)."""
    def names_target(text: str) -> bool:
        held = terms(text)
        return any(_said(t, held) for t in target_terms - _GENERIC or target_terms)

    parts = _CLAUSE_SPLIT.split(memory_text)
    head, pieces = parts[0], parts[1:]
    if names_target(head) or not terms(head) - _GENERIC:
        return None
    kept = head
    for joiner, clause in zip(pieces[::2], pieces[1::2], strict=False):
        if not names_target(clause):
            kept += joiner + clause
    kept = kept.strip(" ,;")
    return kept if kept != memory_text.strip() and len(kept.split()) >= 3 else None
