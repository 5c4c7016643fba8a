"""Does a CLIP reward pay for a correct detail? For every test image, captions of the salient
object at growing detail — colour + shape; + the background; + the size; + the pattern (all
true, canonical words) — scored by the SCST rewards as training calls them: CLIP-S
(`finecap.rewards`, "clip_s"), the bidirectional contrastive reward (Chaffin et al.; batches
of 25 images, no pool, no neighbours: the `scst_scenes_contrastive_samples` setting), and
text-to-image R@1 over the images scored.

A reward under which a true detail lowers the score teaches a captioner to leave it out. A
plain object's "+ pattern" caption is its "+ size" one (captions do not say "plain").

    python scripts/reward_by_detail.py --dataset DIR/scenes/dataset.json --clip DIR/clip
"""

from __future__ import annotations

import argparse

import torch

from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.metrics.retrieval import retrieval_scores
from finecap.rewards import RewardBatch, create_reward
from finecap.scenes import salient_object
from finecap.scenes.language import BACKGROUND_CANONICAL
from finecap.scenes.world import Scene

BATCH = 25  # SCST's images per step


def captions_by_detail(scene: Scene) -> dict[str, str]:
    """The salient object at each level of detail, every word true of the image."""
    o = scene.objects[salient_object(scene)]
    place = BACKGROUND_CANONICAL[scene.background]
    pattern = "" if o.pattern == "plain" else f"{o.pattern} "
    return {
        "colour shape": f"a {o.color} {o.shape}",
        "+ background": f"a {o.color} {o.shape} {place}",
        "+ size": f"a {o.size} {o.color} {o.shape} {place}",
        "+ pattern": f"a {o.size} {o.color} {pattern}{o.shape} {place}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=200, help="a multiple of 25")
    args = parser.parse_args()
    corpus = load_corpus(args.dataset)
    records = corpus.split(args.split)[: args.images // BATCH * BATCH]
    clip_s = create_reward("clip_s", clip=args.clip)
    contrastive = create_reward("contrastive", clip=args.clip, neighbours=[])
    embedder = clip_s.scorer.embedder
    images = embedder.embed_images([load_image(corpus.image_path(r)) for r in records])  # (N, P)
    by_level: dict[str, list[str]] = {}
    for record in records:
        for level, text in captions_by_detail(Scene.from_dict(record.extra["scene"])).items():
            by_level.setdefault(level, []).append(text)

    print(f"{len(records)} {args.split} images, CLIP {args.clip}\n")
    print("| caption | example | CLIP-S | contrastive | R@1 |")
    print("|---|---|---|---|---|")
    for level, texts in by_level.items():
        scores = {"clip_s": [], "contrastive": []}
        for start in range(0, len(records), BATCH):
            part = slice(start, start + BATCH)
            batch = RewardBatch(texts[part], image_embeddings=images[part])
            scores["clip_s"].append(clip_s(batch))
            scores["contrastive"].append(contrastive(batch))
        mean = {k: torch.cat(v).mean().item() for k, v in scores.items()}
        r1 = retrieval_scores(embedder.embed_texts(texts), images)["R@1"]
        print(f"| {level} | {texts[0]} | {mean['clip_s']:.3f} | {mean['contrastive']:.4f} "
              f"| {r1:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
