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

import numpy as np

from finecap.metrics.fast import check_inputs
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
    """Corpus scores by metric name, metrics that could not run (name -> reason), and
    per-image scores aligned with `image_ids`."""

    scores: dict[str, float]
    unavailable: dict[str, str]
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (I,)
    image_ids: list[Hashable] = field(default_factory=list)


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
) -> OfficialResult:
    """Score raw captions with pycocoevalcap; `metrics` from ``OFFICIAL_METRICS``.

    Names in the result: ``BLEU-1``..``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``, ``SPICE``.
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
            _SCORERS[metric](gts, res, result)
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


def _bleu(gts: dict, res: dict, out: OfficialResult) -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    for name, s, per in zip(_BLEU_NAMES, score, scores, strict=True):
        out.scores[name], out.per_image[name] = float(s), np.asarray(per, np.float64)


def _meteor(gts: dict, res: dict, out: OfficialResult) -> None:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # one JVM; pycocoevalcap kills it when the object goes away
    try:
        score, scores = scorer.compute_score(gts, res)
    finally:
        del scorer
    out.scores["METEOR"], out.per_image["METEOR"] = float(score), np.asarray(scores, np.float64)


def _rouge(gts: dict, res: dict, out: OfficialResult) -> None:
    from pycocoevalcap.rouge.rouge import Rouge

    score, scores = Rouge().compute_score(gts, res)
    out.scores["ROUGE-L"], out.per_image["ROUGE-L"] = float(score), np.asarray(scores, np.float64)


def _cider(gts: dict, res: dict, out: OfficialResult) -> None:
    from pycocoevalcap.cider.cider import Cider

    score, scores = Cider().compute_score(gts, res)
    out.scores["CIDEr"], out.per_image["CIDEr"] = float(score), np.asarray(scores, np.float64)


def _spice(gts: dict, res: dict, out: OfficialResult) -> None:
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
