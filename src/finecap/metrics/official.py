"""The official tier: the COCO caption evaluation code (pycocoevalcap), run as published.

PTB tokenization (Stanford CoreNLP 3.4.1, Java), BLEU-1..4, METEOR 1.5 (Java), ROUGE-L, CIDEr
(which is CIDEr-D) and SPICE (Java + Stanford CoreNLP 3.6.0). A metric that cannot run here --
no Java, SPICE's CoreNLP jars not downloaded (pycocoevalcap fetches ~380 MB at first use, which
needs internet), a scorer that fails -- lands in ``OfficialResult.unavailable`` with the reason;
it is never dropped silently nor replaced by a look-alike.

Two input fixes, both documented: captions are stripped of line-breaking characters
(``\\r``, ``\\v``, ``\\f``, U+2028, U+2029) before tokenization -- pycocoevalcap only replaces
``\\n``, and any other line break shifts every later caption onto the wrong image; and SPICE's
per-image scores (computed in sorted id order) are re-aligned with the input order.

Per-image scores: ROUGE-L, CIDEr and SPICE corpus scores are the means of them; BLEU (pooled
n-gram counts and lengths) and METEOR (the jar aggregates its per-image statistics) are not.
Given bootstrap `resamples`, those two are recomputed exactly on each resample: BLEU from
per-image statistics counted on the same PTB tokens (`finecap.metrics.bleu`), METEOR by
handing the jar the resample's summed statistics (`EVAL ||| stats`: the jar's corpus score is
its score of the summed statistics, a perfectly matched segment adding no chunk).
Text that is not UTF-8 (a lone surrogate such as "\\ud800", which JSON can spell) is a
``ValueError`` naming the image, raised before anything runs: the tokenizer writes UTF-8 and
would crash half-way. (`load_predictions` and `load_corpus` already refuse such files.)
Empty captions are scored as empty: the tokenizer keeps an empty line, BLEU/ROUGE-L/CIDEr give
0, and METEOR 1.5 scores an empty hypothesis 0 (checked against the jar).
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finecap.metrics.bootstrap import Resamples
from finecap.metrics.fast import check_inputs
from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric
from finecap.metrics.tokenizer import sanitize_caption

OFFICIAL_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
_BLEU_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_GET_MODELS = (
    "python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models; "
    "get_stanford_models()'"
)


@dataclass
class OfficialResult:
    """Corpus scores by metric name, metrics that could not run (name -> reason), per-image
    scores aligned with `image_ids`, and for BLEU-k and METEOR with `resamples` the corpus score
    of each resample."""

    scores: dict[str, float]
    unavailable: dict[str, str]
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (I,)
    image_ids: list[Hashable] = field(default_factory=list)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (B,)


def pycocoevalcap_dir() -> Path | None:
    """The installed pycocoevalcap package directory, found without importing it."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def java_status() -> str | None:
    """None when a ``java`` executable is on PATH, else why the Java metrics cannot run."""
    if shutil.which("java") is None:
        return "no `java` executable on PATH (the PTB tokenizer, METEOR and SPICE need Java)"
    return None


def spice_status() -> str | None:
    """None when SPICE can run, else the reason and how to install it.

    Looks for the Stanford CoreNLP 3.6.0 jars in pycocoevalcap's ``spice/lib`` -- without
    calling ``get_stanford_models``, which would start the download.
    """
    root = pycocoevalcap_dir()
    if root is None:
        return "pycocoevalcap is not installed"
    lib = root / "spice" / "lib"
    missing = [jar for jar in _CORENLP_JARS if not (lib / jar).is_file()]
    if missing or not (root / "spice" / "spice-1.0.jar").is_file():
        return (
            f"SPICE needs Stanford CoreNLP 3.6.0 jars in {lib} (missing: "
            f"{', '.join(missing) or 'spice-1.0.jar'}); run `{_GET_MODELS}` on a machine with "
            "internet (~380 MB download), or copy the two jars there"
        )
    return java_status()


def official_scores(
    refs: Mapping[Hashable, Sequence[str]],
    preds: Mapping[Hashable, str],
    metrics: Sequence[str] = OFFICIAL_METRICS,
    resamples: Resamples | None = None,
    meteor: Any = None,
) -> OfficialResult:
    """Score raw captions with pycocoevalcap; `metrics` from ``OFFICIAL_METRICS``.

    Names in the result: ``BLEU-1``..``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``, ``SPICE``.
    `resamples` (counts over the images in `refs` order) adds BLEU-k's and METEOR's
    `replicates`; `meteor` (`start_meteor()`) is a running METEOR jar to use instead of
    starting one.
    """
    unknown = [m for m in metrics if m not in OFFICIAL_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; official metrics: {OFFICIAL_METRICS}")
    check_inputs(refs, preds)
    _check_utf8(refs, preds)
    image_ids = list(refs)
    result = OfficialResult({}, {}, {}, image_ids)
    reason = java_status() or (None if pycocoevalcap_dir() else "pycocoevalcap is not installed")
    if reason is not None:
        result.unavailable.update({_label(m): reason for m in metrics})
        return result

    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize(
        {i: [{"caption": sanitize_caption(c)} for c in refs[i]] for i in image_ids}
    )
    res = tokenizer.tokenize({i: [{"caption": sanitize_caption(preds[i])}] for i in image_ids})
    for metric in metrics:
        try:
            if metric == "METEOR":
                _meteor(gts, res, result, resamples, meteor)
            else:
                _SCORERS[metric](gts, res, result, resamples)
        except Exception as err:  # a scorer that fails is reported, never hidden
            result.unavailable[_label(metric)] = f"{type(err).__name__}: {err}"
    return result


def _check_utf8(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str]) -> None:
    for i in refs:
        for what, text in [("prediction", preds[i]), *(("reference", r) for r in refs[i])]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"image_id {i!r}: the {what} {text!r} is not UTF-8 text (a lone surrogate "
                    f"at character {err.start})"
                ) from None


def _label(metric: str) -> str:
    return "BLEU-1..4" if metric == "BLEU" else metric


def _bleu(gts: dict, res: dict, out: OfficialResult, resamples: Resamples | None) -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    for name, s, per in zip(_BLEU_NAMES, score, scores, strict=True):
        out.scores[name], out.per_image[name] = float(s), np.asarray(per, np.float64)
    if resamples is not None:
        from finecap.metrics.bleu import bleu_statistics
        from finecap.metrics.ngram import ReferenceNgrams

        # The same tokens, counted as pycocoevalcap's BleuScorer counts them.
        stats = bleu_statistics(ReferenceNgrams(gts), list(gts), [res[i][0] for i in gts])
        replicates = stats.corpus(resamples.counts)  # (B, 4)
        for k, name in enumerate(_BLEU_NAMES):
            out.replicates[name] = replicates[:, k]


def start_meteor() -> Any:
    """A running pycocoevalcap `Meteor` (one JVM, ~10 s to start: reuse it for many scorings
    through `official_scores(..., meteor=)`); the JVM stops when the object goes away."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _meteor(
    gts: dict, res: dict, out: OfficialResult, resamples: Resamples | None, meteor: Any = None
) -> None:
    scorer = meteor if meteor is not None else start_meteor()
    score, scores = scorer.compute_score(gts, res)
    if resamples is not None:
        out.replicates["METEOR"] = _meteor_replicates(scorer, gts, res, resamples, score)
    out.scores["METEOR"], out.per_image["METEOR"] = float(score), np.asarray(scores, np.float64)


# METEOR 1.5's statistics line (23 numbers): [0] test length, [1] reference length, ...,
# [20] chunks, [21] test words matched, [22] reference words matched.
_LENGTHS, _CHUNKS, _MATCHED = slice(0, 2), 20, slice(21, 23)


def _meteor_replicates(
    scorer, gts: dict, res: dict, resamples: Resamples, corpus: float
) -> np.ndarray:
    """(B,) METEOR of each resample: the jar's corpus score is its score of the summed
    statistics, except that a perfectly matched segment (every word matched, one chunk) adds no
    chunk -- found by experiment, checked here against the jar's own corpus score."""
    with scorer.lock:  # pycocoevalcap's own (private) protocol: SCORE lines, then EVAL
        lines = [scorer._stat(res[i][0], gts[i]) for i in gts]
        stats = np.array([[float(x) for x in line.split()] for line in lines])  # (I, 23)
        perfect = (stats[:, _MATCHED] == stats[:, _LENGTHS]).all(1) & (stats[:, _CHUNKS] == 1)
        stats[perfect, _CHUNKS] = 0
        summed = np.vstack([stats.sum(0), resamples.counts @ stats])  # (1 + B, 23)
        out = np.empty(len(summed))
        for b, row in enumerate(summed):
            line = "EVAL ||| " + " ".join(repr(float(x)) for x in row)
            scorer.meteor_p.stdin.write(f"{line}\n".encode())
            scorer.meteor_p.stdin.flush()
            scorer.meteor_p.stdout.readline()  # the one "segment"'s score
            out[b] = float(scorer.meteor_p.stdout.readline().strip())  # the aggregate
    if not np.isclose(out[0], corpus, rtol=1e-9, atol=1e-12):
        raise RuntimeError(
            f"METEOR's summed statistics give {out[0]}, not the jar's corpus score {corpus}: "
            "its bootstrap cannot be recomputed"
        )
    return out[1:]


def _rouge(gts: dict, res: dict, out: OfficialResult, _resamples: Resamples | None) -> None:
    from pycocoevalcap.rouge.rouge import Rouge

    score, scores = Rouge().compute_score(gts, res)
    out.scores["ROUGE-L"], out.per_image["ROUGE-L"] = float(score), np.asarray(scores, np.float64)


def _cider(gts: dict, res: dict, out: OfficialResult, _resamples: Resamples | None) -> None:
    from pycocoevalcap.cider.cider import Cider

    score, scores = Cider().compute_score(gts, res)
    out.scores["CIDEr"], out.per_image["CIDEr"] = float(score), np.asarray(scores, np.float64)


def _spice(gts: dict, res: dict, out: OfficialResult, _resamples: Resamples | None) -> None:
    reason = spice_status()
    if reason is not None:
        out.unavailable["SPICE"] = reason
        return
    from pycocoevalcap.spice.spice import Spice

    score, scores = Spice().compute_score(gts, res)
    by_id = dict(
        zip(sorted(gts), (s["All"]["f"] for s in scores), strict=True)
    )  # SPICE sorts the ids
    out.scores["SPICE"] = float(score)
    out.per_image["SPICE"] = np.array([by_id[i] for i in gts], np.float64)


_SCORERS = {"BLEU": _bleu, "METEOR": _meteor, "ROUGE-L": _rouge, "CIDEr": _cider, "SPICE": _spice}


# --------------------------------------------------------------------------- the suite's group

GROUP_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
NOT_MEANS = {
    **dict.fromkeys(
        _BLEU_NAMES,
        "clipped n-gram matches, n-gram counts and lengths summed over images, then BLEU's "
        "formula (bootstrap: recomputed from each resample's sums)",
    ),
    "METEOR": "the jar's per-image statistics summed, then METEOR's formula (bootstrap: the "
    "jar scores each resample's sums)",
}


def official_group_scores(
    references: Sequence[Sequence[str]],
    captions: Sequence[str],
    wanted: Sequence[str],
    resamples: Resamples | None = None,
    meteor: Any = None,
) -> GroupScores:
    """pycocoevalcap scores of captions against references (aligned lists), by metric name,
    with per-image values and, given `resamples`, BLEU-k's and METEOR's replicates (`meteor`:
    a running jar, `start_meteor()`)."""
    # The official tier runs BLEU-1..4 as one metric "BLEU" and reports it as "BLEU-1..4".
    runs = list(dict.fromkeys("BLEU" if m.startswith("BLEU-") else m for m in wanted))
    runs = [m for m in OFFICIAL_METRICS if m in runs]
    refs = {i: list(r) for i, r in enumerate(references)}
    out = official_scores(refs, dict(enumerate(captions)), runs, resamples, meteor)
    unavailable = {}
    for label, reason in out.unavailable.items():
        names = list(_BLEU_NAMES) if label.startswith("BLEU") else [label]
        unavailable.update(dict.fromkeys(names, reason))
    keep = lambda values: {m: v for m, v in values.items() if m in wanted}  # noqa: E731
    return GroupScores(
        keep(out.scores), keep(unavailable), keep(out.per_image), keep(out.replicates)
    )


@register_metric("official", GROUP_METRICS, not_means=NOT_MEANS)
def _official(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr(-D), SPICE through pycocoevalcap."""
    meteor = None
    if "METEOR" in wanted and java_status() is None and pycocoevalcap_dir() is not None:
        meteor = ctx.memo(("meteor_jar",), start_meteor)  # one JVM for every system and fold
    refs, captions = ctx.references(system), system.captions
    return official_group_scores(refs, captions, wanted, ctx.resamples, meteor)
