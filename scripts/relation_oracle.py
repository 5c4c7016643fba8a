"""Can the scenes CLIP's text tower learn relations when the image side is perfect?

Relations stay at chance in every scenes CLIP we trained (README, "What the scenes CLIP
sees"). This asks whether the text side alone is enough to block them. Each image's embedding
is fixed to an oracle: a random projection of its ground truth. That is the background, the
bound pairs (colour-shape, shape-pattern, shape-size) and where each colour and each shape
lies (x, y in -1..1, times `--position-weight`). A "left of" is true of an oracle vector
exactly when the subject's colour lies left of the object's.

Only a fresh text tower (the `finecap clip train` architecture and BPE tokenizer) and its
projection train, with the recipe's text-side terms: InfoNCE over the batch plus one hard
negative per text, and the pairwise term. The probe's question is asked against the oracle
on the validation split, per kind: does the true text score above the one with a fact changed?

    python scripts/relation_oracle.py --dataset DIR/scenes/dataset.json --steps 1240
    python scripts/relation_oracle.py --dataset D --steps 620 --images-from CLIP   # a real one

1,240 steps of 64 images are 20 epochs of the 4,000 training images: the 20-epoch CLIP's
steps. `finecap clip train --fact-weight` asks a CLIP's own image side for a target of this
kind (`finecap.clip.dense.FactTarget`: no background entry, mean centres).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from finecap.clip import ClipEmbedder, load_clip
from finecap.clip.config import CLIP_PROMPT, ScenesClipConfig
from finecap.clip.data import descriptions_of
from finecap.clip.dense import BAG_SIZE, POSITION_KEYS, bag_labels
from finecap.clip.tokenizer import train_bpe_tokenizer
from finecap.clip.towers import build_scenes_clip, encode_texts
from finecap.clip.train import clip_loss, pair_loss
from finecap.data.formats import load_corpus
from finecap.scenes.changes import changed_example
from finecap.scenes.world import BACKGROUNDS, Scene

KINDS = ("shape", "pattern", "relation", "binding", "size")  # the recipe's hard negatives


class Oracle:
    """A scene -> a fixed unit vector (P,) that holds every fact a description states: the
    background, the bound pairs (`finecap.clip.dense.bag_labels`) and each colour's and shape's
    summed centres."""

    def __init__(self, width: int, position_weight: float, seed: int) -> None:
        self.size = len(BACKGROUNDS) + BAG_SIZE + 2 * len(POSITION_KEYS)
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(self.size, width, generator=generator) / self.size**0.5
        self.position_weight = position_weight

    def __call__(self, scene: Scene) -> torch.Tensor:
        background = torch.zeros(len(BACKGROUNDS))
        background[BACKGROUNDS.index(scene.background)] = 1
        where = torch.zeros(len(POSITION_KEYS), 2)  # summed centres, in -1..1
        for obj in scene.objects:
            x, y = (2 * v / scene.image_size - 1 for v in obj.center)
            for key in (("color", obj.color), ("shape", obj.shape)):
                where[POSITION_KEYS.index(key)] += torch.tensor([x, y]) * self.position_weight
        facts = torch.cat([background, bag_labels(scene), where.flatten()])
        return F.normalize(facts @ self.projection, dim=0)


def draw(scene: Scene, rng: random.Random, kinds: tuple[str, ...]) -> tuple[str, str] | None:
    """One description of `scene` and its hard negative of the first kind the scene takes."""
    variant = rng.randrange(2)
    for kind in rng.sample(kinds, len(kinds)):
        example = changed_example(scene, kind, rng, register="description", variant=variant)
        if example is not None:
            return example[0], example[1]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--steps", type=int, default=1240)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--position-weight", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--images-from", help="a trained CLIP whose frozen image embeddings replace the oracle"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    corpus = load_corpus(args.dataset)
    train, val = corpus.split("train"), corpus.split("val")
    arch = ScenesClipConfig()
    texts = [t for r in train for t in [*descriptions_of(r), *r.captions]]
    tokenizer = train_bpe_tokenizer(
        [*texts, CLIP_PROMPT], arch.bpe_vocab_size, arch.max_text_length
    )
    model = build_scenes_clip(arch, tokenizer)
    train_scenes = [Scene.from_dict(r.extra["scene"]) for r in train]
    val_scenes = [Scene.from_dict(r.extra["scene"]) for r in val]
    if args.images_from:  # a trained CLIP's image side, frozen
        embedder = ClipEmbedder(load_clip(args.images_from))
        train_images = embedder.embed_image_files([corpus.image_path(r) for r in train])
        val_images = embedder.embed_image_files([corpus.image_path(r) for r in val])
        side = f"the image side of {args.images_from}, frozen"
    else:
        oracle = Oracle(arch.projection_dim, args.position_weight, args.seed)
        train_images = torch.stack([oracle(s) for s in train_scenes])  # (N, P), fixed
        val_images = torch.stack([oracle(s) for s in val_scenes])
        side = "an oracle image side"
    probes = probe_pairs(val_scenes, val_images, rng)

    params = [
        *model.text_model.parameters(),
        *model.text_projection.parameters(),
        model.logit_scale,
    ]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.steps, pct_start=0.05
    )
    print(f"a fresh text tower vs {side}; {len(train)} training scenes, validation probe")
    print("| step | s | " + " | ".join(KINDS) + " | relation text cosine |")
    print("|---|---|" + "---|" * (len(KINDS) + 1))
    started, order = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        if len(order) < args.batch_size:
            order = rng.sample(range(len(train)), len(train))
        batch, order = order[: args.batch_size], order[args.batch_size :]
        drawn = [(i, pair) for i in batch if (pair := draw(train_scenes[i], rng, KINDS))]
        images = train_images[[i for i, _ in drawn]]  # (B, P)
        both = encode_texts(model, tokenizer, [p[0] for _, p in drawn] + [p[1] for _, p in drawn])
        true, negative = both[: len(drawn)], both[len(drawn) :]
        loss = clip_loss(images, true, model.logit_scale, negative)
        loss = loss + pair_loss(images, true, negative, model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            seconds = time.perf_counter() - started
            print(f"| {step} | {seconds:.0f} | {probe(model, tokenizer, probes)} |", flush=True)
    return 0


def probe_pairs(scenes: list[Scene], images: torch.Tensor, rng: random.Random) -> dict:
    """kind -> (images (M, P), true texts, changed texts) of the scenes that take it;
    `images` (N, P): one per scene."""
    probes = {}
    for kind in KINDS:
        rows = [(n, pair) for n, scene in enumerate(scenes) if (pair := draw(scene, rng, (kind,)))]
        images_of = images[[n for n, _ in rows]]
        probes[kind] = (images_of, *zip(*(pair for _, pair in rows), strict=True))
    return probes


@torch.no_grad()
def probe(model, tokenizer, probes: dict) -> str:  # noqa: ANN001
    """Accuracy % per kind, then the relation pairs' mean text cosine, as table cells."""
    cells, cosine = [], 0.0
    for kind, (images, true_texts, changed_texts) in probes.items():
        true = encode_texts(model, tokenizer, list(true_texts))
        changed = encode_texts(model, tokenizer, list(changed_texts))
        wins = (images * true).sum(-1) > (images * changed).sum(-1)
        cells.append(f"{100 * wins.float().mean().item():.1f}")
        if kind == "relation":
            cosine = (true * changed).sum(-1).mean().item()
    return " | ".join(cells) + f" | {cosine:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
