"""CLIP ResNet grid features from open_clip checkpoints (the features of Cho et al. 2022).

OpenAI's CLIP ResNets (Radford et al. 2021) are ResNets with a three-conv stem, anti-aliased
strides (an average pool before each strided 1x1) and an attention pool. Cho et al. caption
from the last stage's grid *before* the attention pool: CLIP RN50 at 448 x 448 px gives
14 x 14 regions of 2048 channels (their `scripts/clip_prepro_feats.py`).

open_clip keeps these weights by name (`RN50` / `openai` is the hub repo
`timm/resnet50_clip.openai`: `open_clip_config.json` + `open_clip_model.safetensors`). This
module reads that layout itself: `CLIPResNetTrunk` has open_clip's (and OpenAI's) parameter
names, so a checkpoint's `visual.*` tensors load into it strictly, the attention pool and the
text tower left out. open_clip is not imported: it imports torchvision, whose PyPI wheels do
not load beside the CPU build of torch that finecap installs.

Weights: an open_clip tag (`pretrained: openai` with `model: RN50`), a hub repo, a local
folder in that layout, or one weights file. Safetensors are read as they are; a `.bin` /
`.pt` state dict only with `torch.load(weights_only=True)` (never unpickled otherwise), and
a TorchScript archive (OpenAI's original `RN50.pt`) is refused.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from finecap.config import PositiveInt
from finecap.errors import UserError
from finecap.hub import WeightsNotFoundError, offline
from finecap.models.encoders import Encoder, EncoderConfig, register_encoder

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# open_clip's model_configs/NAME.json, vision towers only.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "RN50": {"layers": [3, 4, 6, 3], "width": 64, "image_size": 224},
    "RN101": {"layers": [3, 4, 23, 3], "width": 64, "image_size": 224},
    "RN50x4": {"layers": [4, 6, 10, 6], "width": 80, "image_size": 288},
    "RN50x16": {"layers": [6, 8, 18, 8], "width": 96, "image_size": 384},
    "RN50x64": {"layers": [3, 15, 36, 10], "width": 128, "image_size": 448},
}
# open_clip's pretrained tags of those (open_clip/pretrained.py): where their weights live.
HUB_REPOS: dict[tuple[str, str], str] = {
    ("RN50", "openai"): "timm/resnet50_clip.openai",
    ("RN50", "yfcc15m"): "timm/resnet50_clip.yfcc15m",
    ("RN50", "cc12m"): "timm/resnet50_clip.cc12m",
    ("RN101", "openai"): "timm/resnet101_clip.openai",
    ("RN101", "yfcc15m"): "timm/resnet101_clip.yfcc15m",
    ("RN50x4", "openai"): "timm/resnet50x4_clip.openai",
    ("RN50x16", "openai"): "timm/resnet50x16_clip.openai",
    ("RN50x64", "openai"): "timm/resnet50x64_clip.openai",
}


class OpenCLIPEncoderConfig(EncoderConfig):
    name: Literal["open_clip"] = "open_clip"
    model: str = "RN50"
    """open_clip architecture (RN50, RN101, RN50x4, RN50x16, RN50x64): with a tag as
    `pretrained`, the weights to fetch; otherwise the architecture of a bare weights file or
    a random trunk, unless open_clip_config gives one."""
    pretrained: str | None = None
    """An open_clip tag (`openai`, fetched from the Hugging Face hub as open_clip does), a hub
    repo (`timm/resnet50_clip.openai`), a local folder with open_clip_config.json and
    open_clip_model.safetensors, or one weights file (.safetensors; a .bin state dict is read
    with weights_only). None: random weights."""
    open_clip_config: dict[str, Any] = {}
    """An open_clip model config (`{"vision_cfg": {"layers": [1, 1, 1, 1], "width": 8,
    "image_size": 64}}`) for a random trunk (tests) or a bare weights file; {}: `model`'s."""
    image_size: PositiveInt | None = None
    """Input side in pixels (the grid is image_size / 32 on a side); None: the model config's
    vision_cfg.image_size (224 for RN50). Cho et al.: 448, a 14 x 14 grid."""
    resize_mode: Literal["shortest", "squash"] | None = None
    """`shortest` (open_clip's eval transform: shortest side to image_size, centre crop) or
    `squash` (both sides to image_size, aspect ignored: Cho et al.'s Resize((448, 448)));
    None: the checkpoint's preprocess_cfg (shortest when it has none)."""


class CheckpointFormatError(UserError, ValueError):
    """An open_clip checkpoint or config that is not one this encoder can read."""


# --------------------------------------------------------------------------- the trunk


class Bottleneck(nn.Module):
    """CLIP's ResNet block: 1x1, 3x3, an average pool when strided, 1x1 to 4x the width; the
    shortcut pools before its 1x1 as well (anti-aliased strides, no strided convolutions)."""

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride > 1 or c_in != c_out:  # keys "-1", "0", "1": the checkpoints' names
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(c_in, c_out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(c_out)),
                    ]
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CLIPResNetTrunk(nn.Module):
    """CLIP's ModifiedResNet up to its last stage: pixels (B, 3, S, S) -> (B, 32 w, S/32, S/32).

    The attention pool is left out: its output is one vector per image, and its position
    embedding fixes the input size, which the grid does not need."""

    def __init__(self, layers: list[int], width: int) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2, self.bn2 = nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        c_in = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(c_in, planes, stride)]
            stage += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            c_in = planes * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = c_in

    def forward(self, pixels: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(pixels)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))  # (B, w, S/4, S/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32 w, S/32, S/32)


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class OpenCLIPPreprocess:
    """open_clip's eval transform (`image_transform_v2`, is_train=False) for the `shortest`
    and `squash` resize modes: RGB, resize, centre crop, [0, 1], normalise."""

    size: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: Literal["shortest", "squash"] = "shortest"

    def _resize(self, image: Image.Image) -> Image.Image:
        s = self.size
        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
        image = image.convert("RGB")
        if self.resize_mode == "squash":
            return image.resize((s, s), resample[self.interpolation])
        w, h = image.size  # torchvision's Resize(int): the short side to s, the long truncated
        new = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        image = image.resize(new, resample[self.interpolation])
        left, top = int(round((new[0] - s) / 2.0)), int(round((new[1] - s) / 2.0))
        return image.crop((left, top, left + s, top + s))

    def __call__(self, images: list[Image.Image]) -> Tensor:
        arrays = [np.asarray(self._resize(img), np.float32) for img in images]
        # contiguous: a channels-last view makes torch 2.13's CPU conv backward segfault.
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() / 255.0
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # (B, 3, S, S)

    def to_json_string(self) -> str:
        """The settings, as image processors give theirs (feature stores fingerprint them)."""
        return json.dumps(asdict(self), sort_keys=True)


# --------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """What a `pretrained` source gives: open_clip's model and preprocess configs, and the
    weights file (None: random weights, or a saved captioner's, loaded after)."""

    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    weights: Path | None


def _architecture(config: OpenCLIPEncoderConfig) -> dict[str, Any]:
    if config.open_clip_config:
        return dict(config.open_clip_config)
    model = config.model.removesuffix("-quickgelu")  # QuickGELU is in the text tower only
    if model not in ARCHITECTURES:
        raise CheckpointFormatError(
            f"open_clip model {config.model!r} is not a CLIP ResNet finecap knows "
            f"({', '.join(ARCHITECTURES)}): give its open_clip_config or a folder with "
            f"{CONFIG_FILE}"
        )
    return {"vision_cfg": dict(ARCHITECTURES[model])}


def _read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """open_clip_config.json -> (model_cfg, preprocess_cfg); a bare model config works too."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointFormatError(f"{path}: not an open_clip config ({err})") from None
    return data.get("model_cfg", data), data.get("preprocess_cfg", {})


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise WeightsNotFoundError(
        f"{folder}: no open_clip weights ({' or '.join(WEIGHT_FILES)}) in the folder"
    )


def _from_hub(repo: str, config: OpenCLIPEncoderConfig, tagged: bool) -> Checkpoint:
    from huggingface_hub import hf_hub_download

    local_only = offline()

    def fetch(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=local_only))
        except Exception:  # noqa: BLE001 (hub, cache and network errors all mean "not here")
            return None

    # A tag names open_clip's built-in architecture, as open_clip builds it; a repo its config.
    config_file = None if tagged else fetch(CONFIG_FILE)
    weights = next((p for p in map(fetch, WEIGHT_FILES) if p is not None), None)
    if weights is None or (not tagged and config_file is None):
        raise WeightsNotFoundError(
            f"CLIP {config.model} weights {config.pretrained!r} (open_clip's hub repo {repo}) "
            f"are not available{' offline' if local_only else ''}: download them on a machine "
            f"with internet (`huggingface-cli download {repo} --local-dir DIR`) and pass "
            f"pretrained: DIR instead of {config.pretrained!r}."
        )
    if config_file is None:
        return Checkpoint(_architecture(config), {}, weights)
    return Checkpoint(*_read_config(config_file), weights)


def find_checkpoint(config: OpenCLIPEncoderConfig, backbone_dir: Path | None) -> Checkpoint:
    """Resolve `pretrained` (or a saved captioner's backbone/ folder) to configs + weights."""
    if backbone_dir is not None:  # a saved captioner: the architecture only
        return Checkpoint(*_read_config(backbone_dir / CONFIG_FILE), None)
    if config.pretrained is None:
        return Checkpoint(_architecture(config), {}, None)
    path = Path(config.pretrained)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return Checkpoint(*_read_config(path / CONFIG_FILE), _weights_in(path))
        return Checkpoint(_architecture(config), {}, _weights_in(path))
    if path.is_file():
        beside = path.parent / CONFIG_FILE
        if beside.is_file() and not config.open_clip_config:
            return Checkpoint(*_read_config(beside), path)
        return Checkpoint(_architecture(config), {}, path)
    tag = (config.model.removesuffix("-quickgelu"), config.pretrained)
    if tag in HUB_REPOS:
        return _from_hub(HUB_REPOS[tag], config, tagged=True)
    if config.pretrained.count("/") == 1 and not config.pretrained.startswith((".", "/")):
        return _from_hub(config.pretrained, config, tagged=False)
    known = ", ".join(t for m, t in HUB_REPOS if m == tag[0]) or "none"
    raise WeightsNotFoundError(
        f"open_clip weights {config.pretrained!r}: not a folder, a file, a hub repo or a tag "
        f"of {config.model} (its tags: {known})"
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A weights file's tensors: safetensors, or a plain state dict read with weights_only."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if path.suffix not in (".bin", ".pt", ".pth"):
        raise CheckpointFormatError(f"{path}: open_clip weights must be .safetensors or .bin")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (TorchScript archives and pickled objects)
        raise CheckpointFormatError(
            f"{path}: not a plain state dict finecap can read without unpickling ("
            f"{str(err).strip().splitlines()[0][:120]}): use the hub's open_clip_model."
            "safetensors, or load it with open_clip and save its state_dict as safetensors"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def trunk_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A whole CLIP's (or its vision tower's) tensors -> the trunk's: `visual.` stripped, the
    attention pool and the text tower left out."""
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return {k: v for k, v in state.items() if not k.startswith("attnpool.")}


# --------------------------------------------------------------------------- the encoder


@register_encoder("open_clip", config=OpenCLIPEncoderConfig)
class OpenCLIPGrid(Encoder):
    """A CLIP ResNet's last-stage grid, before the attention pool: (B, (S/32)^2, 32 w)."""

    def __init__(self, config: OpenCLIPEncoderConfig, backbone_dir: Path | None = None) -> None:
        super().__init__(config)
        checkpoint = find_checkpoint(config, backbone_dir)
        vision = checkpoint.model_cfg.get("vision_cfg", {})
        layers = vision.get("layers")
        if not (isinstance(layers, list | tuple) and len(layers) == 4):
            raise CheckpointFormatError(
                f"open_clip model {config.model!r}: vision_cfg.layers is {layers!r}, not the 4 "
                "stage depths of a CLIP ResNet (for a CLIP ViT use the `clip` encoder)"
            )
        self.trunk = CLIPResNetTrunk(list(layers), int(vision.get("width", 64)))
        if checkpoint.weights is not None:
            self._load(checkpoint.weights)
        self.model_cfg, self.preprocess_cfg = checkpoint.model_cfg, checkpoint.preprocess_cfg
        self.processor = self._preprocessing(config, vision, checkpoint.preprocess_cfg)
        self.feature_dim = self.trunk.channels
        self._freeze_if_asked(self.trunk)

    def _load(self, path: Path) -> None:
        state, own = trunk_state(read_state_dict(path)), self.trunk.state_dict()
        faults = [f"missing {k}" for k in own if k not in state]
        faults += [f"unexpected {k}" for k in state if k not in own]
        faults += [
            f"{k} is {tuple(state[k].shape)}, not {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if faults:
            raise CheckpointFormatError(
                f"{path}: not the weights of this CLIP ResNet ({', '.join(faults[:3])}"
                f"{', ...' if len(faults) > 3 else ''})"
            )
        self.trunk.load_state_dict(state)

    @staticmethod
    def _preprocessing(
        config: OpenCLIPEncoderConfig, vision: dict, saved: dict
    ) -> OpenCLIPPreprocess:
        mode = config.resize_mode or saved.get("resize_mode", "shortest")
        interpolation = saved.get("interpolation", "bicubic")
        if mode not in ("shortest", "squash") or interpolation not in ("bicubic", "bilinear"):
            raise CheckpointFormatError(
                f"open_clip preprocessing {mode!r} / {interpolation!r} is not one finecap "
                "implements: set model.encoder.resize_mode to shortest or squash"
            )
        return OpenCLIPPreprocess(
            size=config.image_size or int(vision.get("image_size", 224)),
            mean=tuple(saved.get("mean", OPENAI_MEAN)),
            std=tuple(saved.get("std", OPENAI_STD)),
            interpolation=interpolation,
            resize_mode=mode,
        )

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return self.processor(images)

    @property
    def input_side(self) -> int:
        return self.processor.size

    def backbone(self, pixels: Tensor) -> Tensor:
        grid = self.trunk(pixels)  # (B, D, h, w)
        return grid.flatten(2).transpose(1, 2)  # (B, R = h*w, D)

    def save_backbone_config(self, folder: Path) -> None:
        """open_clip_config.json (not the weights): a saved captioner rebuilds the trunk offline."""
        folder.mkdir(parents=True, exist_ok=True)
        data = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg}
        (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2))
