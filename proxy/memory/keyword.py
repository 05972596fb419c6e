"""Keyword ranking of one user's memories: an analyzer and an incremental BM25 index.

Measured on a public long-conversation benchmark (see docs/design.md): BM25 alone beats the
dense model on conversational memory (names, places, dates); stemming and stopword removal with
k1≈1.2, b≈0.5 add ~8 points of recall@10, and writing the memory's date into the indexed
text ("[8 May 2023] …") ~2 more.

``KeywordIndex`` keeps documents in insertion order, so ``scores(query)`` returns an array
aligned with the rows of the user's vector matrix and the two can be fused directly.
"""

from __future__ import annotations

import math
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import snowballstemmer  # type: ignore[import-untyped]

# NLTK's English list plus contraction fragments (the word split breaks "don't" into
# "don", "t"). Kept out on purpose: "may" (a month in dated text) and "will" (a name too).
ENGLISH_STOPWORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren as at be because been
    before being below between both but by can couldn d did didn do does doesn doing don down
    during each few for from further had hadn has hasn have haven having he her here hers
    herself him himself his how i if im in into is isn it its itself ive just ll m ma me
    mightn more most mustn my myself needn no nor not now o of off on once only or other our
    ours ourselves out over own re s same shan she should shouldn so some such t than that the
    their theirs them themselves then there these they this those through to too under until
    up ve very was wasn we were weren what when where which while who whom why with won
    wouldn y you your yours yourself yourselves
    """.split()
)

# Letters, digits and marks of any script; apostrophes and other punctuation split words.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MONTHS = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)
_MONTH_NAMES = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)
# A month is one term however it is written ("January", "Jan"), so a question's "5 January
# 2024" meets the dated text's "[5 Jan 2024]".
_CANONICAL = {
    **{name: name[:3] for name in _MONTH_NAMES}, "sept": "sep",
}
# 10.01.2024 (day first) and 2024-01-10 (ISO): written as dated text writes dates.
DOTTED_DATE = re.compile(r"\b(\d{1,2})\.(\d{1,2})\.(\d{4})\b")
ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")


def _spelled_date(day: str, month: str, year: str, original: str) -> str:
    if not 1 <= int(month) <= 12 or not 1 <= int(day) <= 31:
        return original
    return f"{int(day)} {MONTHS[int(month) - 1]} {year}"


def spell_dates(text: str) -> str:
    """Numeric dates as dated text writes them: "10.01.2024" → "10 Jan 2024"."""
    text = DOTTED_DATE.sub(lambda m: _spelled_date(m[1], m[2], m[3], m.group(0)), text)
    return ISO_DATE.sub(lambda m: _spelled_date(m[3], m[2], m[1], m.group(0)), text)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def asks_only(text: str) -> bool:
    """True for a text whose every sentence is a question ("Any plans for the weekend?")."""
    if not text.rstrip().endswith("?"):
        return False  # most memories: decided without splitting
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    return bool(sentences) and all(s.endswith("?") for s in sentences)


def dated_text(text: str, created_at: float | None) -> str:
    """``"[8 May 2023] text"``: the form a memory is keyword-indexed in (+2 recall@10)."""
    if created_at is None:
        return text
    try:
        t = time.gmtime(created_at)
    except (OverflowError, OSError, ValueError):  # a time no calendar renders: undated
        return text
    return f"[{t.tm_mday} {MONTHS[t.tm_mon - 1]} {t.tm_year}] {text}"


class Analyzer:
    """Text → index terms: NFKC, casefold, word split, stopwords out, Snowball English stems.

    Thread-safe. Stems are memoised (bounded) because the pure-Python stemmer costs ~100 µs
    a word and a user's vocabulary is small.
    """

    def __init__(
        self,
        stopwords: Iterable[str] = ENGLISH_STOPWORDS,
        stem: bool = True,
        cache_size: int = 50_000,
    ):
        self._stopwords = frozenset(stopwords)
        self._stemmer = snowballstemmer.stemmer("english") if stem else None
        self._stems: dict[str, str] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()  # Snowball stemmer objects keep per-call state

    def words(self, text: str) -> list[str]:
        """Lowercased words without stopwords, before stemming; months and numeric dates
        in one form."""
        folded = spell_dates(unicodedata.normalize("NFKC", text)).casefold()
        return [_CANONICAL.get(w, w) for w in _WORD.findall(folded)
                if w not in self._stopwords]

    def terms(self, text: str) -> list[str]:
        words = self.words(text)
        if self._stemmer is None:
            return words
        return [self._stem(w) for w in words]

    def _stem(self, word: str) -> str:
        found = self._stems.get(word)
        if found is not None:
            return found
        if word.isdigit() or not word.isascii():
            stem = word  # the English stemmer would mangle numbers and other scripts
        else:
            with self._lock:
                stem = self._stemmer.stemWord(word)  # type: ignore[union-attr]
        if len(self._stems) >= self._cache_size:
            self._stems.clear()
        self._stems[word] = stem
        return stem


class KeywordIndex:
    """Okapi BM25 over one user's documents, in insertion order; thread-safe.

    ``add`` is incremental; ``remove`` and ``replace`` rebuild the postings lazily, on the
    next ``scores`` call, from the per-document term counts (no re-analysis).
    """

    def __init__(self, analyzer: Analyzer | None = None, k1: float = 1.2, b: float = 0.5):
        self.analyzer = analyzer or Analyzer()
        self.k1 = k1
        self.b = b
        self._docs: list[dict[str, int]] = []  # term counts (Counter when analysed here)
        self._lengths: list[int] = []
        self._total_length = 0
        self._distinct = 0  # distinct terms summed over documents (cache accounting)
        # term -> (document positions, term frequencies); None: rebuild before scoring.
        self._postings: dict[str, tuple[list[int], list[int]]] | None = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_counts(
        cls, analyzer: Analyzer, docs: list[dict[str, int]], lengths: list[int]
    ) -> KeywordIndex:
        """An index of already analysed documents (``term_counts`` of another, in order)."""
        if len(docs) != len(lengths):
            raise ValueError("docs and lengths differ in length")
        index = cls(analyzer)
        index._docs = docs
        index._lengths = list(lengths)
        index._total_length = sum(index._lengths)
        index._distinct = sum(len(doc) for doc in docs)
        index._postings = None  # built on the first search
        return index

    def term_counts(self) -> tuple[list[dict[str, int]], list[int]]:
        """Each document's term counts and length, in order (documents are replaced, never
        changed in place)."""
        with self._lock:
            return list(self._docs), list(self._lengths)

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def nbytes(self) -> int:
        """A rough size for cache accounting: ~120 bytes per distinct term of a document."""
        return 120 * self._distinct + 100 * len(self._docs)

    def add(self, texts: Sequence[str], created_at: Sequence[float] | None = None) -> None:
        """Append documents; with ``created_at``, each is indexed as ``dated_text``."""
        if created_at is not None and len(created_at) != len(texts):
            raise ValueError("texts and created_at differ in length")
        docs = [
            Counter(self.analyzer.terms(
                dated_text(text, created_at[i]) if created_at is not None else text
            ))
            for i, text in enumerate(texts)
        ]
        with self._lock:
            for doc in docs:
                position = len(self._docs)
                self._docs.append(doc)
                length = sum(doc.values())
                self._lengths.append(length)
                self._total_length += length
                self._distinct += len(doc)
                if self._postings is not None:
                    for term, tf in doc.items():
                        positions, tfs = self._postings.setdefault(term, ([], []))
                        positions.append(position)
                        tfs.append(tf)
            self._arrays.clear()

    def remove(self, positions: Iterable[int]) -> None:
        """Drop documents; later documents move up, as rows do when deleted from a matrix."""
        drop = set(positions)
        with self._lock:
            kept = [i for i in range(len(self._docs)) if i not in drop]
            self._docs = [self._docs[i] for i in kept]
            self._lengths = [self._lengths[i] for i in kept]
            self._total_length = sum(self._lengths)
            self._distinct = sum(len(doc) for doc in self._docs)
            self._invalidate()

    def replace(self, position: int, text: str, created_at: float | None = None) -> None:
        doc = Counter(self.analyzer.terms(dated_text(text, created_at)))
        with self._lock:
            self._total_length += sum(doc.values()) - self._lengths[position]
            self._distinct += len(doc) - len(self._docs[position])
            self._docs[position] = doc
            self._lengths[position] = sum(doc.values())
            self._invalidate()

    def _invalidate(self) -> None:
        self._postings = None
        self._arrays.clear()

    def _rebuild(self) -> dict[str, tuple[list[int], list[int]]]:
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for position, doc in enumerate(self._docs):
            for term, tf in doc.items():
                positions, tfs = postings.setdefault(term, ([], []))
                positions.append(position)
                tfs.append(tf)
        self._postings = postings
        return postings

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (float32, 0 where no term matches)."""
        terms = set(self.analyzer.terms(query))
        with self._lock:
            n = len(self._docs)
            out = np.zeros(n, dtype=np.float32)
            if not n or not terms:
                return out
            postings = self._postings if self._postings is not None else self._rebuild()
            lengths = np.asarray(self._lengths, dtype=np.float32)
            average = self._total_length / n or 1.0
            norm = self.k1 * (1.0 - self.b + self.b * lengths / average)
            for term in terms:
                arrays = self._arrays.get(term)
                if arrays is None:
                    found = postings.get(term)
                    if found is None:
                        continue
                    arrays = (
                        np.asarray(found[0], dtype=np.intp),
                        np.asarray(found[1], dtype=np.float32),
                    )
                    self._arrays[term] = arrays
                positions, tfs = arrays
                df = len(positions)
                # Lucene's idf: never negative, so a very common term cannot push a
                # document below one that does not contain it.
                idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
                out[positions] += idf * tfs * (self.k1 + 1.0) / (tfs + norm[positions])
            return out
