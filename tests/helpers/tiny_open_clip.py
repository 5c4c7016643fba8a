"""A tiny random open_clip CLIP ResNet, written in open_clip's own layout.

`save_tiny_open_clip(folder)` writes `open_clip_config.json` ({"model_cfg", "preprocess_cfg"})
and `open_clip_model.safetensors` holding a whole CLIP's tensors under open_clip's names
(`visual.*` with the attention pool, a token embedding and logit scale standing in for the
text tower), so `encoder_config("open_clip", pretrained=folder)` goes through the loading
code a real `timm/resnet50_clip.openai` folder goes through.

Each tensor is drawn from a generator seeded by its name (and `seed`), not by module
construction order, so the weights are fixed by the checkpoint format alone: the pinned
reference outputs in tests/test_cho_recipes.py were computed from them by open_clip's own
`ModifiedResNet`.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from finecap.models.open_clip_encoder import CLIPResNetTrunk

TINY_VISION = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64}
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": TINY_VISION,
    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1},
}
TINY_GRID = 256  # 32 x width channels


def _draw(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 1000 * seed)
    if name.endswith("running_var"):
        return torch.rand(shape, generator=gen) + 0.5
    if name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", ".1.weight")):
        return 1.0 + 0.2 * torch.randn(shape, generator=gen)  # batch-norm scales
    fan_in = max(1, shape[1:].numel()) if len(shape) > 1 else 10
    return torch.randn(shape, generator=gen) / fan_in**0.5


def tiny_open_clip_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole tiny CLIP's tensors under open_clip's names."""
    names = CLIPResNetTrunk(TINY_VISION["layers"], TINY_VISION["width"]).state_dict()
    state = {
        f"visual.{k}": v.clone() if k.endswith("num_batches_tracked") else _draw(k, v.shape, seed)
        for k, v in names.items()
    }
    pool = {"positional_embedding": (5, TINY_GRID), "c_proj.weight": (16, TINY_GRID)}
    pool |= {f"{p}_proj.weight": (TINY_GRID, TINY_GRID) for p in "qkv"}
    pool |= {f"{p}_proj.bias": (TINY_GRID,) for p in "qkv"} | {"c_proj.bias": (16,)}
    for k, shape in pool.items():
        state[f"visual.attnpool.{k}"] = _draw(k, torch.Size(shape), seed)
    state["token_embedding.weight"] = _draw("token_embedding", torch.Size((32, 16)), seed)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


def save_tiny_open_clip(
    folder: str | Path, seed: int = 0, preprocess_cfg: dict | None = None
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tiny_open_clip_state(seed), folder / "open_clip_model.safetensors")
    config = {"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": preprocess_cfg or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder
