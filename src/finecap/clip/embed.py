"""Hugging Face CLIP loading and embedding, shared by the evaluation suite and the rewards.

Embeddings are the *projected pooled* outputs (`image_embeds` / `text_embeds` of
`CLIPModel`), L2-normalised, as CLIP-S (Hessel et al. 2021) and Cho et al.'s retrieval
evaluation define them. Dimension letters: N items, P projection size.

Image embeddings of files are cached by (absolute path, mtime) in memory and, optionally,
in a safetensors file tagged with the model's fingerprint, so a second evaluation of the
same test split never re-encodes its images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from finecap.errors import UserError


class ClipUnavailableError(UserError, RuntimeError):
    """A CLIP could not be loaded; the message is one sentence saying what to do."""


@dataclass
class ClipBundle:
    """A CLIP model with the tokenizer and image processor saved beside it."""

    model: Any  # a CLIPModel or another dual encoder with its parts, in eval mode
    tokenizer: Any
    image_processor: Any
    name: str  # hub name or folder, as given by the user
    fingerprint: str  # changes when the weights change; tags on-disk caches

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_length(self) -> int:
        """Token budget of the text tower; longer captions are truncated (keeping EOS)."""
        positions = int(self.model.config.text_config.max_position_embeddings)
        return min(positions, int(getattr(self.tokenizer, "model_max_length", positions)))


DUAL_ENCODER_PARTS = (
    "vision_model",
    "visual_projection",
    "text_model",
    "text_projection",
    "logit_scale",
)


def _looks_like_folder(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def _offline_sentence(name: str) -> str:
    return (
        f'CLIP weights "{name}" are not available offline: download them on a machine with '
        f"internet (huggingface-cli download {name}) and pass the folder with --clip DIR"
    )


def _fingerprint(name: str) -> str:
    folder = Path(name).expanduser()
    parts = [name]
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            parts.append(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def load_clip(
    name_or_path: str | os.PathLike, device: str | torch.device = "cpu", local_files_only=None
) -> ClipBundle:
    """Load a CLIP in Hugging Face format from a hub name or a `save_pretrained` folder.

    Any Hugging Face image-text dual encoder with CLIP's parts (`vision_model` +
    `visual_projection`, `text_model` + `text_projection`, `logit_scale`) loads: a
    `CLIPModel` (openai/clip-vit-base-patch32, the ViT scenes CLIP), a
    `VisionTextDualEncoderModel`, or finecap's `ConvClipModel` (the ResNet scenes CLIP).

    Hub names are looked up in the local cache first; the network is tried only when that
    fails and `HF_HUB_OFFLINE` is not set (`local_files_only=True` never tries it).
    Raises `ClipUnavailableError` with one sentence when the weights are not there.
    """
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    import finecap.clip.conv_clip  # noqa: F401 (registers ConvClipModel with AutoModel)

    name = str(name_or_path)
    if _looks_like_folder(name):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ClipUnavailableError(
                f'CLIP folder "{name}" does not exist or holds no config.json: pass a folder '
                "written by save_pretrained (with its tokenizer and image processor)"
            )
        attempts = [True]
    else:
        from finecap.hub import offline

        attempts = [True] if (local_files_only or offline()) else [True, False]

    last_error: Exception | None = None
    for local_only in attempts:
        try:
            model = AutoModel.from_pretrained(name, local_files_only=local_only)
            _check_dual_encoder(model, name)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_only)
            break
        except (OSError, ValueError) as err:  # not cached / no network / not a repo id
            last_error = err
    else:
        if _looks_like_folder(name):
            raise ClipUnavailableError(
                f'CLIP folder "{name}" is incomplete ({last_error}): it needs the model, '
                "tokenizer and image processor files written by save_pretrained"
            ) from last_error
        raise ClipUnavailableError(_offline_sentence(name)) from last_error
    model.eval().to(device)
    return ClipBundle(model, tokenizer, processor, name, _fingerprint(name))


def _check_dual_encoder(model: Any, name: str) -> None:
    if not all(hasattr(model, part) for part in DUAL_ENCODER_PARTS):
        raise ClipUnavailableError(
            f'"{name}" is a {type(model).__name__}, not a CLIP-style image-text dual encoder '
            "(a CLIPModel, VisionTextDualEncoderModel or finecap ConvClipModel)"
        )


def _as_embeds(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is
    already projected (transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


class ClipEmbedder:
    """Batched, no-grad, L2-normalised CLIP embeddings of images and texts.

    `cache_file` (optional, safetensors) persists image embeddings of files between runs;
    call `save_cache()` after embedding to write it.
    """

    def __init__(
        self,
        bundle: ClipBundle,
        batch_size: int = 64,
        cache_file: str | os.PathLike | None = None,
    ) -> None:
        self.bundle = bundle
        self.batch_size = batch_size
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._cache: dict[str, torch.Tensor] = {}  # "abs path|mtime_ns" -> (P,)
        self._dirty = False
        if self.cache_file is not None and self.cache_file.is_file():
            self._load_cache()

    @property
    def device(self) -> torch.device:
        return next(self.bundle.model.parameters()).device

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (N, P) unit vectors."""
        model = self.bundle.model
        out = [torch.zeros(0, self.bundle.projection_dim)]
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixels = self.bundle.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            feats = _as_embeds(model.get_image_features(pixel_values=pixels.to(self.device)))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())  # (B, P)
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], prefix: str = "") -> torch.Tensor:
        """Texts (each prefixed with `prefix`) -> (N, P) unit vectors, truncated to the
        model's text length."""
        model, tok = self.bundle.model, self.bundle.tokenizer
        # Batch texts of similar length together (less padding), then restore the order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        out = [torch.zeros(0, self.bundle.projection_dim)]
        for start in range(0, len(texts), self.batch_size):
            batch = [prefix + t for t in texts[start : start + self.batch_size]]
            enc = tok(
                batch,
                padding=True,
                truncation=True,
                max_length=self.bundle.max_text_length,
                return_tensors="pt",
            )
            feats = _as_embeds(
                model.get_text_features(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                )
            )
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())  # (B, P)
        emb = torch.cat(out)
        return emb[torch.argsort(torch.tensor(order, dtype=torch.long))] if order else emb

    def embed_image_files(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Image files -> (N, P), reusing cached embeddings of unchanged files."""
        from finecap.data.images import load_image

        keys = [self._key(p) for p in paths]
        todo = sorted(
            {k: p for k, p in zip(keys, paths, strict=True) if k not in self._cache}.items()
        )
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            embeds = self.embed_images([load_image(p) for _, p in chunk])
            for (key, _), emb in zip(chunk, embeds, strict=True):
                self._cache[key] = emb
            self._dirty = True
        if not keys:
            return torch.zeros(0, self.bundle.projection_dim)
        return torch.stack([self._cache[k] for k in keys])

    def save_cache(self) -> None:
        """Write the image-embedding cache to `cache_file` (atomically) if it changed."""
        if self.cache_file is None or not self._dirty:
            return
        from safetensors.torch import save

        from finecap.io import atomic_write_bytes

        keys = sorted(self._cache)
        meta = {"fingerprint": self.bundle.fingerprint, "keys": json.dumps(keys)}
        embeds = torch.zeros(0, self.bundle.projection_dim)
        if keys:
            embeds = torch.stack([self._cache[k] for k in keys])  # (N, P)
        atomic_write_bytes(self.cache_file, save({"embeds": embeds.contiguous()}, metadata=meta))
        self._dirty = False

    def _load_cache(self) -> None:
        from safetensors import safe_open

        with safe_open(str(self.cache_file), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != self.bundle.fingerprint:
                return  # written by another CLIP: start afresh, overwrite on save
            embeds = f.get_tensor("embeds")
        self._cache = dict(zip(json.loads(meta["keys"]), embeds, strict=True))

    @staticmethod
    def _key(path: str | os.PathLike) -> str:
        p = Path(path).resolve()
        try:
            mtime = p.stat().st_mtime_ns
        except OSError:
            mtime = -1  # missing file: load_image will raise a clear error for it
        return f"{p}|{mtime}"
