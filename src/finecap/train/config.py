"""Training configuration: one typed dataclass per concern, read from YAML.

A recipe file (see `configs/`) has the top-level sections `data`, `model`, `optim`,
`trainer`, `decoding` and, for self-critical training, `scst`. Unknown keys are errors that
name the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finecap.decoding import DecodingConfig
from finecap.models import ModelConfig


@dataclass
class DataConfig:
    dataset: str = ""
    """Dataset file (Karpathy JSON, COCO captions, Flickr8k token file, JSONL/CSV pairs)."""
    image_root: str | None = None
    """Folder the dataset's image paths are relative to (default: the dataset's folder)."""
    format: str | None = None
    """Dataset format name; None guesses it from the file."""
    train_split: str = "train"
    val_split: str = "val"
    min_word_count: int = 1
    """Words seen fewer times in the training captions become <unk> (5 for COCO)."""
    max_len: int = 20
    """Training captions are cut to this many words."""
    captions_per_image: int = 5
    """Captions decoded per encoded image in a batch (each image is encoded once)."""
    batch_size: int = 32
    """Images per batch (so batch_size * captions_per_image captions)."""
    val_images: int | None = None
    """Validate on the first N validation images only (None: all)."""
    num_workers: int = 0


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    """Linear warm-up from 0 to lr, then cosine decay to lr * min_lr_ratio."""
    min_lr_ratio: float = 0.1
    max_epochs: int = 20
    gradient_clip: float = 1.0
    label_smoothing: float = 0.0
    encoder_lr_scale: float = 1.0
    """Learning rate of a fine-tuned pretrained encoder relative to lr."""


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    """Lightning strategy, e.g. "ddp" for several GPUs."""
    precision: str = "32-true"
    logger: str = "csv"
    """csv or tensorboard."""
    val_every_n_epochs: int = 1
    threads: int | None = None
    """torch.set_num_threads; None leaves PyTorch's default."""
    select: str = "val_cider"
    """Which checkpoint becomes model/: "val_cider" (the best validation CIDEr-D) or "last".
    SCST recipes take the last: picking by CIDEr-D would undo what another reward taught."""

    def __post_init__(self) -> None:
        if self.select not in ("val_cider", "last"):
            raise ValueError(f"trainer.select must be val_cider or last, not {self.select!r}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    task: str = "mle"
    """Registered training task: mle or scst."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """Decoding used for validation captions."""
    scst: dict = field(default_factory=dict)
    """Self-critical settings, read by the scst task (see finecap.train.scst)."""


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Recursively build dataclass `cls` from a dict, rejecting unknown keys with their path."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        nested = _dataclass_in(hint)
        if nested is not None and value is not None:
            values[name] = build_dataclass(nested, value, f"{where}.{name}")
        else:
            values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)
    return None


def set_dotted(data: dict, assignment: str) -> None:
    """Apply a command-line override "optim.lr=1e-4" (the value is parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"override {assignment!r} must look like section.key=value")
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(raw)


def read_recipe(path: str | os.PathLike) -> dict:
    """The YAML of a recipe as a dict; `base: OTHER.yaml` (beside it) is read first and
    overridden section by section, so variants of a recipe state only what differs."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read config ({err})") from err
    base = data.pop("base", None)
    return _merge(read_recipe(path.parent / base), data) if base else data


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe; relative dataset paths are taken relative to the current folder."""
    data = read_recipe(path)
    for assignment in overrides:
        set_dotted(data, assignment)
    return build_dataclass(TrainConfig, data, str(path))


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
