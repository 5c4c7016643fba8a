"""Dense scene supervision for a CLIP trained from scratch on the scenes world.

A ViT trained only contrastively on 4,000 scenes learns a bag of colours and backgrounds: at
10 epochs it tells an image's true description from the same text with one object's shape
changed 58 % of the time (chance 50 %), a relation reversed 49 % (`finecap clip probe`), with
or without NegCLIP's hard negatives, because in a batch of random scenes colour and background
already identify the image. The world knows what is under every patch, so training can say
it: each patch token of the vision tower predicts the shape, colour, pattern and size of the
object whose box holds the patch's centre ("none" for background), a linear head per
attribute, cross-entropy, added to the contrastive loss with `ClipTrainConfig.dense_weight`.
The heads exist only in training; the saved model is a plain Hugging Face dual encoder.

At weight 1 and the contrastive learning rate, the shape head hardly teaches the tower
shapes: a linear probe on the last grid of such a CLIP names the shape under an object's cells
24 % of the time, on its pooled vector the salient object's 22 % (`scripts/clip_linear_probe.py`;
weight 4 at lr 1e-3: 57 % on the grid). The bag head asks the pooled vector itself: which
objects the scene holds, as bound pairs — every (shape, colour), (shape, pattern) and
(shape, size) present — a multi-label logistic regression (`ClipTrainConfig.bag_weight`). A
gated pool (`finecap.clip.conv_clip.GatedPool`) keeps the objects by weighting each cell by a
learned objectness; the patch labels teach it where they are (`objectness_loss`).

Relations stay at chance with all of these (a reversed relation is the same text to the text
tower: cosine 0.9998 between "the star is above the circle" and "... below ..."): an image
vector that does not say where each object is gives the text no direction to learn, and the
text's tie gives the image none. The position head asks the pooled vector where things are:
the centre of the objects of each colour and of each shape (`position_labels`), a linear
regression (`ClipTrainConfig.position_weight`), so that "the pink star is above the brown
circle" can be a linear function of the image vector. Measured (README, "What the scenes CLIP
sees"): the head learns the centres, but relations stay at chance — it does not break the tie.

The relation head is meant to break it from both sides at once. One read-out over the
*shared* embedding space says, for each ordered pair of colours and of shapes, which way the
first lies from the second (left of, right of, above, below; `relation_labels`,
`RelationHead`). It is trained on the image embedding with the scene's relations and on each
description's (and hard negative's) text embedding with the relations that text states, so
"the pink star is above the brown circle" and "... below ..." must differ along the same
directions in which the image says where things are (`ClipTrainConfig.relation_weight`).
Measured (README): in 10 epochs it does not break the tie either — its loss hardly leaves
chance, and relations stay at 53-55 %.

Dimension letters: B images, N patches (grid x grid), H vision width, A attributes (4), P the
shared embedding width, K relation keys (ordered pairs), I colours and shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finecap.scenes.world import COLORS, PATTERNS, SHAPES, SIZES, Scene

# (name, vocabulary); class 0 of each is "no object here".
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shape", SHAPES),
    ("color", COLORS),
    ("pattern", PATTERNS),
    ("size", SIZES),
)
IGNORE = -100  # images without a scene: no dense loss
# The bag's bound pairs: the shape with each other attribute.
BAG_PAIRS: tuple[tuple[str, tuple[str, ...]], ...] = ATTRIBUTES[1:]
BAG_SIZE = sum(len(SHAPES) * len(vocab) for _, vocab in BAG_PAIRS)
# The position head's entries: each colour, then each shape.
POSITION_KEYS: tuple[tuple[str, str], ...] = (
    *(("color", c) for c in COLORS),
    *(("shape", s) for s in SHAPES),
)

# The relation head's entries: each ordered pair of different colours, then of shapes; per
# axis, whether the first lies before the second (`relation_labels`).
RELATION_KEYS: tuple[tuple[str, str, str], ...] = (
    *(("color", a, b) for a in COLORS for b in COLORS if a != b),
    *(("shape", a, b) for a in SHAPES for b in SHAPES if a != b),
)
# Directional relation -> (axis: 0 x, 1 y; 1 if the subject lies before the object).
RELATION_AXES: dict[str, tuple[int, int]] = {
    "left of": (0, 1), "right of": (0, 0), "above": (1, 1), "below": (1, 0),
}  # fmt: skip
_RELATION_INDEX = {key: k for k, key in enumerate(RELATION_KEYS)}


def patch_labels(
    scene: Scene | None, grid: int, side: int, offset: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """(N, A) class ids of the object under each patch centre of a `side`-pixel input cut
    into grid x grid patches; `offset` (dx, dy): where the image content moved to (a shift
    augmentation), in input pixels. No scene: all IGNORE."""
    if scene is None:
        return torch.full((grid * grid, len(ATTRIBUTES)), IGNORE, dtype=torch.long)
    scale = side / scene.image_size  # scene pixels -> input pixels
    patch = side / grid
    labels = torch.zeros(grid, grid, len(ATTRIBUTES), dtype=torch.long)
    for obj in scene.objects:
        x0, y0, x1, y1 = (v * scale for v in obj.bbox)
        x0, x1, y0, y1 = x0 + offset[0], x1 + offset[0], y0 + offset[1], y1 + offset[1]
        ids = [vocab.index(getattr(obj, name)) + 1 for name, vocab in ATTRIBUTES]
        for row in range(grid):
            cy = (row + 0.5) * patch
            if not y0 <= cy < y1:
                continue
            for col in range(grid):
                if x0 <= (col + 0.5) * patch < x1:
                    labels[row, col] = torch.tensor(ids)
    return labels.view(grid * grid, len(ATTRIBUTES))


class DenseHeads(nn.Module):
    """One linear classifier per attribute over the vision tower's patch tokens."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(width, len(vocab) + 1) for _, vocab in ATTRIBUTES)

    def loss(self, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """patches (B, N, H), labels (B, N, A) -> mean cross-entropy over attributes."""
        losses = [
            F.cross_entropy(
                head(patches).flatten(0, 1), labels[..., a].flatten(), ignore_index=IGNORE
            )
            for a, head in enumerate(self.heads)
        ]
        return torch.stack(losses).nanmean()  # nan: a batch with no scene at all


def objectness_loss(gate_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """gate_logits (B, N), labels (B, N, A) -> binary cross-entropy of "an object is under this
    patch" (any class but 0), over the images with a scene (nan: none has)."""
    known = labels[..., 0] != IGNORE
    target = (labels[..., 0] > 0).float()
    return F.binary_cross_entropy_with_logits(gate_logits[known], target[known])


def bag_labels(scene: Scene | None) -> torch.Tensor:
    """(BAG_SIZE,) 1.0 for each (shape, colour), (shape, pattern), (shape, size) pair an object
    of `scene` has, else 0.0; no scene: all IGNORE."""
    if scene is None:
        return torch.full((BAG_SIZE,), float(IGNORE))
    bag = torch.zeros(BAG_SIZE)
    for obj in scene.objects:
        start, shape = 0, SHAPES.index(obj.shape)
        for name, vocab in BAG_PAIRS:
            bag[start + shape * len(vocab) + vocab.index(getattr(obj, name))] = 1.0
            start += len(SHAPES) * len(vocab)
    return bag


class BagHead(nn.Module):
    """A multi-label classifier of the scene's bound pairs (`bag_labels`) over the pooled
    image vector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, BAG_SIZE)

    def loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """pooled (B, H), labels (B, BAG_SIZE) -> mean binary cross-entropy of the images with
        a scene (nan: none has)."""
        known = labels[:, 0] != IGNORE
        return F.binary_cross_entropy_with_logits(self.head(pooled[known]), labels[known])


def position_labels(
    scene: Scene | None, side: int, offset: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """(len(POSITION_KEYS), 3): per colour, then per shape, [present, x, y], the mean centre
    of the scene's objects of that colour (shape) in [-1, 1] of a `side`-pixel input whose
    content moved by `offset` pixels; absent entries are 0. No scene: all IGNORE."""
    if scene is None:
        return torch.full((len(POSITION_KEYS), 3), float(IGNORE))
    scale = side / scene.image_size
    sums = torch.zeros(len(POSITION_KEYS), 3)
    for obj in scene.objects:
        cx = (obj.bbox[0] + obj.bbox[2]) / 2 * scale + offset[0]
        cy = (obj.bbox[1] + obj.bbox[3]) / 2 * scale + offset[1]
        xy = torch.tensor([1.0, 2 * cx / side - 1, 2 * cy / side - 1])
        for key in (("color", obj.color), ("shape", obj.shape)):
            sums[POSITION_KEYS.index(key)] += xy
    present = sums[:, :1].clamp(min=1)
    return torch.cat([sums[:, :1].clamp(max=1), sums[:, 1:] / present], dim=1)


class PositionHead(nn.Module):
    """A linear regression of `position_labels` (the centres) over the pooled image vector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, 2 * len(POSITION_KEYS))

    def loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """pooled (B, H), labels (B, K, 3) -> mean squared error of the present entries of the
        images with a scene (nan: none has)."""
        present = labels[..., 0] == 1  # IGNORE rows and absent entries are not 1
        predicted = self.head(pooled).view(len(pooled), len(POSITION_KEYS), 2)
        return F.mse_loss(predicted[present], labels[..., 1:][present])


class FactTarget(nn.Module):
    """A fixed target for the image embedding: a random projection of the scene's facts.

    The facts are the bound pairs (`bag_labels`) and where each colour and each shape lies
    (`position_labels`' centres, times `position_weight`). Pulled toward it, the image
    embedding holds every fact a description states, positions included, so a text that says
    "a is left of b" scores higher against exactly the images where it holds. Measured with
    the image side fixed to this target (`scripts/relation_oracle.py`, README): a fresh text
    tower then learns relations (89 % in 1,240 steps at position weight 3), which it does not
    against a CLIP's own image side (~52 %). Inside the CLIP the image side gets only part of
    the way to the target (cosine 0.52-0.69 after 13 epochs) and relations stay near chance
    (README, "The fact target"). The projection is a seeded buffer, not saved.
    """

    def __init__(self, width: int, position_weight: float, seed: int = 0) -> None:
        super().__init__()
        size = BAG_SIZE + 2 * len(POSITION_KEYS)
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(size, width, generator=generator) / size**0.5
        self.register_buffer("projection", projection, persistent=False)
        self.position_weight = position_weight

    def targets(self, bag: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """bag (B, BAG_SIZE), position (B, K, 3) labels of scenes -> unit targets (B, P)."""
        where = position[..., 1:] * position[..., :1]  # absent entries: 0
        facts = torch.cat([bag, self.position_weight * where.flatten(1)], dim=1)
        return F.normalize(facts @ self.projection, dim=-1)

    def loss(self, img: torch.Tensor, bag: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """img (B, P) unit embeddings -> mean (1 - cosine to the target) over the images with
        a scene (nan: none has)."""
        known = bag[:, 0] != IGNORE
        if not known.any():
            return img.new_tensor(float("nan"))
        targets = self.targets(bag[known], position[known])
        return (1 - (img[known] * targets).sum(-1)).mean()


def relation_labels(scene: Scene | None, relations: list[tuple[int, str, int]]) -> torch.Tensor:
    """(len(RELATION_KEYS), 2) per ordered pair of colours and, again, of shapes, and per axis
    (x, y): 1 if the first lies before the second (left of, above), 0 if after, from the
    directional `relations` (`(i, rel, j)` between `scene`'s objects), both ways round ("red
    left of blue" is also "blue right of red"). An axis no relation of the pair states, a pair
    that shares its colour (shape), or one two relations contradict is IGNORE; so is
    everything without a scene."""
    labels = torch.full((len(RELATION_KEYS), 2), IGNORE, dtype=torch.long)
    if scene is None:
        return labels
    contradicted: set[tuple[int, int]] = set()
    for i, rel, j in relations:
        if rel not in RELATION_AXES:
            continue  # "next to" says no direction
        axis, before = RELATION_AXES[rel]
        a, b = scene.objects[i], scene.objects[j]
        for name in ("color", "shape"):
            first, second = getattr(a, name), getattr(b, name)
            if first == second:
                continue
            for key, value in (
                ((name, first, second), before),
                ((name, second, first), 1 - before),
            ):
                entry = (_RELATION_INDEX[key], axis)
                if labels[entry] not in (IGNORE, value):
                    contradicted.add(entry)
                labels[entry] = value
    for entry in contradicted:
        labels[entry] = IGNORE
    return labels


class RelationHead(nn.Module):
    """Which way each pair lies, read from embeddings of the shared image-text space, one
    head for both towers.

    Each colour and each shape has a learned direction per axis, `where` (I, 2, P), and the
    logit that a lies before b along an axis is (where[a] - where[b]) . e: the embedding
    says "where a is minus where b is". An image embedding that holds each colour's position
    along its direction answers every pair at once, and a text that states "a is left of b"
    by adding where[a] - where[b] scores high against exactly the images where it is true, so
    the contrastive similarity sees the relation too. (A free classifier per pair asks the
    text for a conjunction of three words that a linear read-out of a 128-d vector learns
    poorly: measured, text-only training stalls at a loss of 1.1 of 1.39.)

    The embeddings are unit vectors; they are scaled by sqrt(P) first, so each entry is of
    order 1, as a linear layer's input is meant to be.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = width**0.5
        names = [*(("color", c) for c in COLORS), *(("shape", s) for s in SHAPES)]
        self.where = nn.Parameter(torch.randn(len(names), 2, width) / width)
        index = {name: n for n, name in enumerate(names)}
        first = [index[(kind, a)] for kind, a, _ in RELATION_KEYS]
        second = [index[(kind, b)] for kind, _, b in RELATION_KEYS]
        self.register_buffer("first", torch.tensor(first), persistent=False)
        self.register_buffer("second", torch.tensor(second), persistent=False)

    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """embeds (B, P) unit vectors -> (B, K, 2) logits of "the first lies before"."""
        offsets = self.where[self.first] - self.where[self.second]  # (K, 2, P)
        return torch.einsum("bp,kap->bka", embeds * self.scale, offsets)

    def loss(self, embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeds (B, P), labels (B, K, 2) -> mean binary cross-entropy of the known entries
        (nan: none is known)."""
        known = labels != IGNORE
        if not known.any():
            return embeds.new_tensor(float("nan"))
        logits = self.logits(embeds)[known]
        return F.binary_cross_entropy_with_logits(logits, labels[known].float())
