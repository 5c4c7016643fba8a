"""Measure a scenes captioner on a held-out split: official CIDEr-D (and BLEU-4, ROUGE-L)
against the references, the share of images whose caption names the salient object's
shape and colour correctly, scene-fact precision / recall and CHAIR (`finecap.scenes.facts`),
the share of distinct captions, and with --clip text-to-image R@1 over the first --retrieval-n
images (Cho et al.'s protocol, `finecap.metrics.retrieval`).

    python scripts/measure_default_model.py --dataset data/scenes/dataset.json [--model DIR]
        [--clip CLIP_DIR] [--captions captions.json] [--[no-]block-trigrams]

Each model decodes as it ships (its config.json's `decoding`; the bundled default model
blocks repeated trigrams) with --beam-size beams (default 3); --[no-]block-trigrams overrides.
"""

from __future__ import annotations

import argparse
import json

from finecap.captioner import Captioner
from finecap.clip import ClipEmbedder, load_clip
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.io import atomic_write_text
from finecap.metrics.official import official_scores
from finecap.metrics.retrieval import retrieval_scores
from finecap.scenes import salient_object
from finecap.scenes.facts import score_corpus
from finecap.scenes.grounding import names_object


def fact_scores(captions: list[str], scenes: list[dict]) -> dict:
    counts = score_corpus(captions, scenes)
    return {
        "Facts-P": counts.precision(),
        "Facts-R": counts.recall(),
        "CHAIR-i": counts.chair_i,
        "CHAIR-s": counts.chair_s,
    }


def retrieval_r1(clip: str, images: list, captions: list[str]) -> float:
    embedder = ClipEmbedder(load_clip(clip))
    scores = retrieval_scores(embedder.embed_texts(captions), embedder.embed_images(images))
    return scores["R@1"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default=None, help="captioner folder (default: bundled)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument(
        "--block-trigrams",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="forbid (or allow) a beam to repeat a trigram (default: as the model ships)",
    )
    parser.add_argument("--clip", default=None, help="CLIP folder for retrieval R@1")
    parser.add_argument("--retrieval-n", type=int, default=500)
    parser.add_argument("--captions", default=None, help="also write every caption (JSON)")
    args = parser.parse_args()
    corpus = load_corpus(args.dataset)
    records = corpus.split(args.split)
    captioner = Captioner.from_pretrained(args.model)
    images = [load_image(corpus.image_path(r)) for r in records]
    decoding = captioner.decoding.replace(beam_size=args.beam_size)  # the model's own
    if args.block_trigrams is not None:
        decoding = decoding.replace(block_trigrams=args.block_trigrams)
    captions = [c.text for c in captioner.caption(images, decoding=decoding)]
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
        "block_trigrams": decoding.block_trigrams,
        "CIDEr-D": scores["CIDEr"],
        "BLEU-4": scores["BLEU-4"],
        "ROUGE-L": scores["ROUGE-L"],
        "salient_shape_and_colour": sum(named) / len(named),
        "distinct_captions": len(set(captions)) / len(captions),
        **fact_scores(captions, [r.extra["scene"] for r in records]),
        "examples": [
            {"image": r.path, "caption": c} for r, c in zip(records[:5], captions[:5], strict=True)
        ],
    }
    if args.clip:
        n = min(args.retrieval_n, len(records))
        result["retrieval_images"] = n
        result["R@1"] = retrieval_r1(args.clip, images[:n], captions[:n])
    if args.captions:
        pairs = {r.path: c for r, c in zip(records, captions, strict=True)}
        atomic_write_text(args.captions, json.dumps(pairs, indent=1))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
