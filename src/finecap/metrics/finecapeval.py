"""FineCapEval word recall (Cho et al. 2022): does a caption mention the annotated background,
objects and relations of its image?

FineCapEval's CSV has 5 rows per image (one per annotator) with columns `image, caption,
background, object, relation`; the phrase fields hold several phrases separated by the
two-character string `\\;`. A phrase's score is the fraction of its words the caption
contains; scores are averaged over an image's phrases (its annotators pooled), then over
images. Two rules for "the caption contains a word" exist, named by `finecapeval_variant`:

- "cho" (default), the released `tools/eval_finecapeval.py`: a row with any empty field is
  dropped; each phrase of more than one character is lower-cased, tokenized, Porter-stemmed
  and stripped of non-alphanumerics; a stemmed word is found when it is a *substring of the
  raw caption*. The caption is not stemmed, so a stem that is no word ("citi", "snowi") never
  matches and "cat" is found in "catching"; a phrase left with no word scores 0; an image
  whose phrases are all gone scores 0.
- "finecap": the caption is stemmed the same way and a phrase word counts when it is one of
  the caption's stemmed *tokens*; rows with empty fields are kept, phrases with no word are
  dropped and an image with no phrase for a criterion is left out of that criterion's mean.
  Stricter than "cho" on substrings ("cat" is not in "catching"), more lenient on stems
  ("snowy city" is found in "a snowy city"), so neither is a bound on the other.

Tokenizing: nltk's `word_tokenize` needs the `punkt` data (a download); "cho" uses the word
tokenizer `word_tokenize` applies to each sentence (`NLTKWordTokenizer`), splitting sentences
after a period followed by space instead of punkt's model; "finecap" uses
`TreebankWordTokenizer`. Both stem with nltk's `PorterStemmer()`, as the released script does.
"Overall" is the n-gram metrics of the caption against the image's overall captions (of the
kept rows) (`FineCapEval-overall-CIDEr`, ...).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from finecap.errors import MissingFileError
from finecap.metrics.official import NOT_MEANS, official_group_scores
from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric

PHRASE_SEPARATOR = "\\;"  # the two characters backslash, semicolon
CRITERIA = ("background", "object", "relation")
FINECAPEVAL_COLUMNS = ("image", "caption", *CRITERIA)
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]")
_SENTENCE_END = re.compile(r"(?<=\.)\s+")
# What pandas' read_csv reads as a missing value (its default na_values): the released script
# reads the CSV with pandas and drops a row when a field is not a string.
PANDAS_NA = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # fmt: skip


@dataclass
class FineCapEvalRow:
    """One annotator's row as written: the overall caption and each criterion's phrase field."""

    caption: str
    fields: dict[str, str]  # criterion -> phrases joined by PHRASE_SEPARATOR

    def complete(self) -> bool:
        """No field is empty (the released script's test, pandas' missing values included)."""
        return all(v not in PANDAS_NA for v in [self.caption, *self.fields.values()])


@dataclass
class FineCapEvalImage:
    """One image's annotation rows."""

    image: str  # file name as written in the CSV
    rows: list[FineCapEvalRow] = field(default_factory=list)


@dataclass(frozen=True)
class Annotations:
    """An image's annotations as one variant reads them."""

    captions: list[str]  # overall captions
    phrases: dict[str, list[list[str]]]  # criterion -> each phrase's stemmed words


@lru_cache(maxsize=1)
def _nltk_tools():
    from nltk.stem.porter import PorterStemmer
    from nltk.tokenize import NLTKWordTokenizer, TreebankWordTokenizer

    return TreebankWordTokenizer(), NLTKWordTokenizer(), PorterStemmer()


def _stems(tokens: Sequence[str]) -> list[str]:
    """Porter-stem, keep alphanumerics, drop what is left empty."""
    stemmer = _nltk_tools()[2]
    stems = (_NON_ALNUM.sub("", stemmer.stem(t)) for t in tokens)
    return [s for s in stems if s]


def stem_words(text: str) -> list[str]:
    """finecap's words: lower-case, Treebank-tokenize, stem: "Running dogs." -> ["run", "dog"]."""
    return _stems(_nltk_tools()[0].tokenize(text.lower()))


def cho_stem_words(text: str) -> list[str]:
    """The released script's words of a phrase: `word_tokenize` (its punkt sentence split
    approximated), stem: "Running dogs." -> ["run", "dog"]."""
    tokenizer = _nltk_tools()[1]
    sentences = _SENTENCE_END.split(text.lower())
    return _stems([t for s in sentences for t in tokenizer.tokenize(s)])


def split_phrases(text: str | None) -> list[list[str]]:
    """finecap's phrases of a field ("a red ball\\;the grass") -> stemmed words of each
    phrase; phrases of at most one character (stripped) or with no word are dropped."""
    if not text:
        return []
    phrases = (p for p in text.lower().split(PHRASE_SEPARATOR) if len(p.strip()) > 1)
    return [words for words in map(stem_words, phrases) if words]


def cho_split_phrases(text: str) -> list[list[str]]:
    """The released script's phrases of a field: every piece longer than one character (not
    stripped), its stemmed words, kept even when it has none (it then scores 0)."""
    return [cho_stem_words(p) for p in text.lower().split(PHRASE_SEPARATOR) if len(p) > 1]


@dataclass(frozen=True)
class RecallRule:
    """How one variant reads the annotations and tells whether a caption holds a word."""

    name: str
    description: str  # written to settings and table titles
    keep_row: Callable[[FineCapEvalRow], bool]
    phrases: Callable[[str], list[list[str]]]  # phrase field -> each phrase's words
    caption_words: Callable[[str], Collection[str]]  # `word in caption_words(c)`: found
    no_phrase_score: float | None  # an image without phrases: this score, or left out (None)

    def annotations(self, entry: FineCapEvalImage) -> Annotations | None:
        """What this variant reads of an image; None when it keeps none of its rows."""
        rows = [r for r in entry.rows if self.keep_row(r)]
        if not rows:
            return None
        phrases = {c: [p for r in rows for p in self.phrases(r.fields[c])] for c in CRITERIA}
        return Annotations([r.caption.strip() for r in rows if r.caption.strip()], phrases)

    def image_recall(self, phrases: Sequence[Sequence[str]], caption: str) -> float | None:
        """Mean phrase recall of one caption (a phrase without words scores 0)."""
        if not phrases:
            return self.no_phrase_score
        words = self.caption_words(caption)
        return sum(phrase_recall(p, words) for p in phrases) / len(phrases)


def phrase_recall(phrase: Sequence[str], caption_words: Collection[str]) -> float:
    """Fraction of a phrase's words found in `caption_words` (a set of stems, or the raw
    caption string, where `in` is a substring test); 0 for a phrase without words."""
    return sum(w in caption_words for w in phrase) / len(phrase) if phrase else 0.0


RULES: dict[str, RecallRule] = {
    "cho": RecallRule(
        "cho",
        "variant cho (Cho et al.'s tools/eval_finecapeval.py): stemmed reference words "
        "found as substrings of the raw caption, rows with an empty field dropped",
        keep_row=FineCapEvalRow.complete,
        phrases=cho_split_phrases,
        caption_words=lambda caption: caption,
        no_phrase_score=0.0,
    ),
    "finecap": RecallRule(
        "finecap",
        "variant finecap: stemmed reference words found among the stemmed caption tokens",
        keep_row=lambda row: True,
        phrases=split_phrases,
        caption_words=lambda caption: set(stem_words(caption)),
        no_phrase_score=None,
    ),
}


def image_recall(phrases: Sequence[Sequence[str]], caption: str) -> float | None:
    """finecap's image recall (stemmed tokens); None when the image has no phrase."""
    return RULES["finecap"].image_recall(phrases, caption)


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
            fields = {c: row[c] or "" for c in CRITERIA}
            entry = entries.setdefault(image, FineCapEvalImage(image))
            entry.rows.append(FineCapEvalRow(row["caption"] or "", fields))
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


def recall_scores(
    entries: Sequence[FineCapEvalImage], captions: Sequence[str], variant: str = "cho"
) -> dict[str, float]:
    """`FineCapEval-<criterion>` for each criterion: mean image recall under `variant`."""
    rule = RULES[variant]
    return annotation_recall(rule, [rule.annotations(e) for e in entries], captions)


def annotation_recall(
    rule: RecallRule, annotations: Sequence[Annotations | None], captions: Sequence[str]
) -> dict[str, float]:
    """Mean image recall per criterion over the images `rule` kept (annotations not None)."""
    per_image = recall_per_image(rule, annotations, captions)
    return {m: float(np.nanmean(v)) if (~np.isnan(v)).any() else 0.0 for m, v in per_image.items()}


def recall_per_image(
    rule: RecallRule, annotations: Sequence[Annotations | None], captions: Sequence[str]
) -> dict[str, np.ndarray]:
    """`FineCapEval-<criterion>` -> (I,) each image's recall, NaN where the image does not
    count (no annotations kept, or no phrase under a rule that leaves such images out)."""
    out = {}
    for criterion in CRITERIA:
        values = [
            rule.image_recall(a.phrases[criterion], c) if a is not None else None
            for a, c in zip(annotations, captions, strict=True)
        ]
        out[f"FineCapEval-{criterion}"] = np.array(
            [np.nan if v is None else v for v in values], np.float64
        )
    return out


OVERALL_METRICS = ("BLEU-4", "ROUGE-L", "CIDEr")  # cheap ones (no Java METEOR / SPICE)
FINECAPEVAL_METRICS = tuple(
    [f"FineCapEval-{c}" for c in CRITERIA] + [f"FineCapEval-overall-{m}" for m in OVERALL_METRICS]
)


@register_metric(
    "finecapeval",
    FINECAPEVAL_METRICS,
    needs=("finecapeval",),
    not_means={"FineCapEval-overall-BLEU-4": NOT_MEANS["BLEU-4"]},
)
def _finecapeval_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """FineCapEval word recall per criterion and n-gram metrics against its overall captions."""
    variant = ctx.config.finecapeval_variant
    rule = RULES[variant]
    annotations = ctx.memo(  # stemming every phrase once per run, not once per system
        ("finecapeval", variant),
        lambda: [rule.annotations(e) if e else None for e in ctx.finecapeval_matches],
    )
    per_image = recall_per_image(rule, annotations, system.captions)
    scores = annotation_recall(rule, annotations, system.captions)
    per_image = {m: v for m, v in per_image.items() if (~np.isnan(v)).any()}
    out = GroupScores(scores, per_image=per_image)
    overall = [m for m in OVERALL_METRICS if f"FineCapEval-overall-{m}" in wanted]
    kept = [i for i, a in enumerate(annotations) if a is not None and a.captions]
    if overall and kept:
        refs = [annotations[i].captions for i in kept]
        hyps = [system.captions[i] for i in kept]
        resamples = ctx.resamples.restrict(kept) if ctx.resamples is not None else None
        got = official_group_scores(refs, hyps, overall, resamples)
        got = got.on_images(kept, len(annotations))
        for field_name in ("scores", "unavailable", "per_image", "replicates"):
            values = getattr(got, field_name).items()
            getattr(out, field_name).update({f"FineCapEval-overall-{m}": v for m, v in values})
    ctx.settings.update(
        finecapeval_variant=variant,
        finecapeval_rule=rule.description,
        finecapeval_images=sum(a is not None for a in annotations),
    )
    return out
