"""Diagnostic: what a scenes CLIP's image tower keeps, by linear probes on frozen features.

Logistic regressions (L-BFGS, L2 1e-3, standardised features) fitted on the first --train
training images and scored on the first --test validation images:

- pooled: the image vector before the projection (what every CLIP score reads) -> the salient
  object's shape and colour;
- grid: the tower's last grid (a ResNet's (C, g, g) map), on the cells whose centre lies on an
  object (`finecap.clip.dense.patch_labels`) -> that object's shape.

    python scripts/clip_linear_probe.py CLIP_DIR DATASET.json

Chance: 12.5 % for a shape, 10 % for a colour. A ResNet tower only (`--tower resnet`).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from finecap.clip import load_clip
from finecap.clip.dense import patch_labels
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.scenes.world import COLORS, SHAPES, as_scene, salient_object


@torch.no_grad()
def features(bundle, corpus, records) -> tuple:  # noqa: ANN001
    """(pooled (B, C), grid cells on objects (M, C), their shape ids (M,), the B scenes)."""
    pooled, cells, shapes, scenes = [], [], [], []
    for start in range(0, len(records), 100):
        chunk = records[start : start + 100]
        images = [load_image(corpus.image_path(r)) for r in chunk]
        pixels = bundle.image_processor(images=images, return_tensors="pt")["pixel_values"]
        out = bundle.model.vision_model(pixel_values=pixels)
        grid = out.last_hidden_state  # (B, C, g, g)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, g*g, C)
        chunk_scenes = [as_scene(r.extra["scene"]) for r in chunk]
        side = pixels.shape[-1]
        labels = torch.stack([patch_labels(s, grid.shape[-1], side)[:, 0] for s in chunk_scenes])
        on = labels > 0  # class 0: no object under the cell
        pooled.append(out.pooler_output)
        cells.append(tokens[on])
        shapes.append(labels[on] - 1)
        scenes.extend(chunk_scenes)
    return torch.cat(pooled), torch.cat(cells), torch.cat(shapes), scenes


def probe_accuracy(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
) -> float:
    """Accuracy of a multinomial logistic regression fitted on (x_train, y_train)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1
    weight = torch.zeros(x_train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, y_train) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (x_test @ weight + bias).argmax(1).eq(y_test).float().mean().item()


def salient(scenes: list, name: str, vocab: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([vocab.index(getattr(s.objects[salient_object(s)], name)) for s in scenes])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("dataset")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle, corpus = load_clip(args.clip), load_corpus(args.dataset)
    train = features(bundle, corpus, corpus.split("train")[: args.train])
    test = features(bundle, corpus, corpus.split("val")[: args.test])
    for name, vocab in (("shape", SHAPES), ("color", COLORS)):
        acc = probe_accuracy(train[0], salient(train[3], name, vocab),
                             test[0], salient(test[3], name, vocab))  # fmt: skip
        print(f"pooled vector -> salient {name}: {acc:.1%}")
    acc = probe_accuracy(train[1], train[2], test[1], test[2])
    print(f"grid cells on an object -> its shape: {acc:.1%} of {len(test[2])} cells")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
