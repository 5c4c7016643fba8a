"""CIDEr-D: finecap's vectorised scorer vs pycocoevalcap's, on the same tokenized captions.

    python bench/bench_cider.py [--images 5000] [--refs 5] [--repeats 5]

1. Evaluation: CIDEr-D of one candidate per image against its references, df over those
   references -- pycocoevalcap ``Cider().compute_score`` vs ``finecap.metrics.cider.cider_d``
   (which builds the ``CiderD`` tables from scratch each run: df, reference vectors, scoring).
2. Reward: SCST batches (50 images x 5 samples) scored by a ``CiderD`` built once on the whole
   corpus, vs pycocoevalcap's ``CiderScorer`` run per batch -- the work the reference SCST reward
   does per call (it cooks the batch's references and candidates each time; its df differs, so
   this row is a cost baseline only).

Prints a markdown snippet and writes it to bench/results/cider.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from finecap.metrics.cider import CiderD, cider_d
from finecap.metrics.tokenizer import tokenize_captions
from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]


def load_grammar():
    """The caption generator of the golden tests (tests/fixtures/caption_grammar.py)."""
    path = ROOT / "tests" / "fixtures" / "caption_grammar.py"
    spec = importlib.util.spec_from_file_location("caption_grammar", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds over `repeats` runs, and the last result."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="runs of finecap (median)")
    parser.add_argument("--baseline-repeats", type=int, default=3, help="runs of pycocoevalcap")
    parser.add_argument("--batch-images", type=int, default=50)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()

    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    refs, preds = load_grammar().make_corpus(args.images, args.refs, seed=0)
    gts = tokenize_captions(refs)  # both scorers get the same tokenized text
    res = {i: c[0] for i, c in tokenize_captions({i: [p] for i, p in preds.items()}).items()}

    # 1. evaluation
    base_wall, base_cpu, (_, base_scores) = timed(
        lambda: Cider().compute_score(gts, {i: [c] for i, c in res.items()}), args.baseline_repeats
    )
    ours_wall, ours_cpu, (_, ours_scores) = timed(lambda: cider_d(gts, res), args.repeats)
    max_diff = float(np.abs(np.asarray(base_scores) - ours_scores).max())

    # 2. reward: SCST batches against a scorer built once over the corpus
    rng = np.random.default_rng(0)
    ids = list(gts)
    build_wall, _, scorer = timed(lambda: CiderD(gts), 1)
    batches = []
    for _ in range(args.batches):
        images = [ids[i] for i in rng.choice(len(ids), args.batch_images, replace=False)]
        batch_ids = [i for i in images for _ in range(args.samples)]
        # samples: other images' candidates, so the scores vary like sampled captions do
        samples = [res[ids[j]] for j in rng.choice(len(ids), len(batch_ids))]
        batches.append((batch_ids, samples))
    batch_size = args.batch_images * args.samples
    reward_wall, reward_cpu, _ = timed(lambda: [scorer.score(b, s) for b, s in batches], 3)

    def baseline_batches():
        for batch_ids, samples in batches[: max(1, args.batches // 4)]:
            cooked = CiderScorer(n=4, sigma=6.0)
            for i, s in zip(batch_ids, samples, strict=True):
                cooked += (s, gts[i])
            cooked.compute_score()

    n_base = max(1, args.batches // 4)
    base_reward_wall, _, _ = timed(baseline_batches, 1)
    ours_per_batch = reward_wall / args.batches
    base_per_batch = base_reward_wall / n_base

    command = "python bench/bench_cider.py " + " ".join(sys.argv[1:])
    lines = [
        "### CIDEr-D: finecap vs pycocoevalcap",
        "",
        f"`{command.strip()}` -- {machine()}; Python {platform.python_version()}, "
        f"numpy {np.__version__}. Medians of {args.repeats} (finecap) / "
        f"{args.baseline_repeats} (pycocoevalcap) runs; synthetic COCO-style captions "
        f"(tests/fixtures/caption_grammar.py), PTB-tokenized once, same input to both.",
        "",
        "| task | pycocoevalcap | finecap | speed-up |",
        "|---|---|---|---|",
        f"| evaluation, {args.images} images x {args.refs} refs (wall) | {base_wall:.3f} s | "
        f"{ours_wall:.3f} s | **{base_wall / ours_wall:.1f}x** |",
        f"| evaluation, same (CPU time) | {base_cpu:.3f} s | {ours_cpu:.3f} s | "
        f"{base_cpu / ours_cpu:.1f}x |",
        f"| SCST reward, {args.batch_images} images x {args.samples} samples per batch | "
        f"{base_per_batch * 1e3:.1f} ms/batch | {ours_per_batch * 1e3:.2f} ms/batch | "
        f"{base_per_batch / ours_per_batch:.0f}x |",
        f"| SCST reward throughput | {batch_size / base_per_batch:,.0f} captions/s | "
        f"{batch_size / ours_per_batch:,.0f} captions/s | |",
        "",
        f"Largest per-image difference between the two: {max_diff:.1e}. The finecap evaluation "
        "time includes building the scorer (document frequencies and reference vectors); in "
        f"reward mode that is done once ({build_wall:.2f} s for {args.images} images) and each "
        "batch only scores candidates (CPU time per batch: "
        f"{reward_cpu / args.batches * 1e3:.2f} ms). The pycocoevalcap reward row cooks each "
        "batch's references like the reference SCST code; its df is the batch's, so it is a "
        "cost baseline, not the same numbers.",
    ]
    snippet = "\n".join(lines) + "\n"
    print(snippet)
    out = ROOT / "bench" / "results" / "cider.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(snippet)


if __name__ == "__main__":
    main()
