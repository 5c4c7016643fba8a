"""An oracle annotator for the pairwise page: every question answered from the ground truth.

Cho et al. (2022, Table 4) ask people which of two captions is better on five criteria. In
the scenes world the truth is known, so a program can answer instead: per criterion, each
caption scores (correct - wrong) over its stated facts of that criterion's kinds
(`finecap.scenes.facts`): the higher score wins, equal scores tie. `overall` counts every
fact; `object` the object facts (a hallucinated object is a wrong one); `attribute` colour,
size and pattern; `background` and `relation` their own. A caption stating nothing of a
kind scores 0 on it, so a wrong claim loses to silence.

    page = read_page("pairwise.html")
    doc = judge_page(page, {str(i): scene for i, scene in ...})
    tally(read_key("pairwise.key.json"), {"oracle": doc})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from finecap.pairwise import CRITERIA, JUDGMENTS_FORMAT, PairwiseError, StudyKey
from finecap.pairwise_tally import Tally, tally
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
    `scenes` maps each image id, as a string, to its scene. Like a person's, it carries only
    the item numbers and choices: `tally` un-blinds it with the page's key."""
    missing = [it["image_id"] for it in page["items"] if str(it["image_id"]) not in scenes]
    if missing:
        raise PairwiseError(
            f"{len(missing)} images of the page have no ground-truth scene (image_id "
            f"{missing[0]!r}, ...): the oracle needs the scenes world's dataset.json"
        )
    items = [
        {
            "item": it["item"],
            "choices": oracle_choices(it["left"], it["right"], scenes[str(it["image_id"])]),
        }
        for it in page["items"]
    ]
    return {
        "format": JUDGMENTS_FORMAT,
        "page_id": page["page_id"],
        "key": page.get("key"),
        "annotator": ANNOTATOR,
        "items": items,
    }


def oracle_tally(
    a: tuple[str, Sequence[str]], b: tuple[str, Sequence[str]], scenes: Sequence[Scene]
) -> Tally:
    """Cho et al.'s Table 4 comparison of two systems over whole splits: (name, captions) each,
    aligned with `scenes`, every image judged by the oracle (identical captions tie). Nothing
    is blind here, so A is always "left"."""
    (a_name, a_caps), (b_name, b_caps) = a, b
    items = [
        {"item": k, "choices": oracle_choices(x, y, scene)}
        for k, (x, y, scene) in enumerate(zip(a_caps, b_caps, scenes, strict=True))
    ]
    key = StudyKey("oracle", a_name, b_name, dict.fromkeys(range(len(items)), "left"), 0)
    doc = {"format": JUDGMENTS_FORMAT, "page_id": "oracle", "annotator": ANNOTATOR}
    return tally(key, {"oracle": {**doc, "items": items}})
