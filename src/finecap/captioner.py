"""`Captioner`: the user-facing model — load, caption images, save.

A saved captioner is a folder: `config.json` (`{"format": 2, "model": ModelConfig, "finecap":
{...training facts}}`: what the model is, no machine paths), `model.safetensors` (weights),
`vocab.json`, and for a Hugging Face backbone `backbone/` (its config and image processor, so
the model rebuilds offline). Folders of format 1 (before the typed config layer; no `format`
key) still load. The CLI, trainer and reproduce pipeline all go through this class.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from finecap.config import ConfigError
from finecap.data.vocab import SPECIALS, Vocab
from finecap.decoding import Decoded, DecodingConfig, decode
from finecap.errors import MissingFileError, UserError
from finecap.io import FOLDER_MODE
from finecap.models import CaptionModel, ModelConfig
from finecap.models.encoders import HFImageEncoder

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"
CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "vocab.json"
BACKBONE_DIR = "backbone"
FORMAT = 2  # config.json layout; 1 = before the typed config layer (no "format" key)


class ModelFolderError(UserError, ValueError):
    """A captioner folder whose files are unreadable or do not fit together."""


@dataclass
class Caption:
    text: str
    words: list[str]
    score: float
    attention: Tensor | None = None  # (len(words) + 1, R): one map per word and for <eos>
    grid: tuple[int, int] | None = None  # (rows, cols) of the region grid, for plotting


class Captioner:
    def __init__(self, model: CaptionModel, vocab: Vocab) -> None:
        self.model = model
        self.vocab = vocab

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @classmethod
    def create(
        cls, config: ModelConfig, vocab: Vocab, backbone_dir: Path | None = None
    ) -> Captioner:
        return cls(CaptionModel(config, len(vocab), backbone_dir), vocab)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None) -> Captioner:
        """Load a saved captioner; None loads the bundled default scenes model."""
        folder = Path(folder) if folder is not None else DEFAULT_MODEL_DIR
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE) if not (folder / f).is_file()]
        if missing:
            raise MissingFileError(
                f"{folder}: not a finecap captioner folder (missing {', '.join(missing)})"
            )
        config = read_model_config(folder / CONFIG_FILE)
        # A pretrained backbone's weights are in model.safetensors already: rebuild it from its
        # saved config instead of looking the weights up on the hub again.
        backbone_dir = folder / BACKBONE_DIR if (folder / BACKBONE_DIR).is_dir() else None
        try:
            vocab = Vocab.load(folder / VOCAB_FILE)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ModelFolderError(
                f"{folder / VOCAB_FILE}: not a finecap vocabulary ({err})"
            ) from None
        captioner = cls.create(config, vocab, backbone_dir)
        try:
            captioner.model.load_state_dict(load_file(folder / WEIGHTS_FILE))
        except Exception as err:  # safetensors' own error type, or shapes that do not fit
            first = str(err).strip().splitlines()[0][:300]
            raise ModelFolderError(
                f"{folder / WEIGHTS_FILE}: the weights do not load into the model that "
                f"config.json describes ({first})"
            ) from None
        captioner.model.eval()
        return captioner

    def save_pretrained(self, folder: str | os.PathLike, extra: dict | None = None) -> None:
        """Write the folder atomically: a temp folder beside it, then a rename. `extra`: facts
        about how it was trained (plain JSON data, no machine paths), under "finecap".

        Replacing an existing folder takes two renames (old aside, new in); a kill between
        them leaves `.NAME.old` and no NAME, which `recover` (called here first, and by
        `train` at start) puts back."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.recover(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            os.chmod(tmp, FOLDER_MODE)  # mkdtemp makes 0700; a model folder is for sharing
            state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, tmp / WEIGHTS_FILE)
            meta = {"format": FORMAT, "model": self.config.to_dict(), "finecap": extra or {}}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            self.vocab.save(tmp / VOCAB_FILE)
            if isinstance(self.model.encoder, HFImageEncoder):
                self.model.encoder.save_backbone_config(tmp / BACKBONE_DIR)
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old")
                folder.rename(old)
                tmp.rename(folder)
                shutil.rmtree(old)
            else:
                tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def recover(folder: str | os.PathLike) -> None:
        """Finish what a killed `save_pretrained` left: the old folder back in place if the
        new one never arrived, and no stray temporary folders."""
        folder = Path(folder)
        old = folder.with_name(f".{folder.name}.old")
        if old.is_dir() and not folder.exists():
            old.rename(folder)
        # Only our own: `.NAME.old` and mkdtemp's `.NAME.` + 8 characters (not `.NAME.v2.old`).
        ours = re.compile(rf"\.{re.escape(folder.name)}\.(old|[a-z0-9_]{{8}})")
        for stray in folder.parent.glob(f".{folder.name}.*"):
            if stray.is_dir() and ours.fullmatch(stray.name):
                shutil.rmtree(stray, ignore_errors=True)

    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image],
        beam_size: int = 3,
        decoding: DecodingConfig | None = None,
        batch_size: int = 32,
        with_attention: bool = False,
    ) -> list[Caption]:
        """Caption RGB PIL images (open files with `finecap.data.images.load_image`)."""
        decoding = decoding or DecodingConfig(beam_size=beam_size)
        if decoding.max_len > self.config.decoder.max_len:
            # The model never saw longer captions (and the transformer has no positions for them).
            decoding = decoding.replace(max_len=self.config.decoder.max_len)
        self.model.eval()
        results: list[Caption] = []
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            pixels = self.model.encoder.preprocess(chunk)
            enc = self.model.encode(pixels)
            decoded = decode(self.model.decoder, enc, decoding, keep_attention=with_attention)
            results += self._to_captions(decoded, decoding.n_best, enc.regions.shape[1])
        return results

    def _to_captions(self, decoded: Decoded, n_best: int, regions: int) -> list[Caption]:
        side = int(round(regions**0.5))
        grid = (side, side) if side * side == regions else None
        out = []
        for i in range(0, decoded.tokens.shape[0], n_best):  # the best of each image's n-best
            ids = decoded.tokens[i].tolist()
            text = self.vocab.decode(ids)
            words = text.split()
            attention = None
            if decoded.attention is not None:
                # The steps that wrote the caption's words, then its <eos>; decode() drops
                # specials (<unk>, a stray <pad>), so word k is not always step k.
                end = ids.index(Vocab.eos_id) + 1 if Vocab.eos_id in ids else len(ids)
                steps = [
                    t for t, w in enumerate(ids[:end]) if w >= len(SPECIALS) or w == Vocab.eos_id
                ]
                attention = decoded.attention[i, steps].float().cpu()
            out.append(Caption(text, words, float(decoded.scores[i]), attention, grid))
        return out


def read_model_config(path: Path) -> ModelConfig:
    """The model section of a saved captioner's config.json, checked as a recipe is."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the model config ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{path}: expected a mapping with a `model` section")
    version = data.get("format", 1)
    if version == 1:
        return ModelConfig.from_saved(data["model"], str(path))
    if version != FORMAT:
        newer = isinstance(version, int) and version > FORMAT
        reason = f"newer than this finecap's ({FORMAT}): upgrade finecap" if newer else "unknown"
        raise ConfigError(f"{path}: format {version!r} is {reason}")
    return ModelConfig.load(data["model"], str(path))
