"""Shape words in a `finecap reproduce` run's test captions, against the scenes ground truth:
how often each system names the salient object's shape (and colour), how often it names no
shape at all, and its commonest shape word. Prints a Markdown table.

    python scripts/shape_words.py runs/reproduce
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from finecap.data.formats import load_corpus
from finecap.reproduce import SCST_SYSTEMS
from finecap.scenes import salient_object
from finecap.scenes.grounding import SHAPES, find_words, names_object, simple_tokenize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the --out folder of finecap reproduce")
    args = parser.parse_args()
    run = Path(args.run)
    records = {r.image_id: r for r in load_corpus(run / "scenes" / "dataset.json").split("test")}
    print("| system | names salient shape + colour % | salient shape % | no shape word % "
          "| commonest shape word |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in ["MLE", *SCST_SYSTEMS]:
        predictions = json.loads((run / "predictions" / f"{name}.json").read_text())
        both = right = none = 0
        first_shapes: collections.Counter = collections.Counter()
        for p in predictions:
            scene = records[p["image_id"]].extra["scene"]
            obj = scene["objects"][salient_object(scene)]
            found = [shape for _, shape in find_words(simple_tokenize(p["caption"]), SHAPES)]
            both += names_object(p["caption"], obj["shape"], obj["color"])
            right += obj["shape"] in found
            none += not found
            first_shapes.update(found[:1])
        n = len(predictions)
        word, count = first_shapes.most_common(1)[0] if first_shapes else ("-", 0)
        print(f"| {name} | {100 * both / n:.1f} | {100 * right / n:.1f} | {100 * none / n:.1f} "
              f"| {word} ({100 * count / n:.0f} %) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
