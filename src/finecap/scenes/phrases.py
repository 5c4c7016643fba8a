"""The vocabulary of scene captions as data: one phrase table and the tagger that reads it.

`PHRASES` maps every word or phrase a caption of the scenes world may use to what it means:
the canonical words of `finecap.scenes.world` and every synonym of `finecap.scenes.language`
(shape plurals added), generic nouns ("object", "something"), counts, articles and background
phrases cut down to their noun ("in front of a brick wall" -> "brick wall"; "on the floor"
means either floor). `correct_spelling` mends a word of 4+ letters outside the vocabulary
(difflib ratio >= 0.85: "hexagn" -> hexagon; "red" is never fuzzed); `tag_words` reads a
sentence left to right, the longest phrase first at each position. `finecap.scenes.facts`
turns the tags into facts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from finecap.scenes.language import (
    BACKGROUND_NOUN,
    BACKGROUND_PHRASES,
    BACKGROUND_PLACE,
    COLOR_WORDS,
    COUNT_WORDS,
    PATTERN_SUFFIX,
    PATTERN_WORDS,
    RELATION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
)

GENERIC_NOUNS = ("object", "shape", "thing")
POSTPOSED = "something"  # "something blue": the generic noun whose attributes follow it
# Leading words dropped from background phrases: "in front of a brick wall" is found as
# "brick wall", so "a ball in front of the old brick wall" is found too.
PLACE_WORDS = frozenset({"on", "in", "the", "a", "an", "some", "against", "up", "floating"})
PLACE_WORDS |= {"front", "of"}
ARTICLES = {"a": 1, "an": 1, "some": None, "another": 1}  # a noun phrase starts (and its count)
FUZZY_MIN_LEN, FUZZY_CUTOFF = 4, 0.85


def _plural(phrase: str) -> str:
    *head, last = phrase.split()
    return " ".join([*head, last + ("es" if last.endswith(("s", "x", "ch", "sh")) else "s")])


def _words_of(table: Mapping[str, Iterable[str]]) -> Iterable[tuple[str, str]]:
    """(phrase, canonical) for every synonym and the canonical word itself."""
    for canonical, phrases in table.items():
        for phrase in dict.fromkeys((canonical, *phrases)):
            if phrase:
                yield phrase, canonical


def _background_core(phrase: str) -> str:
    words = phrase.split()
    while len(words) > 1 and words[0] in PLACE_WORDS:
        words = words[1:]
    return " ".join(words)


def _build_table() -> dict[tuple[str, ...], tuple[str, Any]]:
    """Token tuple -> (tag kind, value). Every phrase has one meaning, checked here."""
    entries: list[tuple[str, str, Any]] = []
    for phrase, shape in _words_of(SHAPE_WORDS):
        entries += [(phrase, "shape", shape), (_plural(phrase), "shape", shape)]
    for noun in GENERIC_NOUNS:
        entries += [(noun, "generic", None), (_plural(noun), "generic", None)]
    entries.append((POSTPOSED, "generic", POSTPOSED))
    for kind, table in (("color", COLOR_WORDS), ("size", SIZE_WORDS), ("pattern", PATTERN_WORDS)):
        entries += [(phrase, kind, value) for phrase, value in _words_of(table)]
    # "with stripes" after the noun; `_words_of` also yields the bare pattern name: not a suffix.
    entries += [(p, "pattern_after", v) for p, v in _words_of(PATTERN_SUFFIX) if p != v]
    entries += [(phrase, "relation", rel) for phrase, rel in _words_of(RELATION_WORDS)]
    entries += [(word, "count", n) for n, word in enumerate(COUNT_WORDS)]
    entries += [(word, "count", n) for word, n in ARTICLES.items()]
    entries += [("the", "definite", None), ("it", "pronoun", None)]
    backgrounds: dict[str, set[str]] = {}
    for table in (BACKGROUND_PLACE, BACKGROUND_NOUN, BACKGROUND_PHRASES):
        for phrase, background in _words_of(table):
            backgrounds.setdefault(_background_core(phrase), set()).add(background)
    entries += [(p, "background", frozenset(bs)) for p, bs in backgrounds.items()]
    table: dict[tuple[str, ...], tuple[str, Any]] = {}
    for phrase, kind, value in entries:
        key = tuple(phrase.split())
        if table.setdefault(key, (kind, value)) != (kind, value):
            raise ValueError(f"{phrase!r} means both {table[key]} and {(kind, value)}")
    return table


PHRASES = _build_table()
LONGEST = max(map(len, PHRASES))
KNOWN_WORDS = frozenset(w for phrase in PHRASES for w in phrase)
FUZZY_TARGETS = sorted(w for w in KNOWN_WORDS if len(w) >= FUZZY_MIN_LEN)


@lru_cache(maxsize=8192)
def correct_spelling(word: str) -> str:
    """The closest vocabulary word to an unknown word of 4+ letters, else the word itself."""
    if len(word) < FUZZY_MIN_LEN or word in KNOWN_WORDS:
        return word
    close = difflib.get_close_matches(word, FUZZY_TARGETS, n=1, cutoff=FUZZY_CUTOFF)
    return close[0] if close else word


@dataclass(frozen=True)
class Tag:
    kind: str  # a kind of PHRASES: shape, generic, color, size, pattern, relation, ...
    value: Any  # canonical word, count, or the backgrounds a phrase can mean
    start: int  # token span [start, end) in the sentence
    end: int


def tag_words(words: Sequence[str]) -> list[Tag]:
    """Vocabulary phrases of a sentence, left to right, the longest at each position."""
    tags, i = [], 0
    while i < len(words):
        for n in range(min(LONGEST, len(words) - i), 0, -1):
            hit = PHRASES.get(tuple(words[i : i + n]))
            if hit is not None:
                tags.append(Tag(*hit, i, i + n))
                i += n
                break
        else:
            i += 1
    return tags
