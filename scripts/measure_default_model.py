"""Measure a scenes captioner on a held-out split: official CIDEr-D (and BLEU-4, ROUGE-L)
against the references, and the share of images whose caption names the salient object's
shape and colour correctly.

    python scripts/measure_default_model.py --dataset data/scenes/dataset.json [--model DIR]
"""

from __future__ import annotations

import argparse
import json

from finecap.captioner import Captioner
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.metrics.official import official_scores
from finecap.scenes import salient_object
from finecap.scenes.grounding import names_object


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default=None, help="captioner folder (default: bundled)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam-size", type=int, default=3)
    args = parser.parse_args()
    corpus = load_corpus(args.dataset)
    records = corpus.split(args.split)
    captioner = Captioner.from_pretrained(args.model)
    images = [load_image(corpus.image_path(r)) for r in records]
    captions = [c.text for c in captioner.caption(images, beam_size=args.beam_size)]
    refs = {r.image_id: r.captions for r in records}
    preds = {r.image_id: c for r, c in zip(records, captions, strict=True)}
    scores = official_scores(refs, preds, metrics=("BLEU", "ROUGE-L", "CIDEr")).scores
    named = []
    for record, caption in zip(records, captions, strict=True):
        scene = record.extra["scene"]
        obj = scene["objects"][salient_object(scene)]
        named.append(names_object(caption, obj["shape"], obj["color"]))
    result = {
        "split": args.split,
        "images": len(records),
        "beam_size": args.beam_size,
        "CIDEr-D": scores["CIDEr"],
        "BLEU-4": scores["BLEU-4"],
        "ROUGE-L": scores["ROUGE-L"],
        "salient_shape_and_colour": sum(named) / len(named),
        "examples": [
            {"image": r.path, "caption": c} for r, c in zip(records[:5], captions[:5], strict=True)
        ],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
