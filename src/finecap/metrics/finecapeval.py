"""FineCapEval word recall (Cho et al. 2022): does a caption mention the annotated background,
objects and relations of its image?

FineCapEval's CSV has 5 rows per image with columns `image, caption, background, object,
relation`; the phrase fields hold several phrases separated by the two-character string
`\\;`. Per phrase: lower-case, tokenize (nltk `TreebankWordTokenizer`, which needs no data
download, unlike `word_tokenize`), Porter-stem, strip non-alphanumerics (as the released
`tools/eval_finecapeval.py` does), drop empty tokens. The phrase score is the fraction of
its stemmed words found among the stemmed words of the generated caption; scores are
averaged over an image's phrases (all 5 annotators pooled), then over images.

Two deliberate differences from the released script, both stricter: a word counts when it
is a *token* of the stemmed caption (the script tests substring membership in the raw
caption, so "cat" is found in "catching"); an image with no phrase for a criterion is left
out of that criterion's mean (the script counts it as 0). Phrases of at most one character
are dropped, as in the script. "Overall" is the n-gram metrics of the caption against the
five overall captions (`FineCapEval-overall-CIDEr`, ...).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from finecap.errors import MissingFileError
from finecap.metrics.suite import EvalContext, System, official_group_scores, register_metric

PHRASE_SEPARATOR = "\\;"  # the two characters backslash, semicolon
CRITERIA = ("background", "object", "relation")
FINECAPEVAL_COLUMNS = ("image", "caption", *CRITERIA)
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]")


@dataclass
class FineCapEvalImage:
    """One image's annotations: overall captions and stemmed phrases per criterion."""

    image: str  # file name as written in the CSV
    captions: list[str] = field(default_factory=list)
    phrases: dict[str, list[list[str]]] = field(default_factory=lambda: {c: [] for c in CRITERIA})


@lru_cache(maxsize=1)
def _nltk_tools():
    from nltk.stem.porter import PorterStemmer
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer(), PorterStemmer()


def stem_words(text: str) -> list[str]:
    """Lower-case, Treebank-tokenize, Porter-stem, keep alphanumerics: "Running dogs." ->
    ["run", "dog"]."""
    tokenizer, stemmer = _nltk_tools()
    stems = (_NON_ALNUM.sub("", stemmer.stem(t)) for t in tokenizer.tokenize(text.lower()))
    return [s for s in stems if s]


def split_phrases(text: str | None) -> list[list[str]]:
    """A phrase field ("a red ball\\;the grass") -> stemmed words of each phrase."""
    if not text:
        return []
    phrases = (p for p in text.lower().split(PHRASE_SEPARATOR) if len(p.strip()) > 1)
    return [words for words in map(stem_words, phrases) if words]


def phrase_recall(phrase: Sequence[str], caption_stems: set[str]) -> float:
    """Fraction of a phrase's stemmed words that occur in the caption's stemmed words."""
    return sum(w in caption_stems for w in phrase) / len(phrase)


def image_recall(phrases: Sequence[Sequence[str]], caption: str) -> float | None:
    """Mean phrase recall of one caption; None when the image has no phrase."""
    if not phrases:
        return None
    stems = set(stem_words(caption))
    return sum(phrase_recall(p, stems) for p in phrases) / len(phrases)


def load_finecapeval(path: str | os.PathLike) -> dict[str, FineCapEvalImage]:
    """Read a FineCapEval CSV (the original or the scenes world's) -> {image file name: entry}."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such FineCapEval file")
    entries: dict[str, FineCapEvalImage] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FINECAPEVAL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: not a FineCapEval CSV: missing column(s) {', '.join(missing)} "
                f"(expected {', '.join(FINECAPEVAL_COLUMNS)})"
            )
        for row in reader:
            image = (row["image"] or "").strip()
            if not image:
                raise ValueError(f"{path} line {reader.line_num}: empty image name")
            entry = entries.setdefault(image, FineCapEvalImage(image))
            if (row["caption"] or "").strip():
                entry.captions.append(row["caption"].strip())
            for criterion in CRITERIA:
                entry.phrases[criterion].extend(split_phrases(row[criterion]))
    return entries


def match_images(
    entries: dict[str, FineCapEvalImage], file_names: Sequence[str]
) -> list[FineCapEvalImage | None]:
    """Annotations for each dataset image by file name (base name, else stem), or None."""
    by_stem = {Path(name).stem: e for name, e in entries.items()}
    out = []
    for name in file_names:
        base = Path(name).name
        out.append(entries.get(base) or entries.get(name) or by_stem.get(Path(base).stem))
    return out


def recall_scores(entries: Sequence[FineCapEvalImage], captions: Sequence[str]) -> dict[str, float]:
    """`FineCapEval-<criterion>` for each criterion: mean image recall over annotated images."""
    scores = {}
    for criterion in CRITERIA:
        per_image = [
            image_recall(e.phrases[criterion], c) for e, c in zip(entries, captions, strict=True)
        ]
        per_image = [s for s in per_image if s is not None]
        scores[f"FineCapEval-{criterion}"] = sum(per_image) / len(per_image) if per_image else 0.0
    return scores


OVERALL_METRICS = ("BLEU-4", "ROUGE-L", "CIDEr")  # cheap ones (no Java METEOR / SPICE)
FINECAPEVAL_METRICS = tuple(
    [f"FineCapEval-{c}" for c in CRITERIA] + [f"FineCapEval-overall-{m}" for m in OVERALL_METRICS]
)


@register_metric("finecapeval", FINECAPEVAL_METRICS, needs=("finecapeval",))
def _finecapeval_group(ctx: EvalContext, system: System, wanted: frozenset) -> dict[str, float]:
    """FineCapEval word recall per criterion and n-gram metrics against its overall captions."""
    pairs = [
        (e, c)
        for e, c in zip(ctx.finecapeval_matches, system.captions, strict=True)
        if e is not None
    ]
    scores = recall_scores([e for e, _ in pairs], [c for _, c in pairs])
    overall = [m for m in OVERALL_METRICS if f"FineCapEval-overall-{m}" in wanted]
    with_captions = [(e, c) for e, c in pairs if e.captions]
    if overall and with_captions:
        refs = [e.captions for e, _ in with_captions]
        out = official_group_scores(refs, [c for _, c in with_captions], overall)
        scores.update({f"FineCapEval-overall-{m}": v for m, v in out.scores.items()})
    ctx.settings["finecapeval_images"] = len(pairs)
    return scores
