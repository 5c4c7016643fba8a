"""The scenes world: canonical vocabulary, scene dataclasses and scene sampling.

A scene is a background plus 1 to 4 non-overlapping objects, each with a shape, colour,
size and pattern. Relations between objects are computed from the bounding boxes, never
sampled, so they are always true of the picture. Coordinates are pixels of the final
image: x grows to the right, y grows downwards, boxes are `[x0, y0, x1, y1]`.

The canonical words below are the ones the detailed descriptions and the ground-truth
`scene` entries use; reference captions draw on synonyms of them (`finecap.scenes.language`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COLORS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "pink",
    "brown",
)
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "diamond",
    "cross",
    "hexagon",
)
BACKGROUNDS: tuple[str, ...] = (
    "grass",
    "sky",
    "sand",
    "water",
    "brick wall",
    "wooden floor",
    "snow",
    "tiled floor",
)
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")

# Colours an object may not take on a background because the texture is made of them:
# a green object on grass or a white one on snow would be invisible at 96 px.
LOW_CONTRAST: dict[str, frozenset[str]] = {
    "grass": frozenset({"green"}),
    "sky": frozenset({"blue", "white"}),
    "sand": frozenset({"yellow", "white", "orange"}),
    "water": frozenset({"blue"}),
    "brick wall": frozenset({"red", "brown", "orange"}),
    "wooden floor": frozenset({"brown", "orange"}),
    "snow": frozenset({"white"}),
    "tiled floor": frozenset({"white"}),
}

# Object side length as a fraction of the image side (large ~30-40 px, small ~16-20 px at 96).
SIZE_RANGE: dict[str, tuple[float, float]] = {"small": (0.17, 0.21), "large": (0.32, 0.42)}
# Minimum free space between two boxes, and the largest gap still called "next to".
MIN_GAP, NEXT_TO_GAP = 0.03, 0.12
# How many objects a scene holds, with weights (1..4).
OBJECT_COUNT_WEIGHTS: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "next to": "next to",
}


def allowed_colors(background: str) -> tuple[str, ...]:
    """Colours that stay clearly visible on `background`."""
    return tuple(c for c in COLORS if c not in LOW_CONTRAST[background])


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    pattern: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "pattern": self.pattern,
            "bbox": list(self.bbox),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SceneObject:
        return cls(d["shape"], d["color"], d["size"], d["pattern"], tuple(d["bbox"]))


@dataclass
class Scene:
    background: str
    objects: list[SceneObject]
    relations: list[tuple[int, str, int]] = field(default_factory=list)
    image_size: int = 96

    def to_dict(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "objects": [o.to_dict() for o in self.objects],
            "relations": [list(r) for r in self.relations],
            "image_size": self.image_size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scene:
        return cls(
            background=d["background"],
            objects=[SceneObject.from_dict(o) for o in d["objects"]],
            relations=[(int(i), str(r), int(j)) for i, r, j in d.get("relations", [])],
            image_size=int(d.get("image_size", 96)),
        )

    def relation_between(self, i: int, j: int) -> list[str]:
        """Relations of object i to object j ("i is <rel> j"), directional one first."""
        out = []
        for a, rel, b in self.relations:
            if (a, b) == (i, j):
                out.append(rel)
            elif (a, b) == (j, i):
                out.append(INVERSE_RELATION[rel])
        return sorted(out, key=lambda r: r == "next to")


def as_scene(scene: Scene | Mapping[str, Any]) -> Scene:
    """Accept a `Scene` or its JSON dict (the `"scene"` entry of dataset.json)."""
    return scene if isinstance(scene, Scene) else Scene.from_dict(scene)


def salient_object(scene: Scene | Mapping[str, Any]) -> int:
    """Index of the most salient object: the largest size class, then closest to the centre.

    Size is the class ("large" beats "small") rather than the pixel area, so saliency does
    not hinge on a one-pixel difference between two large objects.
    """
    scene = as_scene(scene)
    mid = scene.image_size / 2

    def key(i: int) -> tuple[int, float, int]:
        obj = scene.objects[i]
        cx, cy = obj.center
        return (-SIZES.index(obj.size), (cx - mid) ** 2 + (cy - mid) ** 2, i)

    return min(range(len(scene.objects)), key=key)


def _gap(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Free space between two boxes (0 or negative when they touch or overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2])
    dy = max(b[1] - a[3], a[1] - b[3])
    return max(dx, dy)


def compute_relations(objects: list[SceneObject], image_size: int) -> list[tuple[int, str, int]]:
    """Relations `[i, rel, j]` for every pair i < j, read as "object i is <rel> object j".

    Each pair gets one directional relation along the axis with the larger centre offset,
    plus "next to" when the boxes are less than NEXT_TO_GAP of the image apart.
    """
    rels: list[tuple[int, str, int]] = []
    for i, a in enumerate(objects):
        for j in range(i + 1, len(objects)):
            b = objects[j]
            dx = b.center[0] - a.center[0]
            dy = b.center[1] - a.center[1]
            if abs(dx) >= abs(dy):
                rels.append((i, "left of" if dx > 0 else "right of", j))
            else:
                rels.append((i, "above" if dy > 0 else "below", j))
            if _gap(a.bbox, b.bbox) <= NEXT_TO_GAP * image_size:
                rels.append((i, "next to", j))
    return rels


def mirror_scene(scene: Scene | Mapping[str, Any]) -> Scene:
    """The scene seen in a mirror (left and right swapped): what a horizontally flipped image
    shows. Every shape of the world is left-right symmetric, so only positions change."""
    scene = as_scene(scene)
    side = scene.image_size
    objects = [
        SceneObject(o.shape, o.color, o.size, o.pattern, (side - o.bbox[2], o.bbox[1],
                                                         side - o.bbox[0], o.bbox[3]))
        for o in scene.objects
    ]  # fmt: skip
    return Scene(scene.background, objects, compute_relations(objects, side), side)


@dataclass(frozen=True)
class SalientSpec:
    """Constraints for a test group: the salient object's shape and colour, the backgrounds."""

    shape: str
    color: str
    backgrounds: tuple[str, ...]


def _place_boxes(
    rnd: random.Random, sizes: list[str], image_size: int
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Rejection-sample non-overlapping square boxes; an object that does not fit is dropped."""
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    margin = max(2, round(0.03 * image_size))
    min_gap = MIN_GAP * image_size
    for size in sizes:
        lo, hi = SIZE_RANGE[size]
        side = round(rnd.uniform(lo, hi) * image_size)
        for _ in range(60):
            x0 = rnd.randint(margin, image_size - margin - side)
            y0 = rnd.randint(margin, image_size - margin - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(_gap(box, other) >= min_gap for _, other in placed):
                placed.append((size, box))
                break
    return placed


def sample_scene(
    rnd: random.Random, image_size: int = 96, spec: SalientSpec | None = None
) -> Scene:
    """Sample one scene; with `spec`, its salient object gets the spec's shape and colour."""
    background = rnd.choice(spec.backgrounds if spec else BACKGROUNDS)
    colors = allowed_colors(background)
    count = rnd.choices(range(1, 5), weights=OBJECT_COUNT_WEIGHTS)[0]
    # Place large objects first: they are the hardest to fit.
    sizes = sorted((rnd.choice(SIZES) for _ in range(count)), key=lambda s: -SIZES.index(s))
    # Attributes come after the geometry so a spec can be given to whichever object is salient.
    objects = [
        SceneObject("", "", size, rnd.choice(PATTERNS), box)
        for size, box in _place_boxes(rnd, sizes, image_size)
    ]
    scene = Scene(background, objects, image_size=image_size)
    used: set[tuple[str, str]] = set()
    if spec is not None:
        target = scene.objects[salient_object(scene)]
        target.shape, target.color = spec.shape, spec.color
        used.add((spec.shape, spec.color))
    for obj in scene.objects:
        # Shape+colour pairs are unique within a scene so "the red circle" names one object.
        while not obj.shape:
            pair = (rnd.choice(SHAPES), rnd.choice(colors))
            if pair not in used:
                obj.shape, obj.color = pair
                used.add(pair)
    scene.relations = compute_relations(scene.objects, image_size)
    return scene
