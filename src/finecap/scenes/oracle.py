"""An oracle annotator for the pairwise page: every question answered from the ground truth.

Cho et al. (2022, Table 4) ask people which of two captions is better on five criteria. In
the scenes world the truth is known, so a program can answer instead: per criterion, each
caption scores (correct - wrong) over its stated facts of that criterion's kinds
(`finecap.scenes.facts`): the higher score wins, equal scores tie. `overall` counts every
fact; `object` the object facts (a hallucinated object is a wrong one); `attribute` colour,
size and pattern; `background` and `relation` their own. A caption stating nothing of a
kind scores 0 on it, so a wrong claim loses to silence.

    page = read_page("page.html")
    doc = judge_page(page, {str(i): scene for i, scene in ...})  # tally(...) reads it
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from finecap.pairwise import CRITERIA, JUDGMENTS_FORMAT, JudgmentsError, Tally, tally
from finecap.scenes.facts import ATTRIBUTES, FACT_KINDS, score_caption
from finecap.scenes.world import Scene

CRITERION_KINDS: dict[str, tuple[str, ...]] = {
    "overall": FACT_KINDS,
    "background": ("background",),
    "object": ("object",),
    "attribute": ATTRIBUTES,
    "relation": ("relation",),
}
ANNOTATOR = "oracle (ground-truth scene facts)"


def oracle_choices(left: str, right: str, scene: Scene) -> dict[str, str]:
    """Criterion -> "left" | "right" | "tie" for two captions of the image of `scene`."""
    scores = score_caption(left, scene), score_caption(right, scene)
    choices = {}
    for criterion in CRITERIA:
        a, b = (s.net(CRITERION_KINDS[criterion]) for s in scores)
        choices[criterion] = "tie" if a == b else ("left" if a > b else "right")
    return choices


def judge_page(page: Mapping, scenes: Mapping[str, Scene]) -> dict:
    """The judgments document (`finecap.pairwise` format) of a page (`read_page` output);
    `scenes` maps each image id, as a string, to its scene. Which side is system A is copied
    from each item, as a person's saved judgments carry it."""
    missing = [it["image_id"] for it in page["items"] if str(it["image_id"]) not in scenes]
    if missing:
        raise JudgmentsError(
            f"{len(missing)} images of the page have no ground-truth scene (image_id "
            f"{missing[0]!r}, ...): the oracle needs the scenes world's dataset.json"
        )
    items = [
        {
            "item": it["item"],
            "image_id": it["image_id"],
            "a_side": it["a_side"],
            "choices": oracle_choices(it["left"], it["right"], scenes[str(it["image_id"])]),
        }
        for it in page["items"]
    ]
    return {
        "format": JUDGMENTS_FORMAT,
        "a": page["a"],
        "b": page["b"],
        "seed": page.get("seed"),
        "annotator": ANNOTATOR,
        "items": items,
    }


def oracle_tally(
    a: tuple[str, Sequence[str]], b: tuple[str, Sequence[str]], scenes: Sequence[Scene]
) -> Tally:
    """Cho et al.'s Table 4 comparison of two systems over whole splits: (name, captions) each,
    aligned with `scenes`, every image judged by the oracle (identical captions tie)."""
    (a_name, a_caps), (b_name, b_caps) = a, b
    items = [
        {"item": k, "image_id": k, "a_side": "left", "choices": oracle_choices(x, y, scene)}
        for k, (x, y, scene) in enumerate(zip(a_caps, b_caps, scenes, strict=True))
    ]
    doc = {"format": JUDGMENTS_FORMAT, "a": a_name, "b": b_name, "annotator": ANNOTATOR}
    return tally([{**doc, "seed": None, "items": items}])
