"""Does a caption name an object of the scene correctly? (ground truth makes this checkable)

`names_object(caption, obj)`: the caption mentions the object's shape (any synonym the
reference captions use) with its colour among the few words before that mention. The
default-model check in the README asks this of the salient object of every test image.
"""

from __future__ import annotations

from finecap.data.vocab import simple_tokenize
from finecap.scenes.language import COLOR_WORDS, SHAPE_WORDS

# How many words before the shape noun its colour may stand ("a large dark blue striped box").
COLOR_WINDOW = 4


def _phrases(words: dict[str, tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    return {tuple(simple_tokenize(p)): canonical for canonical, ps in words.items() for p in ps}


SHAPES = _phrases(SHAPE_WORDS)
COLORS = _phrases(COLOR_WORDS)


def find_words(words: list[str], phrases: dict[tuple[str, ...], str]) -> list[tuple[int, str]]:
    """(position, canonical word) of every phrase occurrence, longest phrase first at a position."""
    hits = []
    for i in range(len(words)):
        for phrase, canonical in sorted(phrases.items(), key=lambda p: -len(p[0])):
            if tuple(words[i : i + len(phrase)]) == phrase:
                hits.append((i, canonical))
                break
    return hits


def names_object(caption: str, shape: str, color: str) -> bool:
    """True if some mention of `shape` has `color` within COLOR_WINDOW words before it."""
    words = simple_tokenize(caption)
    colors = find_words(words, COLORS)
    for position, found in find_words(words, SHAPES):
        if found != shape:
            continue
        if any(c == color and position - COLOR_WINDOW <= p < position for p, c in colors):
            return True
    return False
