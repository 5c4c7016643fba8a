"""Vision-only diagnostic: can a vision tower learn the scenes world's shapes in N steps?

Trains a tower + two linear heads with the labels given directly: the salient object's shape
from the pooled feature, and every patch's shape ("none" for background; the labels of
`finecap.clip.dense.patch_labels`), then reports both accuracies on the validation split.

    python scripts/vision_probe.py DATASET.json --tower vit --patch 12 --steps 600
    python scripts/vision_probe.py DATASET.json --tower cnn --steps 1600

`--tower vit`: `transformers.CLIPVisionModel` (the scenes CLIP's vision tower); `--mimetic`
initialises its attention as Trockman & Kolter (2023) do, with 2-D sin-cos positions.
`--tower cnn`: finecap's `SmallCNN` (the captioner's encoder; 12 x 12 grid, so use --patch 8).
`--tower resnet`: `transformers.ResNetModel`, basic blocks, widths width/4, width/2, width
(the ResNet scenes CLIP's tower; 6 x 6 grid at 96 px, so --patch 16; `--no-stem-pool` drops the
stem's max pool: a 12 x 12 grid, --patch 8).
`--tower convnext`: `transformers.ConvNextModel`, three stages, stem stride --stem.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from finecap.clip.dense import patch_labels
from finecap.scenes.world import SHAPES, Scene, salient_object


def load(dataset: Path, patch: int):
    doc = json.loads(dataset.read_text())
    images, salient, train, scenes = [], [], [], []
    for entry in doc["images"]:
        path = dataset.parent / entry.get("filepath", "images") / entry["filename"]
        images.append(np.asarray(Image.open(path).convert("RGB")))
        scene = Scene.from_dict(entry["scene"])
        scenes.append(scene)
        salient.append(SHAPES.index(scene.objects[salient_object(scene)].shape))
        train.append(entry["split"] == "train")
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    side = x.shape[-1]
    patches = torch.stack([patch_labels(s, side // patch, side)[:, 0] for s in scenes])  # (B, N)
    is_train = torch.tensor(train)
    val = (~is_train).nonzero().squeeze(1)[:500]
    return x, torch.tensor(salient), patches, is_train.nonzero().squeeze(1), val


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(float(grid)), torch.arange(float(grid)),
                          indexing="ij")  # fmt: skip
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    y, x = y.flatten()[:, None] * omega, x.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)  # (N, dim)


def _factor(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(m)
    r = s[:rank].sqrt()
    return (u[:, :rank] * r).T, (vh[:rank].T * r).T  # A, B (rank, d) with A^T B ~ m


@torch.no_grad()
def mimetic_init(tower, grid: int) -> None:
    """W_q^T W_k ~ 0.7 Z + 0.7 I per head, W_v^T W_o^T ~ 0.4 Z - 0.4 I; sin-cos positions."""
    emb = tower.embeddings
    d = emb.position_embedding.weight.shape[1]
    emb.position_embedding.weight[1:] = sincos_2d(grid, d)
    emb.position_embedding.weight[0] = 0
    for layer in tower.encoder.layers:
        att, heads = layer.self_attn, tower.config.num_attention_heads
        dh = d // heads
        for h in range(heads):
            qa, kb = _factor(0.7 * torch.randn(d, d) / math.sqrt(d) + 0.7 * torch.eye(d), dh)
            att.q_proj.weight[h * dh : (h + 1) * dh] = qa * dh**0.25
            att.k_proj.weight[h * dh : (h + 1) * dh] = kb * dh**0.25
        va, ob = _factor(0.4 * torch.randn(d, d) / math.sqrt(d) - 0.4 * torch.eye(d), d)
        att.v_proj.weight[:] = va
        att.out_proj.weight[:] = ob.T


def build(args, side: int):
    """(module, features(x) -> (pooled (B, H), patches (B, N, H)))."""
    if args.tower == "cnn":
        from finecap.models.encoders import SmallCNN, SmallCNNConfig

        net = SmallCNN(SmallCNNConfig(width=args.width, image_size=side))
        return net, lambda x: (lambda f: (f.mean(1), f))(net.backbone(x))
    if args.tower == "convnext":
        from transformers import ConvNextConfig, ConvNextModel

        widths = [args.width // 4, args.width // 2, args.width]
        config = ConvNextConfig(num_stages=3, patch_size=args.stem, hidden_sizes=widths,
                                depths=args.depths, layer_scale_init_value=args.layer_scale,
                                drop_path_rate=0.0, image_size=side)  # fmt: skip
        net = ConvNextModel(config)

        def conv_features(x):
            out = net(pixel_values=x)
            return out.pooler_output, out.last_hidden_state.flatten(2).transpose(1, 2)

        return net, conv_features
    if args.tower == "resnet":
        from transformers import ResNetConfig, ResNetModel

        widths = [args.width // 4, args.width // 2, args.width]
        config = ResNetConfig(embedding_size=32, hidden_sizes=widths, depths=args.depths,
                              layer_type="basic", downsample_in_first_stage=False)  # fmt: skip
        net = ResNetModel(config)
        if args.no_stem_pool:  # stride 2 instead of 4: a 12 x 12 grid at 96 px (--patch 8)
            net.embedder.pooler = nn.Identity()

        def res_features(x):
            out = net(pixel_values=x)
            return out.pooler_output.flatten(1), out.last_hidden_state.flatten(2).transpose(1, 2)

        return net, res_features
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=args.width, intermediate_size=4 * args.width,
                              num_hidden_layers=args.layers, num_attention_heads=4,
                              image_size=side, patch_size=args.patch)  # fmt: skip
    net = CLIPVisionModel(config)
    if args.mimetic:
        mimetic_init(net, side // args.patch)

    def features(x):
        out = net(pixel_values=x)
        return out.pooler_output, out.last_hidden_state[:, 1:]

    return net, features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--tower", choices=("vit", "cnn", "convnext", "resnet"), default="vit")
    parser.add_argument("--stem", type=int, default=2, help="convnext stem stride")
    parser.add_argument("--depths", type=int, nargs=3, default=[2, 2, 4], help="convnext")
    parser.add_argument("--layer-scale", type=float, default=1e-6, help="convnext")
    parser.add_argument("--patch", type=int, default=12, help="ViT patch side (cnn: 8)")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mimetic", action="store_true")
    parser.add_argument("--no-stem-pool", action="store_true", help="resnet: no stem max pool")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x, salient, patches, train, val = load(args.dataset, args.patch)
    net, features = build(args, x.shape[-1])
    head, patch_head = nn.Linear(args.width, len(SHAPES)), nn.Linear(args.width, len(SHAPES) + 1)
    params = [*net.parameters(), *head.parameters(), *patch_head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        net.eval()
        right = patch_right = patch_n = 0
        for i in range(0, len(val), 100):
            idx = val[i : i + 100]
            pooled, tokens = features(x[idx])
            right += (head(pooled).argmax(1) == salient[idx]).sum().item()
            labels = patches[idx]
            on = labels > 0  # patches on an object
            patch_right += (patch_head(tokens).argmax(-1)[on] == labels[on]).sum().item()
            patch_n += on.sum().item()
        net.train()
        return right / len(val), patch_right / patch_n

    start = time.time()
    for step in range(1, args.steps + 1):
        idx = train[torch.randint(len(train), (args.batch_size,))]
        pooled, tokens = features(x[idx])
        loss = F.cross_entropy(head(pooled), salient[idx])
        loss = loss + F.cross_entropy(patch_head(tokens).flatten(0, 1), patches[idx].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, args.steps // 8) == 0 or step == args.steps:
            acc, patch_acc = evaluate()
            took = time.time() - start
            print(f"step {step}: loss {loss.item():.3f}, salient shape {acc:.1%}, "
                  f"patch shape {patch_acc:.1%} ({took:.0f} s)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
