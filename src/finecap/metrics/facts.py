"""Scene-fact metrics of `finecap evaluate`: fact precision and recall, CHAIR.

Computed by `finecap.scenes.facts` (definitions there) against each image's ground-truth
`scene`, so only where the dataset has one for every scored image (the scenes world):

- `Facts-P`, `Facts-R`: fact precision and recall over all kinds;
- `Facts-P/<kind>`, `Facts-R/<kind>` for kind in object, color, size, pattern, relation,
  background;
- `CHAIR-i`: hallucinated object mentions / object mentions; `CHAIR-s`: captions with a
  hallucinated object / captions (Rohrbach et al. 2018). Lower is better.

All are fractions (tables print them x100), micro-averaged over the split. A precision with
nothing stated (a system that never names a relation) is undefined: it is left out of that
system's scores and listed unavailable.
"""

from __future__ import annotations

from finecap.metrics.suite import EvalContext, GroupScores, System, register_metric
from finecap.scenes.facts import FACT_KINDS, FactCounts, score_corpus

UNDEFINED_PRECISION = "undefined where a system's captions state no such fact"
UNDEFINED_RECALL = "undefined: the scenes hold no such fact"
UNDEFINED_CHAIR = "undefined where a system's captions name no object"


def fact_metrics(counts: FactCounts) -> dict[str, float | None]:
    """Metric name -> value (None: undefined) from a corpus's summed counts."""
    values: dict[str, float | None] = {
        "Facts-P": counts.precision(),
        "Facts-R": counts.recall(),
        "CHAIR-i": counts.chair_i,
        "CHAIR-s": counts.chair_s,
    }
    for kind in FACT_KINDS:
        values[f"Facts-P/{kind}"] = counts.precision([kind])
        values[f"Facts-R/{kind}"] = counts.recall([kind])
    return values


FACT_METRICS = tuple(fact_metrics(FactCounts()))


def _undefined_reason(metric: str) -> str:
    if metric.startswith("CHAIR"):
        return UNDEFINED_CHAIR
    return UNDEFINED_PRECISION if metric.startswith("Facts-P") else UNDEFINED_RECALL


@register_metric("facts", FACT_METRICS, needs=("scenes",), lower_is_better=("CHAIR-i", "CHAIR-s"))
def _facts_group(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """Scene-fact precision/recall per kind and CHAIR, against the ground-truth scenes."""
    values = fact_metrics(score_corpus(system.captions, ctx.data.scenes))
    return GroupScores(
        {m: v for m, v in values.items() if v is not None},
        {m: _undefined_reason(m) for m, v in values.items() if v is None},
    )
