"""One SCST step split into sampling, greedy baseline, reward and backward.

    python bench/bench_scst.py --dataset data/scenes/dataset.json [--clip DIR] [--runs 5]

Models: the scenes captioner (the bundled default, or --model DIR) on 96-px images, and a
6-layer d=512 transformer on random (B, 49, 2048) features with a 10k-word vocabulary.
Rewards: CIDEr-D (document frequencies cached over the training references) and, with
--clip, CLIP-S on cached image embeddings. Median over --runs steps after one warm-up.
Writes bench/results/scst.md. The aim (issue 5): the reward under 20 % of the step.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from finecap.captioner import Captioner
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.data.vocab import Vocab
from finecap.decoding import SamplingConfig, greedy, sample
from finecap.models import CaptionModel, EncoderOutput, create_decoder, decoder_config
from finecap.rewards import RewardBatch, create_reward
from finecap.train.scst import mean_of_others, policy_gradient_loss
from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]


def step_phases(
    model: torch.nn.Module, vocab: Vocab, encode, batch: RewardBatch, reward, k: int
) -> dict:
    """Seconds of each phase of one SCST step (greedy baseline included, as Rennie et al.)."""
    times = {}
    start = time.perf_counter()
    enc = encode()
    decoder = model.decoder if isinstance(model, CaptionModel) else model
    samples = sample(decoder, enc, SamplingConfig(n=k, max_len=16))
    captions = [vocab.decode(row) for row in samples.tokens.tolist()]
    times["sampling"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        greedy(decoder, enc, 16)
    times["greedy baseline"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = reward(
        RewardBatch(captions, batch.references, batch.image_ids, None, batch.image_embeddings)
    )
    times["reward"] = time.perf_counter() - start

    start = time.perf_counter()
    loss = policy_gradient_loss(
        samples.logprobs, samples.mask(), scores - mean_of_others(scores, None, k)
    )
    loss.backward()
    times["backward"] = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return times


def median_phases(runs: int, fn) -> dict:
    fn()  # warm-up
    samples = [fn() for _ in range(runs)]
    return {phase: statistics.median(s[phase] for s in samples) for phase in samples[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ROOT / "data/scenes/dataset.json"))
    parser.add_argument("--model", default=None, help="scenes captioner folder (default: bundled)")
    parser.add_argument("--clip", default=None, help="CLIP folder for the CLIP-S reward")
    parser.add_argument("--images", type=int, default=25, help="B images per step")
    parser.add_argument("--samples", type=int, default=5, help="K samples per image")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench/results/scst.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    corpus = load_corpus(args.dataset)
    records = random.Random(0).sample(corpus.split("train"), args.images)
    rewards = {"CIDEr-D": create_reward("cider", dataset=args.dataset)}
    clip_embeddings = None
    if args.clip:
        rewards["CLIP-S (cached image emb.)"] = create_reward("clip_s", clip=args.clip)
        scorer = rewards["CLIP-S (cached image emb.)"].scorer
        clip_embeddings = scorer.embedder.embed_images(
            [load_image(corpus.image_path(r)) for r in records]
        )

    scenes = Captioner.from_pretrained(args.model)
    scenes.model.train()
    pixels = scenes.model.encoder.preprocess([load_image(corpus.image_path(r)) for r in records])
    big_vocab = Vocab([f"w{i}" for i in range(10_000)])
    big_config = decoder_config(
        "transformer", hidden_size=512, num_layers=6, num_heads=8, ffn_size=2048
    )
    big = create_decoder(big_config, len(big_vocab), feature_dim=2048)
    features = torch.randn(args.images, 49, 2048)  # precomputed ResNet-style grid features
    models = {
        "scenes default": (scenes.model, scenes.vocab, lambda: scenes.model.encode(pixels)),
        "transformer 6x512, random features": (
            big,
            big_vocab,
            lambda: EncoderOutput(features, None, features.mean(1)),
        ),
    }
    rows = []
    for model_name, (model, vocab, encode) in models.items():
        for reward_name, reward in rewards.items():
            embeddings = clip_embeddings if reward_name.startswith("CLIP") else None
            refs, ids = [r.captions for r in records], [r.image_id for r in records]
            batch = RewardBatch([""] * args.images * args.samples, refs, ids, None, embeddings)
            step = partial(step_phases, model, vocab, encode, batch, reward, args.samples)
            phases = median_phases(args.runs, step)
            total = sum(phases.values())
            rows.append((model_name, reward_name, phases, total))
            print(model_name, reward_name, {k: f"{v * 1000:.0f} ms" for k, v in phases.items()},
                  f"reward share {phases['reward'] / total:.1%}")  # fmt: skip
    write(args, rows)
    return 0


def write(args: argparse.Namespace, rows: list) -> None:
    lines = [
        "## SCST step breakdown",
        "",
        f"Command: `python bench/bench_scst.py --dataset {args.dataset}"
        + (f" --clip {args.clip}" if args.clip else "") + f" --runs {args.runs}`  ",
        f"Machine: {machine()}  ",
        f"B = {args.images} images x K = {args.samples} samples, max 16 words; "
        f"median of {args.runs} steps.",
        "",
        "| model | reward | sampling | greedy baseline | reward | backward | step | reward share |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for model_name, reward_name, p, total in rows:
        cells = [
            f"{p[k] * 1000:.0f} ms" for k in ("sampling", "greedy baseline", "reward", "backward")
        ]
        share = p["reward"] / total
        cells += [f"{total * 1000:.0f} ms", f"{share:.1%}"]
        lines.append(f"| {model_name} | {reward_name} | {' | '.join(cells)} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
