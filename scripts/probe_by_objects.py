"""The attribute-binding probe (`finecap clip probe`) split by how many objects a scene holds:
does a CLIP lose a fact because the image has more objects, or because the text is longer?
The detailed description names every object; the short text names the salient one only, so
a drop with the object count in the first register but not in the second points at the text
side (one vector for a long text), not at the image.

    python scripts/probe_by_objects.py --dataset DIR/scenes/dataset.json --clip DIR/clip
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from finecap.clip import ClipEmbedder, load_clip
from finecap.clip.probe import scene_pairs
from finecap.data.formats import load_corpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--kinds", nargs="+", default=["shape", "color", "pattern", "binding"])
    args = parser.parse_args()
    corpus = load_corpus(args.dataset)
    records = corpus.split(args.split)
    embedder = ClipEmbedder(load_clip(args.clip))
    print(f"{len(records)} {args.split} images, CLIP {args.clip}; accuracy % (n) by objects\n")
    print("| register | kind | 1 | 2 | 3 | 4 |")
    print("|---|---|---|---|---|---|")
    for register in ("description", "short"):
        pairs, counts = [], []
        for record in records:
            for pair in scene_pairs(corpus, [record], register):
                if pair.kind in args.kinds:
                    pairs.append(pair)
                    counts.append(len(record.extra["scene"]["objects"]))
        if not pairs:
            continue
        images = embedder.embed_image_files([p.image for p in pairs])  # (N, P)
        true = embedder.embed_texts([p.true for p in pairs])
        changed = embedder.embed_texts([p.changed for p in pairs])
        margins = ((images * true).sum(-1) - (images * changed).sum(-1)).tolist()
        wins: dict[tuple[str, int], list[bool]] = defaultdict(list)
        for pair, n, margin in zip(pairs, counts, margins, strict=True):
            wins[pair.kind, n].append(margin > 0)
        for kind in args.kinds:
            cells = [
                f"{100 * sum(w) / len(w):.1f} ({len(w)})" if (w := wins.get((kind, n))) else "—"
                for n in (1, 2, 3, 4)
            ]
            if any(c != "—" for c in cells):
                print(f"| {register} | {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
