"""How well a CLIP's text side grounds each attribute of the scenes world: for every test
image, score "a {colour} {shape} on {background}" (the salient object, the true background)
against the same sentence with one attribute swapped for every other value, and report how
often the true sentence ranks first. A reward model that cannot tell the shapes apart
cannot teach a captioner to name them.

    python scripts/probe_clip_words.py --dataset DIR/scenes/dataset.json --clip DIR/clip
"""

from __future__ import annotations

import argparse
import json

import torch

from finecap.clip import ClipEmbedder, load_clip
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.scenes import salient_object
from finecap.scenes.world import BACKGROUNDS, COLORS, SHAPES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    corpus = load_corpus(args.dataset)
    records = corpus.split(args.split)
    embedder = ClipEmbedder(load_clip(args.clip))
    images = embedder.embed_images([load_image(corpus.image_path(r)) for r in records])
    choices = {"shape": SHAPES, "colour": COLORS, "background": BACKGROUNDS}
    top1 = {}
    for attribute, values in choices.items():
        hits = 0
        for image, record in zip(images, records, strict=True):
            scene = record.extra["scene"]
            obj = scene["objects"][salient_object(scene)]
            truth = {"shape": obj["shape"], "colour": obj["color"]}
            truth["background"] = scene["background"]
            texts = []
            for value in values:
                words = {**truth, attribute: value}
                texts.append(f"a {words['colour']} {words['shape']} on the {words['background']}")
            scores = embedder.embed_texts(texts) @ image
            hits += int(values[int(scores.argmax())] == truth[attribute])
        top1[attribute] = {"top1": hits / len(records), "chance": 1 / len(values)}
    print(json.dumps({"images": len(records), "clip": args.clip, **top1}, indent=2))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
