"""One fact changed: the hard negatives of the attribute-binding probe and of CLIP training.

After ARO / NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models behave like
bags-of-words, and what to do about it"): a model that truly reads a description must prefer
it to the same text with one fact made false. Here the change is made to the *scene* and the
text regenerated from it (`describe_scene`), so every mention moves together ("the red circle"
in the relation sentences becomes "the red star" too) and the changed text is false of the
picture by construction:

- `shape`, `color`, `size`, `pattern`: one object's attribute gets another value (shape and
  colour keep every shape + colour pair of the scene unique, so "the red star" still names one
  object);
- `background`: another background;
- `relation`: one object's directional relation to the salient object reversed ("left of" ->
  "right of"), which the salient-first description states;
- `binding`: two objects of different shapes and colours swap colours — the same words in
  another binding ("a red star and a blue circle" -> "a blue star and a red circle").

A kind that a scene cannot take (a relation with one object) gives None.
"""

from __future__ import annotations

import copy
import random
from typing import Literal, get_args

from finecap.scenes.language import (
    BACKGROUND_CANONICAL,
    canonical_phrase,
    describe_scene,
    fix_articles,
)
from finecap.scenes.world import (
    BACKGROUNDS,
    COLORS,
    INVERSE_RELATION,
    PATTERNS,
    SHAPES,
    SIZES,
    Scene,
    as_scene,
    salient_object,
)

ChangeKind = Literal["shape", "color", "size", "pattern", "background", "relation", "binding"]
CHANGE_KINDS: tuple[str, ...] = get_args(ChangeKind)
# Kinds a text about the salient object alone (`short_description`) can show.
SHORT_KINDS: tuple[str, ...] = ("shape", "color", "size", "pattern", "background")


def _other(rnd: random.Random, values: tuple[str, ...], current: str, allowed=None) -> str | None:
    options = [v for v in values if v != current and (allowed is None or allowed(v))]
    return rnd.choice(options) if options else None


def change_scene(
    scene: Scene, kind: str, rnd: random.Random, target: int | None = None
) -> Scene | None:
    """A copy of `scene` with one fact of `kind` changed, or None when it has no such fact.

    `target` is the object whose attribute changes (default: one drawn from `rnd`; for
    `relation`, an object other than the salient one).
    """
    if kind not in CHANGE_KINDS:
        raise ValueError(f"unknown change kind {kind!r}; expected one of {CHANGE_KINDS}")
    scene = copy.deepcopy(as_scene(scene))
    objects = scene.objects
    k = rnd.randrange(len(objects)) if target is None else target
    obj = objects[k]
    pairs = {(o.shape, o.color) for o in objects}
    if kind == "shape":
        new = _other(rnd, SHAPES, obj.shape, lambda s: (s, obj.color) not in pairs)
        if new is None:
            return None
        obj.shape = new
    elif kind == "color":
        new = _other(rnd, COLORS, obj.color, lambda c: (obj.shape, c) not in pairs)
        if new is None:
            return None
        obj.color = new
    elif kind == "size":
        obj.size = _other(rnd, SIZES, obj.size)
    elif kind == "pattern":
        obj.pattern = _other(rnd, PATTERNS, obj.pattern)
    elif kind == "background":
        scene.background = _other(rnd, BACKGROUNDS, scene.background)
    elif kind == "relation":
        return _reverse_relation(scene, rnd, target)
    else:
        return _swap_colors(scene, rnd)
    return scene


def _reverse_relation(scene: Scene, rnd: random.Random, target: int | None) -> Scene | None:
    s = salient_object(scene)
    others = [k for k in range(len(scene.objects)) if k != s]
    if not others:
        return None
    k = target if target is not None and target != s else rnd.choice(others)
    for n, (a, rel, b) in enumerate(scene.relations):
        if {a, b} == {k, s} and rel != "next to":
            scene.relations[n] = (a, INVERSE_RELATION[rel], b)
            return scene
    return None  # every pair has a directional relation; kept for hand-built scenes


def _swap_colors(scene: Scene, rnd: random.Random) -> Scene | None:
    objects = scene.objects
    pairs = [
        (i, j)
        for i in range(len(objects))
        for j in range(i + 1, len(objects))
        if objects[i].shape != objects[j].shape and objects[i].color != objects[j].color
    ]
    if not pairs:
        return None
    i, j = rnd.choice(pairs)
    objects[i].color, objects[j].color = objects[j].color, objects[i].color
    return scene


def short_description(scene: Scene, index: int | None = None) -> str:
    """One object (default: the salient one) with all its attributes and the background, in
    canonical words: "a large red striped circle on grass" — the length of a caption, which is
    what a CLIP reward scores."""
    scene = as_scene(scene)
    obj = scene.objects[salient_object(scene) if index is None else index]
    return fix_articles(f"{canonical_phrase(obj)} {BACKGROUND_CANONICAL[scene.background]}")


def changed_texts(
    scene: Scene, kind: str, rnd: random.Random, register: str = "description", variant: int = 0
) -> tuple[str, str] | None:
    """(true text, the same text with one fact of `kind` changed), or None if the scene has no
    such fact or the change does not show in this register.

    `register`: "description" (`describe_scene(...)[variant]`, every object and relation) or
    "short" (`short_description`: the salient object and the background).
    """
    example = changed_example(scene, kind, rnd, register, variant)
    return None if example is None else example[:2]


def changed_example(
    scene: Scene, kind: str, rnd: random.Random, register: str = "description", variant: int = 0
) -> tuple[str, str, Scene] | None:
    """`changed_texts` and the changed scene the false text describes."""
    scene = as_scene(scene)
    if register == "short":
        if kind not in SHORT_KINDS:
            return None
        # The same object in both texts: a smaller salient object may no longer be salient.
        target = salient_object(scene)
        changed = change_scene(scene, kind, rnd, target=target)

        def text(s: Scene) -> str:
            return short_description(s, target)
    else:
        changed = change_scene(scene, kind, rnd)

        def text(s: Scene) -> str:
            return describe_scene(s)[variant]

    if changed is None:
        return None
    true, false = text(scene), text(changed)
    return (true, false, changed) if true != false else None
