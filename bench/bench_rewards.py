"""Reward throughput at SCST batch sizes: captions per second, median of several runs.

    python bench/bench_rewards.py [--clip runs/scenes_clip] [--grammar runs/scenes_grammar]
                                  [--dataset runs/scenes5k/dataset.json] [--images 50 --samples 5]

Captions are real scenes references and descriptions (B images x K samples each, grouped per
image), so lengths match what a captioner writes. CLIP rewards get cached image embeddings
(what SCST passes), so they time the text tower and the reward arithmetic only. Writes
bench/results/rewards.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from finecap.data.formats import load_corpus
from finecap.rewards import RewardBatch, create_reward
from finecap.rewards.clip_rewards import ClipScorer
from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]


def make_batch(dataset: Path, b: int, k: int, seed: int = 0) -> RewardBatch:
    rng = random.Random(seed)
    records = rng.sample(load_corpus(dataset).split("train"), b)
    captions = []
    for r in records:
        pool = list(r.captions) + list(r.extra.get("descriptions", []))
        captions += [rng.choice(pool) for _ in range(k)]
    return RewardBatch(
        captions=captions,
        references=[list(r.captions) for r in records],
        image_ids=[r.image_id for r in records],
    )


def time_reward(reward, batch: RewardBatch, repeats: int) -> float:
    reward(batch)  # warm-up (first call allocates, builds caches)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        reward(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(ROOT / "runs/scenes_clip"))
    parser.add_argument("--grammar", default=str(ROOT / "runs/scenes_grammar"))
    parser.add_argument("--dataset", default=str(ROOT / "runs/scenes5k/dataset.json"))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench/results/rewards.md"))
    args = parser.parse_args()

    batch = make_batch(Path(args.dataset), args.images, args.samples)
    scorer = ClipScorer.load(args.clip)
    # Cached image embeddings, as SCST passes them: (B, P), computed once outside the timing.
    dim = scorer.embedder.bundle.projection_dim
    batch.image_embeddings = torch.nn.functional.normalize(torch.randn(args.images, dim), dim=-1)

    rewards = {
        "clip_s (cached image embeddings)": lambda: create_reward("clip_s", clip=scorer),
        "contrastive (cached image embeddings)": lambda: create_reward("contrastive", clip=scorer),
        "grammar": lambda: create_reward("grammar", model=args.grammar),
        "cider (df over train refs, precomputed)": lambda: create_reward(
            "cider", dataset=args.dataset
        ),
    }
    rows = []
    n = len(batch.captions)
    for name, build in rewards.items():
        try:
            reward = build()
        except (ImportError, OSError, ValueError) as err:
            rows.append(f"| {name} | unavailable: {type(err).__name__}: {err} | |")
            continue
        seconds = time_reward(reward, batch, args.repeats)
        rows.append(f"| {name} | {n / seconds:,.0f} | {1000 * seconds:.1f} |")
        print(rows[-1], flush=True)

    command = "python bench/bench_rewards.py " + " ".join(sys.argv[1:])
    report = "\n".join(
        [
            "# Reward throughput",
            "",
            f"Command: `{command.strip()}`  ",
            f"Machine: {machine()}  ",
            f"Batch: {args.images} images x {args.samples} samples = {n} captions (scenes "
            f"references/descriptions); median of {args.repeats} runs after one warm-up.  ",
            f"CLIP: `{args.clip}`; grammar model: `{args.grammar}`.",
            "",
            "| reward | captions/s | ms per batch |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
