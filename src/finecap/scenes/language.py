"""Text about scenes: COCO-like reference captions, detailed descriptions, FineCapEval rows.

Three registers, on purpose:

- reference captions imitate COCO annotators: varied wording and synonyms, correct but
  generic: mostly the salient object (`world.salient_object`) with its colour, sometimes
  the background, rarely a relation or another object. This is the COCO bias that
  CLIP-reward captioning (Cho et al. 2022) fights: captions learnt from them do not tell
  similar images apart;
- detailed descriptions name every object with all its attributes, the relations and the
  background in the canonical words of `world`: the "web alt-text" a CLIP model learns from;
- FineCapEval annotations (Cho et al. 2022): background, object and relation phrases plus an
  overall detailed caption, one row per annotator, with each annotator's own wording.

Every word list is data; weights are how often a human would pick each option.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from finecap.scenes.world import Scene, SceneObject, salient_object

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "circle", "ball", "ball", "round shape", "disc"),
    "square": ("square", "square", "box", "box", "block", "cube"),
    "triangle": ("triangle", "triangle", "triangle", "pyramid"),
    "star": ("star",),
    "heart": ("heart", "heart", "heart shape"),
    "diamond": ("diamond", "diamond", "diamond shape", "rhombus"),
    "cross": ("cross", "cross", "plus sign"),
    "hexagon": ("hexagon", "hexagon", "hexagon shape", "six sided shape"),
}
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "blue": ("blue", "blue", "dark blue"),
    "green": ("green",),
    "yellow": ("yellow",),
    "purple": ("purple", "purple", "violet"),
    "orange": ("orange",),
    "white": ("white",),
    "black": ("black",),
    "pink": ("pink",),
    "brown": ("brown",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "large": ("large", "big", "big", "huge"),
    "small": ("small", "small", "little", "tiny"),
}
PATTERN_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "striped": ("striped", "striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka dot"),
}
PATTERN_SUFFIX: dict[str, tuple[str, ...]] = {
    "plain": ("",),
    "striped": ("with stripes", "with thin stripes", "with diagonal stripes"),
    "dotted": ("with dots", "with spots", "covered in dots"),
}
BACKGROUND_PLACE: dict[str, tuple[str, ...]] = {
    "grass": ("on the grass", "on the grass", "in a grassy field", "on a lawn", "in the grass"),
    "sky": ("in the sky", "in the sky", "against a blue sky", "in the clouds", "up in the sky"),
    "sand": ("on the sand", "on the beach", "in the sand", "on a sandy beach"),
    "water": ("on the water", "in the water", "floating on the water", "on a lake"),
    "brick wall": ("in front of a brick wall", "on a brick wall", "against a red brick wall"),
    "wooden floor": (
        "on a wooden floor",
        "on the wood floor",
        "on a wooden surface",
        "on the floor",
    ),
    "snow": ("in the snow", "in the snow", "on the snow", "on snowy ground"),
    "tiled floor": ("on a tiled floor", "on the tiles", "on a tile floor", "on the floor"),
}
BACKGROUND_NOUN: dict[str, tuple[str, ...]] = {
    "grass": ("a grassy field", "some green grass", "a lawn"),
    "sky": ("a blue sky", "the sky", "a cloudy sky"),
    "sand": ("a sandy beach", "some sand", "the beach"),
    "water": ("some water", "a lake", "blue water"),
    "brick wall": ("a brick wall", "a red brick wall", "an old brick wall"),
    "wooden floor": ("a wooden floor", "a wood floor", "wooden boards"),
    "snow": ("some snow", "a snowy field", "white snow"),
    "tiled floor": ("a tiled floor", "a tile floor", "grey tiles"),
}
# Canonical placement used by the detailed descriptions.
BACKGROUND_CANONICAL: dict[str, str] = {
    "grass": "on grass",
    "sky": "against the sky",
    "sand": "on sand",
    "water": "on water",
    "brick wall": "in front of a brick wall",
    "wooden floor": "on a wooden floor",
    "snow": "on snow",
    "tiled floor": "on a tiled floor",
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "above", "over"),
    "below": ("below", "under", "beneath"),
    "next to": ("next to", "next to", "beside"),
}
OPENERS: tuple[tuple[str, float], ...] = (
    ("a", 4),
    ("there is a", 2),
    ("a picture of a", 1.2),
    ("an image of a", 1),
    ("a photo of a", 1),
    ("this is a", 0.8),
    ("a close up of a", 0.5),
    ("here is a", 0.4),
    ("a drawing of a", 0.5),
    ("a single", 0.5),
    ("one", 0.3),
)
COUNT_WORDS = ("no", "one", "two", "three", "four", "five")
CAPTIONS_PER_IMAGE = 5
ANNOTATORS = 5
PHRASE_SEP = "\\;"  # FineCapEval's two-character separator between phrases


def _pick(rnd: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    words, weights = zip(*options, strict=True)
    return rnd.choices(words, weights=weights)[0]


def mirror_text(text: str) -> str:
    """The text of a mirrored image: "left" and "right" swapped, nothing else changed."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
    return re.sub(r"\b(left|right|Left|Right)\b", lambda m: swap[m.group(1)], text)


def fix_articles(text: str) -> str:
    """Turn "a" into "an" before a vowel sound ("an orange ball", "an old wall")."""
    words = text.split(" ")
    for k in range(len(words) - 1):
        if words[k] in ("a", "A") and words[k + 1][:1].lower() in "aeiou":
            words[k] = words[k] + "n"
    return " ".join(words)


def human_phrase(
    rnd: random.Random, obj: SceneObject, p_size: float, p_color: float, p_pattern: float
) -> str:
    """An object as a person would name it: synonyms, optional attributes, no article."""
    words = []
    if rnd.random() < p_size:
        words.append(rnd.choice(SIZE_WORDS[obj.size]))
    if rnd.random() < p_color:
        words.append(rnd.choice(COLOR_WORDS[obj.color]))
    suffix = ""
    if obj.pattern != "plain" and rnd.random() < p_pattern:
        if rnd.random() < 0.6:
            words.append(rnd.choice(PATTERN_WORDS[obj.pattern]))
        else:
            suffix = " " + rnd.choice(PATTERN_SUFFIX[obj.pattern])
    words.append(rnd.choice(SHAPE_WORDS[obj.shape]))
    return " ".join(words) + suffix


def canonical_phrase(obj: SceneObject, article: str = "a") -> str:
    """All attributes in canonical words: "a large red striped circle"."""
    return f"{article} {obj.size} {obj.color} {obj.pattern} {obj.shape}".strip()


def short_name(obj: SceneObject) -> str:
    """Colour + shape, unique within a scene: "the red circle"."""
    return f"the {obj.color} {obj.shape}"


# ---------------------------------------------------------------- reference captions


@dataclass(frozen=True)
class CaptionContext:
    rnd: random.Random
    scene: Scene
    salient: int

    @property
    def main(self) -> SceneObject:
        return self.scene.objects[self.salient]

    def place(self) -> str:
        return self.rnd.choice(BACKGROUND_PLACE[self.scene.background])

    def others(self) -> list[int]:
        return [k for k in range(len(self.scene.objects)) if k != self.salient]


def _cap_salient(ctx: CaptionContext) -> str:
    """The typical COCO caption: the salient object, usually its colour, maybe the place."""
    obj = human_phrase(ctx.rnd, ctx.main, p_size=0.15, p_color=0.8, p_pattern=0.12)
    place = " " + ctx.place() if ctx.rnd.random() < 0.4 else ""
    return f"{_pick(ctx.rnd, OPENERS)} {obj}{place}"


def _cap_relation(ctx: CaptionContext) -> str:
    """Rare: the salient object related to one other object."""
    if not ctx.others():
        return _cap_salient(ctx)
    k = ctx.rnd.choice(ctx.others())
    rel = ctx.rnd.choice(ctx.scene.relation_between(ctx.salient, k))
    main = human_phrase(ctx.rnd, ctx.main, p_size=0.1, p_color=0.9, p_pattern=0.1)
    other = human_phrase(ctx.rnd, ctx.scene.objects[k], p_size=0.2, p_color=0.7, p_pattern=0.0)
    return f"a {main} {ctx.rnd.choice(RELATION_WORDS[rel])} a {other}"


def _cap_with_others(ctx: CaptionContext) -> str:
    """Rare: the salient object plus a vague mention of the rest."""
    n = len(ctx.others())
    if n == 0:
        return _cap_salient(ctx)
    main = human_phrase(ctx.rnd, ctx.main, p_size=0.2, p_color=0.85, p_pattern=0.1)
    rest = ctx.rnd.choice(
        ("some other shapes", "other small shapes", f"{COUNT_WORDS[n]} other shapes")
        if n > 1
        else ("another shape", "a smaller shape", "one other shape")
    )
    return f"a {main} and {rest}"


def _cap_background_first(ctx: CaptionContext) -> str:
    obj = human_phrase(ctx.rnd, ctx.main, p_size=0.1, p_color=0.8, p_pattern=0.1)
    return f"{ctx.rnd.choice(BACKGROUND_NOUN[ctx.scene.background])} with a {obj}"


def _cap_count(ctx: CaptionContext) -> str:
    """Generic: how many shapes and where, no object named."""
    n = len(ctx.scene.objects)
    things = ctx.rnd.choice(("shapes", "objects", "colorful shapes"))
    head = f"{COUNT_WORDS[n]} {things}" if n > 1 else ctx.rnd.choice(("a shape", "one object"))
    return f"{head} {ctx.place()}"


def _cap_color_only(ctx: CaptionContext) -> str:
    color = ctx.rnd.choice(COLOR_WORDS[ctx.main.color])
    return ctx.rnd.choice((f"a {color} object", f"something {color}")) + " " + ctx.place()


# (builder, weight): names the salient shape in ~85 % of captions.
CAPTION_BUILDERS: tuple[tuple[Callable[[CaptionContext], str], float], ...] = (
    (_cap_salient, 0.68),
    (_cap_background_first, 0.09),
    (_cap_relation, 0.06),
    (_cap_with_others, 0.06),
    (_cap_count, 0.06),
    (_cap_color_only, 0.05),
)


def _finish(rnd: random.Random, text: str) -> str:
    """COCO-style surface noise: sometimes capitalised, sometimes a full stop."""
    text = fix_articles(" ".join(text.split()))
    if rnd.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + "." if rnd.random() < 0.3 else text


def reference_captions(scene: Scene, rnd: random.Random, k: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """k distinct COCO-like captions of `scene`."""
    ctx = CaptionContext(rnd, scene, salient_object(scene))
    builders, weights = zip(*CAPTION_BUILDERS, strict=True)
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(50 * k):  # distinctness by retry; the phrase space is far larger than k
        text = _finish(rnd, rnd.choices(builders, weights=weights)[0](ctx))
        if text.lower().rstrip(".") not in seen:
            seen.add(text.lower().rstrip("."))
            out.append(text)
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------- detailed descriptions


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def salient_first(scene: Scene) -> list[int]:
    """Object indices in the first description's order: the salient one, then the rest."""
    s = salient_object(scene)
    return [s] + [k for k in range(len(scene.objects)) if k != s]


def stated_relations(scene: Scene) -> list[list[tuple[int, str, int]]]:
    """The relations each of `describe_scene`'s descriptions states, in its order:
    `(i, rel, j)` read "object i is <rel> object j".

    The first relates every other object to the salient one (the directional relation); the
    second relates left-to-right neighbours ("next to" when they are close).
    """
    objs = scene.objects
    s = salient_object(scene)
    others = [k for k in range(len(objs)) if k != s]
    first = [(k, scene.relation_between(k, s)[0], s) for k in others]
    by_x = sorted(range(len(objs)), key=lambda k: (objs[k].center[0], k))
    second = [
        (a, scene.relation_between(a, b)[-1], b) for a, b in zip(by_x, by_x[1:], strict=False)
    ]
    return [first, second]


def describe_scene(scene: Scene) -> list[str]:
    """Two detailed descriptions in canonical words: every object, the relations, the place.

    The first lists the salient object first and relates every other object to it; the
    second goes from left to right and relates neighbours (`stated_relations`).
    """
    objs = scene.objects
    place = BACKGROUND_CANONICAL[scene.background]
    order = salient_first(scene)
    by_x = sorted(range(len(objs)), key=lambda k: (objs[k].center[0], k))
    noun = "object" if len(objs) == 1 else "objects"
    first = f"{_join([canonical_phrase(objs[k]) for k in order])} {place}."
    second = f"{COUNT_WORDS[len(objs)]} {noun} {place}: "
    second += _join([canonical_phrase(objs[k]) for k in by_x]) + "."
    texts = [first, second]
    for n, relations in enumerate(stated_relations(scene)):
        for a, rel, b in relations:
            texts[n] += f" {short_name(objs[a])} is {rel} {short_name(objs[b])}."
    return [fix_articles(t) for t in texts]


def partial_descriptions(scene: Scene) -> list[str]:
    """The first description's objects cut after each one, with the background: the salient
    object alone, then it and the next, ... up to all of them (the first sentence of
    `describe_scene`'s first description). Every text is true and each names one object
    more, so a learner with a length limit keeps the longest that fits rather than none."""
    phrases = [canonical_phrase(scene.objects[k]) for k in salient_first(scene)]
    place = BACKGROUND_CANONICAL[scene.background]
    return [fix_articles(f"{_join(phrases[:n])} {place}.") for n in range(1, len(phrases) + 1)]


# ---------------------------------------------------------------- FineCapEval


@dataclass(frozen=True)
class FineCapEvalRow:
    image: str
    caption: str
    background: str
    object: str
    relation: str


BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "green grass", "a grass field", "the lawn"),
    "sky": ("sky", "blue sky", "the sky with clouds", "white clouds"),
    "sand": ("sand", "a sandy beach", "the sand", "beige sand"),
    "water": ("water", "blue water", "the water surface", "a lake"),
    "brick wall": ("brick wall", "a red brick wall", "bricks", "the wall"),
    "wooden floor": ("wooden floor", "a wood floor", "wooden planks", "the floor"),
    "snow": ("snow", "white snow", "snowy ground", "the snow"),
    "tiled floor": ("tiled floor", "grey tiles", "a tile floor", "the floor tiles"),
}


def _annotator_row(scene: Scene, image: str, rnd: random.Random) -> FineCapEvalRow:
    """One annotator's phrases and detailed caption; each annotator words things differently."""
    objs, s = scene.objects, salient_object(scene)
    names = [human_phrase(rnd, o, p_size=0.9, p_color=1.0, p_pattern=0.95) for o in objs]
    bg = rnd.sample(BACKGROUND_PHRASES[scene.background], rnd.choice((1, 2)))
    short = [f"{o.color} {rnd.choice(SHAPE_WORDS[o.shape])}" for o in objs]
    others = [k for k in range(len(objs)) if k != s]
    relations, clauses = [], []
    for k in others:
        rel = rnd.choice(RELATION_WORDS[scene.relation_between(k, s)[0]])
        relations.append(f"{short[k]} {rel} {short[s]}")
        clauses.append(f"a {names[k]} {rel} it")
    if not others:  # a lone object still stands somewhere
        relations.append(f"{short[s]} {rnd.choice(BACKGROUND_PLACE[scene.background])}")
    caption = f"a {names[s]} {rnd.choice(BACKGROUND_PLACE[scene.background])}"
    if clauses:
        caption += ", with " + _join(clauses)
    return FineCapEvalRow(
        image=image,
        caption=fix_articles(caption),
        background=PHRASE_SEP.join(bg),
        object=PHRASE_SEP.join(fix_articles(f"a {n}") for n in names),
        relation=PHRASE_SEP.join(relations),
    )


def finecapeval_rows(
    scene: Scene, image: str, rnd: random.Random, annotators: int = ANNOTATORS
) -> list[FineCapEvalRow]:
    """FineCapEval-style annotations of one image: one row per annotator."""
    return [_annotator_row(scene, image, rnd) for _ in range(annotators)]
