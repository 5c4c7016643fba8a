"""The feature store: what a frozen encoder and CLIPs compute for every image, on disk once.

Training (`data.features`), the CLIP rewards (`features:` of a reward term), `finecap
evaluate --features` and `reproduce` read it instead of running the encoder or the CLIP over
the images again every epoch, as the self-critical codebases do with their precomputed
bottom-up / ResNet / CLIP features.

Layout of a store folder (`finecap features extract` writes it, `finecap.features.extract`):

    plan.json                what is extracted: the images (ids, in order), shard size, dtype,
                             the encoder (config + fingerprint) and the CLIPs (name +
                             fingerprint); written first, the same for every part of the work
    shards/00000.safetensors one file per `shard_size` consecutive images of the plan, written
                             atomically (a kill leaves complete shards, never a torn one):
                               regions (N, R, D)  the encoder's backbone features
                               pooled  (N, D)     their mean (the encoder's pooled feature)
                               clip/K  (N, P)     unit image embeddings of the plan's CLIP K
                             metadata: the plan's hash and the shard's image ids
    index.json               written once every shard is there (the merge): the plan's
                             description, the shapes, and {image id: [shard, row]}

A store is identified by fingerprints of what made it (`encoder_fingerprint`,
`clip_fingerprint`: the weights that compute the features, hashed, plus preprocessing), so a
store made by another encoder or CLIP is refused, naming both (`ForeignStoreError`); a CLIP
fine-tuned with its vision tower frozen (the grammar head's) has the base CLIP's fingerprint.

Reads are lazy: each shard's tensors are numpy memory maps at their offsets in the
safetensors file, so `regions(ids)` copies only the rows asked for (from the page cache once
read) and nothing holds all features in memory. Dimension letters: N images, R regions,
D feature size, P CLIP projection size.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finecap.errors import UserError
from finecap.io import FOLDER_MODE

FORMAT = 1
PLAN, INDEX, SHARDS = "plan.json", "index.json", "shards"
_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None}


class StoreError(UserError, ValueError):
    """A feature store that is missing, incomplete or does not fit the request."""


class ForeignStoreError(StoreError):
    """A store made by another encoder or CLIP than the one asking for its features."""


# --------------------------------------------------------------------------- fingerprints


def module_digest(module: nn.Module) -> str:
    """sha256 of a module's state (names, shapes, dtypes and bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _processor_settings(processor: Any) -> dict | None:
    """An image processor's settings without its class name (a fast and a slow processor of
    the same settings preprocess alike)."""
    if processor is None:
        return None
    settings = json.loads(processor.to_json_string())
    return {
        k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")
    }


def _short_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def encoder_fingerprint(encoder: nn.Module) -> dict:
    """What determines an encoder's backbone features: its kind, input size, preprocessing
    and weights (hashed); `hash` names it. The config is recorded beside it for people."""
    parts = {
        "name": encoder.config.name,
        "input_side": int(encoder.input_side),
        "preprocessing": _processor_settings(getattr(encoder, "processor", None)),
        "weights": module_digest(encoder),
    }
    return {**parts, "hash": _short_hash(parts), "config": encoder.config.to_dict()}


def clip_fingerprint(bundle: Any) -> str:
    """What determines a CLIP's image embeddings (`finecap.clip.ClipBundle`): the vision
    tower, its projection and the image processor."""
    model = bundle.model
    vision = nn.ModuleDict({"vision": model.vision_model, "projection": model.visual_projection})
    parts = {
        "weights": module_digest(vision),
        "preprocessing": _processor_settings(bundle.image_processor),
    }
    return _short_hash(parts)


def plan_hash(plan: dict) -> str:
    return _short_hash(plan)


# --------------------------------------------------------------------------- shard files


def shard_name(k: int) -> str:
    return f"{k:05d}.safetensors"


def write_shard(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write one shard atomically: a temporary file in the same folder, fsynced, renamed."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FOLDER_MODE & 0o666)  # what open() would have given (umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_header(path: Path) -> tuple[dict, dict, int]:
    """A safetensors file's (tensor entries, metadata, offset of its byte buffer)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + size


def memory_map(path: Path) -> dict[str, np.memmap]:
    """Every tensor of a safetensors file as a read-only numpy memory map (no copy)."""
    header, _, start = read_header(path)
    maps = {}
    for name, entry in header.items():
        dtype = _NUMPY.get(entry["dtype"])
        if dtype is None:
            raise StoreError(f"{path}: tensor {name} has dtype {entry['dtype']}, not readable")
        begin, _ = entry["data_offsets"]
        shape = tuple(entry["shape"])
        maps[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
    return maps


def complete_shard(path: Path, plan_id: str, ids: Sequence[Any]) -> bool:
    """Whether `path` is a whole shard of this plan holding exactly these images."""
    if not path.is_file():
        return False
    try:
        _, metadata, _ = read_header(path)
    except (OSError, ValueError, struct.error):
        return False
    return metadata.get("plan") == plan_id and json.loads(metadata.get("ids", "null")) == list(ids)


# --------------------------------------------------------------------------- reading


def _describe_encoder(fp: dict) -> str:
    config = fp.get("config", {})
    source = config.get("pretrained") or "random or trained weights"
    return f"{fp['name']} ({source}; weights {fp['weights'][:12]}, input {fp['input_side']} px)"


class FeatureStore:
    """A complete store, read lazily. `regions(ids)` (B, R, D), `pooled(ids)` (B, D) and
    `clip_embeddings(ids, fingerprint)` (B, P) copy the rows of the given image ids."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        index_file = self.folder / INDEX
        if not index_file.is_file():
            plan = self.folder / PLAN
            hint = (
                "its extraction is unfinished: run `finecap features extract` again with the "
                "same options (or --merge once every --shard part is done)"
                if plan.is_file()
                else "make one with `finecap features extract`"
            )
            raise StoreError(f"{self.folder}: not a finished feature store ({hint})")
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            self.encoder: dict | None = index["encoder"]
            self.clips: dict[str, dict] = index["clips"]  # key -> {name, fingerprint, dim}
            self.dtype: str = index["dtype"]
            self.rows: dict[str, tuple[int, int]] = {
                k: tuple(v) for k, v in index["images"].items()
            }
            self.shards: list[str] = index["shards"]
            self.shapes: dict[str, list[int]] = index["shapes"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{index_file}: unreadable store index ({err!r})") from None
        if index.get("format") != FORMAT:
            raise StoreError(f"{index_file}: store format {index.get('format')}, not {FORMAT}")
        self._maps: dict[int, dict[str, np.memmap]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, image_id: Any) -> bool:
        return str(image_id) in self.rows

    def missing(self, ids: Sequence[Any]) -> list[Any]:
        return [i for i in ids if str(i) not in self.rows]

    def _shard(self, k: int) -> dict[str, np.memmap]:
        if k not in self._maps:
            self._maps[k] = memory_map(self.folder / SHARDS / self.shards[k])
        return self._maps[k]

    def _gather(self, tensor: str, ids: Sequence[Any]) -> np.ndarray:
        """Rows of `tensor` for `ids`, in order, read a shard at a time."""
        absent = self.missing(ids)
        if absent:
            shown = ", ".join(map(str, absent[:5])) + (" ..." if len(absent) > 5 else "")
            raise StoreError(
                f"{self.folder}: {len(absent)} images are not in the feature store ({shown}); "
                "extract them (finecap features extract --split ...)"
            )
        places = [self.rows[str(i)] for i in ids]
        dtype = np.float32 if tensor.startswith("clip/") else np.dtype(self.dtype)
        out = np.empty((len(ids), *self.shapes[tensor]), dtype=dtype)
        by_shard: dict[int, list[int]] = {}
        for position, (k, _) in enumerate(places):
            by_shard.setdefault(k, []).append(position)
        for k, positions in by_shard.items():
            rows = [places[p][1] for p in positions]
            out[positions] = self._shard(k)[tensor][rows]
        return out

    def regions(self, ids: Sequence[Any]) -> np.ndarray:
        """(B, R, D) stored backbone features of these images, in the store's dtype."""
        self._need_encoder()
        return self._gather("regions", ids)

    def pooled(self, ids: Sequence[Any]) -> np.ndarray:
        """(B, D) the encoder's pooled feature (mean of the regions)."""
        self._need_encoder()
        return self._gather("pooled", ids)

    def clip_key(self, fingerprint: str, name: str) -> str:
        """The store's key of the CLIP with this fingerprint; refuses another CLIP's store."""
        for key, clip in self.clips.items():
            if clip["fingerprint"] == fingerprint:
                return key
        held = "; ".join(f"{c['name']} ({c['fingerprint']})" for c in self.clips.values())
        raise ForeignStoreError(
            f"{self.folder}: holds image embeddings of {held or 'no CLIP'}, not of CLIP {name} "
            f"({fingerprint}); extract them with `finecap features extract --clip {name} "
            "--out NEW_DIR ...` (a store is tied to the CLIP that made it)"
        )

    def clip_embeddings(self, ids: Sequence[Any], key: str) -> np.ndarray:
        """(B, P) unit image embeddings of the CLIP stored under `key` (`clip_key`)."""
        return self._gather(f"clip/{key}", ids)

    def _need_encoder(self) -> None:
        if self.encoder is None:
            raise StoreError(
                f"{self.folder}: holds CLIP embeddings only (extracted without --config or "
                "--model), no encoder features"
            )

    def check_encoder(self, encoder: nn.Module, what: str = "this run's encoder") -> None:
        """Refuse the store unless `encoder` is frozen and made exactly its features."""
        self._need_encoder()
        if not frozen_throughout(encoder.config):
            raise StoreError(frozen_only(what))
        mine = encoder_fingerprint(encoder)
        if mine["hash"] != self.encoder["hash"]:
            raise ForeignStoreError(
                f"{self.folder}: made by encoder {_describe_encoder(self.encoder)} "
                f"[{self.encoder['hash']}], not by {what}, {_describe_encoder(mine)} "
                f"[{mine['hash']}]; extract a store with this encoder (--out NEW_DIR)"
            )


def frozen_throughout(config: Any) -> bool:
    """Whether an encoder's settings keep its weights fixed for the whole run."""
    return bool(config.freeze) and getattr(config, "unfreeze_after_epochs", None) is None


def frozen_only(what: str) -> str:
    return (
        f"{what} is trained (freeze: false, or unfreeze_after_epochs set), so its features "
        "change during training and a store of them would go stale: a feature store only "
        "serves a frozen encoder (model.encoder.freeze: true, as the COCO ResNet-50 and CLIP "
        "recipes have)"
    )


def open_store(folder: str | os.PathLike) -> FeatureStore:
    return FeatureStore(folder)


def torch_rows(array: np.ndarray) -> torch.Tensor:
    """Stored rows as a float32 tensor (float16 stores are widened for the model)."""
    return torch.from_numpy(np.asarray(array, dtype=np.float32))
