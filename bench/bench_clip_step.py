"""One scenes-CLIP training step in float32 and in bfloat16 autocast, for both towers (what
`--precision bf16-mixed` does) and for each tower alone.

    python bench/bench_clip_step.py --dataset data/scenes/dataset.json [--runs 7]

The model is the recipe's ResNet CLIP (gated pool with coordinates, the 4-layer text tower);
the batch is 64 training images with their texts drawn as training draws them (30 % short
descriptions, every description's hard negative) and the dense labels. A step is the forward
pass of both towers, the contrastive, pairwise and dense losses, and the backward pass; the
optimiser step is left out (the same in all). Median of --runs steps after two warm-ups, the
settings taken in turn.
Writes bench/results/clip_step.md. bfloat16 pays where the CPU multiplies bfloat16 in
hardware (AMX or AVX-512 BF16); elsewhere it can be slower than float32.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from finecap.clip.config import ClipTrainConfig, ScenesClipConfig
from finecap.clip.data import ImageTextPairs, RecordPixels, descriptions_of
from finecap.clip.dense import DenseHeads
from finecap.clip.tokenizer import train_bpe_tokenizer
from finecap.clip.towers import (
    build_image_processor,
    build_scenes_clip,
    encode_texts,
    patch_tokens,
    vision_grid,
)
from finecap.clip.train import clip_loss, pair_loss
from finecap.data.formats import load_corpus
from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]
# Which tower runs in bfloat16 autocast: (image, text).
PRECISIONS = {
    "float32": (False, False),
    "bfloat16 autocast, both towers": (True, True),
    "bfloat16 autocast, image tower only": (True, False),
    "bfloat16 autocast, text tower only": (False, True),
}


def make_step(dataset: str, batch_size: int):  # noqa: ANN201 (a closure)
    """A function timing one training step's forward and backward passes (given which towers
    run in bfloat16), and the number of texts in its batch."""
    corpus = load_corpus(dataset)
    records = corpus.split("train")[:512]
    arch = ScenesClipConfig(tower="resnet", conv_pool="gated", conv_coords=True)
    texts = [t for r in records for t in [*descriptions_of(r), *r.captions]]
    tokenizer = train_bpe_tokenizer(texts, arch.bpe_vocab_size, arch.max_text_length)
    model = build_scenes_clip(arch, tokenizer)
    cfg = ClipTrainConfig(short_prob=0.3, hard_negative_prob=1.0, dense_weight=8, pair_weight=1)
    grid = vision_grid(model.config.vision_config)
    pixels = RecordPixels(corpus, records, build_image_processor(arch.image_size))
    data = ImageTextPairs(pixels, records, cfg, grid)
    items = [data[i] for i in range(batch_size)]
    images = torch.stack([item[0] for item in items])
    positives = [item[1] for item in items]
    has_negative = torch.tensor([bool(item[2]) for item in items])
    negatives = [item[2] for item in items if item[2]]
    patch_labels = torch.stack([item[3]["patches"] for item in items])
    dense = DenseHeads(model.config.vision_config.hidden_size)

    def step(bf16: tuple[bool, bool]) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[0]):
            vision = model.vision_model(pixel_values=images)
            img = F.normalize(model.visual_projection(vision.pooler_output), dim=-1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[1]):
            both = encode_texts(model, tokenizer, [*positives, *negatives])
        img, both = img.float(), both.float()
        txt, neg = both[: len(positives)], both[len(positives) :]
        loss = clip_loss(img, txt, model.logit_scale, neg)
        loss = loss + pair_loss(img[has_negative], txt[has_negative], neg, model.logit_scale)
        patches = patch_tokens(vision.last_hidden_state).float()  # (B, N, H)
        loss = loss + 8 * dense.loss(patches, patch_labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        dense.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step, len(positives) + len(negatives)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(ROOT / "data/scenes/dataset.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench/results/clip_step.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    step, n_texts = make_step(args.dataset, args.batch_size)
    for bf16 in PRECISIONS.values():
        step(bf16), step(bf16)  # warm-up (oneDNN picks its kernels on the first calls)
    # Round-robin, so a slower minute of a shared machine falls on every setting alike.
    times: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for _ in range(args.runs):
        for name, bf16 in PRECISIONS.items():
            times[name].append(step(bf16))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name}: {median * 1000:.0f} ms per step")
    write(args, n_texts, medians)
    return 0


def write(args: argparse.Namespace, n_texts: int, medians: dict[str, float]) -> None:
    base = medians["float32"]
    lines = [
        "## Scenes CLIP training step: float32 vs bfloat16 autocast, per tower",
        "",
        f"Command: `python bench/bench_clip_step.py --dataset {args.dataset} --runs {args.runs}`  ",
        f"Machine: {machine()}  ",
        f"{args.batch_size} images, {n_texts} texts (descriptions and hard negatives), the "
        f"ResNet CLIP with the gated coordinate pool; forward + backward, median of "
        f"{args.runs} steps.",
        "",
        "| precision | ms per step | speed-up vs float32 |",
        "|---|---|---|",
        *(f"| {n} | {s * 1000:.0f} | {base / s:.2f}x |" for n, s in medians.items()),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
