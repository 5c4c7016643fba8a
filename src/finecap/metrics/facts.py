"""Scene-fact metrics of `finecap evaluate`: fact precision and recall, CHAIR.

Computed by `finecap.scenes.facts` (definitions there) against each image's ground-truth
`scene`, so only where the dataset has one for every scored image (the scenes world):

- `Facts-P`, `Facts-R`: fact precision and recall over all kinds;
- `Facts-P/<kind>`, `Facts-R/<kind>` for kind in object, color, size, pattern, relation,
  background;
- `CHAIR-i`: hallucinated object mentions / object mentions; `CHAIR-s`: captions with a
  hallucinated object / captions (Rohrbach et al. 2018). Lower is better;
- `Salient`: share of captions naming the scene's salient object by its shape and colour
  (`finecap.scenes.grounding.names_object`); `Shapeless`: share naming no shape at all — the
  vagueness a shape-blind reward teaches ("a purple object in the grass"). Lower is better.

All are fractions (tables print them x100), micro-averaged over the split. A precision with
nothing stated (a system that never names a relation) is undefined: it is left out of that
system's scores and listed unavailable.
"""

from __future__ import annotations

import numpy as np

from finecap.metrics.bootstrap import ratio_replicates
from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric
from finecap.scenes.facts import FACT_KINDS, FactCounts, score_caption
from finecap.scenes.grounding import SHAPES, find_words, names_object, simple_tokenize
from finecap.scenes.world import as_scene, salient_object

UNDEFINED_PRECISION = "undefined where a system's captions state no such fact"
UNDEFINED_RECALL = "undefined: the scenes hold no such fact"
UNDEFINED_CHAIR = "undefined where a system's captions name no object"


def fact_ratios(counts: FactCounts) -> dict[str, tuple[int, int]]:
    """Metric name -> (numerator, denominator) of a caption's or a corpus's counts."""
    ratios = {
        "Facts-P": tuple(sum(c[k] for k in FACT_KINDS) for c in (counts.correct, counts.stated)),
        "Facts-R": tuple(sum(c[k] for k in FACT_KINDS) for c in (counts.recalled, counts.present)),
        "CHAIR-i": (counts.hallucinated, counts.mentions),
        "CHAIR-s": (counts.hallucinating_captions, counts.captions),
    }
    for kind in FACT_KINDS:
        ratios[f"Facts-P/{kind}"] = (counts.correct[kind], counts.stated[kind])
        ratios[f"Facts-R/{kind}"] = (counts.recalled[kind], counts.present[kind])
    return ratios


def fact_metrics(counts: FactCounts) -> dict[str, float | None]:
    """Metric name -> value (None: undefined) from a corpus's summed counts."""
    return {m: num / den if den else None for m, (num, den) in fact_ratios(counts).items()}


FACT_METRICS = tuple(fact_metrics(FactCounts()))
# CHAIR-s counts captions, one per image: it is the mean of its per-image 0 / 1.
MICRO_METRICS = tuple(m for m in FACT_METRICS if m != "CHAIR-s")
MICRO_AVERAGE = (
    "micro-average: the counts summed over captions, then divided (bootstrap: of each "
    "resample's sums); per image, the caption's own ratio (null where it has no denominator)"
)


def _undefined_reason(metric: str) -> str:
    if metric.startswith("CHAIR"):
        return UNDEFINED_CHAIR
    return UNDEFINED_PRECISION if metric.startswith("Facts-P") else UNDEFINED_RECALL


@register_metric(
    "facts",
    FACT_METRICS,
    needs=("scenes",),
    lower_is_better=("CHAIR-i", "CHAIR-s"),
    not_means=dict.fromkeys(MICRO_METRICS, MICRO_AVERAGE),
)
def _facts_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Scene-fact precision/recall per kind and CHAIR, against the ground-truth scenes."""
    scenes = ctx.data.scenes
    counts = [score_caption(c, s) for c, s in zip(system.captions, scenes, strict=True)]
    ratios = np.array([list(fact_ratios(c).values()) for c in counts], np.float64)  # (I, M, 2)
    num, den = ratios[..., 0], ratios[..., 1]  # (I, M) each
    total_num, total_den = num.sum(0), den.sum(0)  # (M,)
    out = GroupScores({}, {})
    for j, metric in enumerate(FACT_METRICS):
        if total_den[j] == 0:
            out.unavailable[metric] = _undefined_reason(metric)
            continue
        out.scores[metric] = float(total_num[j] / total_den[j])
        with np.errstate(invalid="ignore", divide="ignore"):
            out.per_image[metric] = np.where(den[:, j] > 0, num[:, j] / den[:, j], np.nan)
        if ctx.resamples is not None and metric in MICRO_METRICS:
            out.replicates[metric] = ratio_replicates(num[:, j], den[:, j], ctx.resamples)
    return out


@register_metric(
    "salience", ("Salient", "Shapeless"), needs=("scenes",), lower_is_better=("Shapeless",)
)
def _salience_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Names the salient object (shape + colour); names no shape at all (vagueness)."""
    salient, shapeless = [], []
    for caption, scene in zip(system.captions, ctx.data.scenes, strict=True):
        obj = as_scene(scene).objects[salient_object(scene)]
        salient.append(names_object(caption, obj.shape, obj.color))
        shapeless.append(not find_words(simple_tokenize(caption), SHAPES))
    per_image = {
        "Salient": np.array(salient, np.float64),
        "Shapeless": np.array(shapeless, np.float64),
    }
    return GroupScores({m: float(v.mean()) for m, v in per_image.items()}, per_image=per_image)
