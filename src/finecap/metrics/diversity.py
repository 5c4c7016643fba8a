"""Degeneration and diversity of a system's captions (no references needed, except `Novel`).

Words are `finecap.data.vocab.simple_tokenize` tokens (lower-case, punctuation dropped), the
same words the models read and write.

- `Repetition`: share of captions that repeat themselves: a *content* word (not in
  `STOP_WORDS`) occurring twice, or any word bigram occurring twice. "a dog and a cat"
  does not count (only stop words repeat, no bigram repeats); "a dog with a dog" does.
  This is the degeneration Cho et al. report for the CLIP-S-only reward.
- `Distinct-n`: unique n-grams / total n-grams over all the system's captions (n = 1, 2).
- `Distinct-Captions`: share of captions that no other image of the split got (word for
  word): a generic captioner gives many images the same caption.
- `Vocabulary`: number of distinct words used. `Mean-Length`: mean words per caption.
- `Novel`: share of captions not found verbatim (same word sequence) among the training
  references of the same dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from finecap.data.vocab import simple_tokenize
from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric

# Function words whose repetition is ordinary English ("a man and a dog on a bench").
_STOP_TEXT = """a an the and or but of on in at to with by for from into onto over under near
    next behind above below beside between up down off out is are was were be been being has
    have had it its this that these those there their his her he she they them some other
    another while as than very two"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def is_repetitive(words: Sequence[str]) -> bool:
    """True when a content word or any bigram occurs more than once."""
    content = Counter(w for w in words if w not in STOP_WORDS)
    bigrams = Counter(ngrams(words, 2))
    return any(c > 1 for c in content.values()) or any(c > 1 for c in bigrams.values())


def distinct_n(tokenized: Iterable[Sequence[str]], n: int) -> float:
    grams = [g for words in tokenized for g in ngrams(words, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def diversity_scores(captions: Sequence[str]) -> dict[str, float]:
    """Repetition, Distinct-1/2, Distinct-Captions, Vocabulary, Mean-Length of one system."""
    tokenized = [simple_tokenize(c) for c in captions]
    n = max(len(captions), 1)
    counts = Counter(map(tuple, tokenized))
    return {
        "Repetition": sum(map(is_repetitive, tokenized)) / n,
        "Distinct-1": distinct_n(tokenized, 1),
        "Distinct-2": distinct_n(tokenized, 2),
        "Distinct-Captions": sum(counts[tuple(w)] == 1 for w in tokenized) / n,
        "Vocabulary": float(len({w for words in tokenized for w in words})),
        "Mean-Length": sum(map(len, tokenized)) / n,
    }


def novelty(captions: Sequence[str], train_captions: Iterable[str]) -> float:
    """Share of captions whose word sequence appears in no training reference."""
    seen = {tuple(simple_tokenize(c)) for c in train_captions}
    novel = sum(tuple(simple_tokenize(c)) not in seen for c in captions)
    return novel / max(len(captions), 1)


SET_STATISTIC = (
    "a statistic of the whole set of captions (no per-image value); a resample repeats "
    "captions, which alone lowers it, so it is not bootstrapped"
)


@register_metric(
    "diversity",
    ("Repetition", "Distinct-1", "Distinct-2", "Distinct-Captions", "Vocabulary", "Mean-Length"),
    unscaled=("Vocabulary", "Mean-Length"),
    lower_is_better=("Repetition",),
    unranked=("Mean-Length",),
    not_means=dict.fromkeys(
        ("Distinct-1", "Distinct-2", "Distinct-Captions", "Vocabulary"), SET_STATISTIC
    ),
)
def _diversity_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Degeneration (repeated content word or bigram) and diversity of the captions."""
    ctx.settings["repetition"] = "share of captions repeating a content word or any bigram"
    tokenized = [simple_tokenize(c) for c in system.captions]
    per_image = {
        "Repetition": np.array([is_repetitive(w) for w in tokenized], np.float64),
        "Mean-Length": np.array([len(w) for w in tokenized], np.float64),
    }
    return GroupScores(diversity_scores(system.captions), per_image=per_image)


@register_metric("novelty", ("Novel",), needs=("train_refs",))
def _novelty_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Share of captions not found verbatim among the training references."""
    seen = ctx.memo(
        ("train_sequences",),
        lambda: {tuple(simple_tokenize(c)) for c in ctx.data.train_captions or []},
    )
    novel = [tuple(simple_tokenize(c)) not in seen for c in system.captions]
    per_image = {"Novel": np.array(novel, np.float64)}
    return GroupScores({"Novel": float(per_image["Novel"].mean())}, per_image=per_image)
