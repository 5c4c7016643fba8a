"""A metrics.json (from `finecap evaluate` or `finecap reproduce`) as a Markdown table, x100
as papers print it (MedR, Vocabulary and Mean-Length as they are).

    python scripts/metrics_table.py runs/reproduce/metrics.json
"""

from __future__ import annotations

import argparse
import json

COLUMNS = {  # header -> metric
    "B-4": "BLEU-4", "M": "METEOR", "R-L": "ROUGE-L", "C": "CIDEr", "BERT-S": "BERTScore",
    "CLIP-S": "CLIP-S", "RefCLIP-S": "RefCLIP-S", "R@1": "R@1", "R@5": "R@5", "R@10": "R@10",
    "MedR": "MedR", "FCE bg": "FineCapEval-background", "FCE obj": "FineCapEval-object",
    "FCE rel": "FineCapEval-relation", "Facts-P": "Facts-P", "Facts-R": "Facts-R",
    "CHAIR-i": "CHAIR-i", "CHAIR-s": "CHAIR-s", "Salient": "Salient", "Shapeless": "Shapeless",
    "Rep.": "Repetition", "Dist-2": "Distinct-2", "Distinct": "Distinct-Captions",
    "Vocab": "Vocabulary", "Len": "Mean-Length",
}  # fmt: skip
UNSCALED = {"MedR", "Vocabulary", "Mean-Length"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics")
    args = parser.parse_args()
    with open(args.metrics) as f:
        systems = json.load(f)["systems"]
    present = {h: m for h, m in COLUMNS.items() if any(m in s for s in systems.values())}
    print("| system | " + " | ".join(present) + " |")
    print("|---" * (len(present) + 1) + "|")
    for name, scores in systems.items():
        cells = []
        for metric in present.values():
            value = scores.get(metric)
            if value is None:
                cells.append("-")
            elif metric in UNSCALED:
                cells.append(f"{value:.0f}" if metric == "Vocabulary" else f"{value:.1f}")
            else:
                cells.append(f"{100 * value:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
