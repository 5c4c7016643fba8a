"""`Captioner`: the user-facing model — load, caption images, save.

A saved captioner is a folder: `config.json` (`{"format": 2, "model": ModelConfig, "finecap":
{...training facts}}`: what the model is, no machine paths), `model.safetensors` (weights),
`vocab.json`, and for a Hugging Face backbone `backbone/` (its config and image processor, so
the model rebuilds offline). Folders of format 1 (before the typed config layer; no `format`
key) still load. The CLI, trainer and reproduce pipeline all go through this class.

Captioning works as a Hugging Face pipeline does:

    captioner = Captioner.from_pretrained().to("cuda")
    captioner("photo.png")                        # one Caption
    captioner(["a.png", pil_image], beam_size=5)  # a list of Captions, in order
    captioner(images, decoding=DecodingConfig(beam_size=5, n_best=3))  # + caption.alternatives
    captioner(images, sampling=SamplingConfig(n=4, top_p=0.9), seed=0)  # reproducible samples
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from finecap.config import ConfigError
from finecap.data.images import load_image, to_rgb
from finecap.data.vocab import SPECIALS, Vocab
from finecap.decoding import (
    Decoded,
    DecodingConfig,
    SamplingConfig,
    decode,
    model_decoding,
    sample,
)
from finecap.errors import MissingFileError, UserError
from finecap.io import FOLDER_MODE
from finecap.model_card import CARD_FILE
from finecap.models import CaptionModel, ModelConfig
from finecap.models.pretrained import (
    FACTS_FILE,
    PretrainedCaptionModel,
    is_pretrained_source,
    load_pretrained,
)

ASSETS_DIR = Path(__file__).parent / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "default_model"
BUNDLED_MODELS = {"default": DEFAULT_MODEL_DIR, "mle": ASSETS_DIR / "mle_model"}
"""Bundled captioners by name (`finecap caption --model mle`): the distinctive default and the
MLE model it was trained from. A folder of the same name in the working directory wins."""


def bundled_model_dir(name: str | os.PathLike) -> Path | None:
    """The bundled folder `name` stands for, or None when it names no bundled model (or an
    existing path of the same name)."""
    name = str(name)
    if name in BUNDLED_MODELS and not Path(name).exists():
        return BUNDLED_MODELS[name]
    return None


CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE = "config.json", "model.safetensors", "vocab.json"
BACKBONE_DIR = "backbone"
FORMAT = 2  # config.json layout; 1 = before the typed config layer (no "format" key)

ImageInput: TypeAlias = str | os.PathLike | Image.Image
"""What `Captioner.caption` takes for one image: a file path or a PIL image."""


class ModelFolderError(UserError, ValueError):
    """A captioner folder whose files are unreadable or do not fit together."""


@dataclass(repr=False)
class Caption:
    """One image's caption. With several captions per image (`DecodingConfig(n_best=...)`, or
    `SamplingConfig(n=...)`) this is the best-scored one and `alternatives` holds the others,
    best first: `[caption, *caption.alternatives]` is the image's whole ranked list."""

    text: str
    words: list[str]
    score: float  # sum of the words' log-probabilities (beam search: length-penalised)
    attention: Tensor | None = None  # (len(words) + 1, R): one map per word and for <eos>
    grid: tuple[int, int] | None = None  # (rows, cols) of the region grid, for plotting
    alternatives: list[Caption] = field(default_factory=list)

    def __repr__(self) -> str:
        # The attention tensor's shape, not its values: a list of captions stays readable.
        attention = None if self.attention is None else tuple(self.attention.shape)
        more = f", alternatives={len(self.alternatives)}" if self.alternatives else ""
        return f"Caption({self.text!r}, score={self.score:.3f}, attention={attention}{more})"


class Captioner:
    def __init__(
        self,
        model: CaptionModel,
        vocab: Vocab,
        info: dict | None = None,
        decoding: DecodingConfig | Mapping | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.info = info or {}  # config.json's "finecap" facts: how it was trained
        self._set_decoding(decoding, "decoding")

    @property
    def decoding(self) -> DecodingConfig:
        """How `caption` decodes when its caller gives no `decoding`: config.json's own
        `decoding` (as a Hugging Face model's generation_config.json), else 3 beams and 20
        words; its max_len capped at the decoder's. Assigning a mapping or a
        `ModelDecodingConfig` keeps the default for the keys it leaves out; a plain
        `DecodingConfig` sets every key (its own default beam_size is 1: greedy)."""
        return self._decoding

    @decoding.setter
    def decoding(self, value: DecodingConfig | Mapping | None) -> None:
        self._set_decoding(value, "decoding")

    def _set_decoding(self, value: DecodingConfig | Mapping | None, source: str) -> None:
        # Checked as config.json's section is: defaults filled in, n_best refused.
        self._decoding = model_decoding(value, source, self.config.decoder.max_len)

    def own_decoding(self) -> dict:
        """What `decoding` changes from the default one (3 beams, at most 20 words or the
        decoder's max_len if smaller): the section config.json is written with; {} for the
        default."""
        default = model_decoding(None, "decoding", self.config.decoder.max_len).to_dict()
        return {k: v for k, v in self.decoding.to_dict().items() if v != default[k]}

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
        """Load a saved captioner; None (or "default") loads the bundled default scenes model,
        "mle" the bundled MLE model (`BUNDLED_MODELS`). A Hugging Face
        VisionEncoderDecoder or BLIP captioner (a folder, told by its config.json's
        `model_type`, or a hub name) loads through `finecap.models.pretrained`."""
        if folder is not None and (bundled := bundled_model_dir(folder)) is not None:
            folder = bundled
        elif folder is not None and is_pretrained_source(folder):
            model = load_pretrained(folder)
            captioner = cls(model, model.vocab, model.facts)
            source = f"{Path(folder) / FACTS_FILE}: decoding"
            captioner._set_decoding(model.saved_decoding, source)
            return captioner
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
        saved = json.loads((folder / CONFIG_FILE).read_text())
        captioner.info = saved.get("finecap") or {}
        captioner._set_decoding(saved.get("decoding"), f"{folder / CONFIG_FILE}: decoding")
        return captioner

    def save_pretrained(
        self, folder: str | os.PathLike, extra: dict | None = None, card: str | None = None
    ) -> None:
        """Write the folder atomically: a temp folder beside it, then a rename. `extra`: facts
        about how it was trained (plain JSON data, no machine paths), under "finecap";
        `card`: the model card, written as README.md (`finecap.model_card`). A pretrained
        Hugging Face captioner is written in Hugging Face's own layout, its facts in
        finecap.json (`PretrainedCaptionModel.save_pretrained`).

        Replacing an existing folder takes two renames (old aside, new in); a kill between
        them leaves `.NAME.old` and no NAME, which `recover` (called here first, and by
        `train` at start) puts back."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.recover(folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            os.chmod(tmp, FOLDER_MODE)  # mkdtemp makes 0700; a model folder is for sharing
            own = self.own_decoding()  # {}: the default, not written
            if isinstance(self.model, PretrainedCaptionModel):
                self.model.save_pretrained(tmp, extra, decoding=own)
            else:
                state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
                save_file(state, tmp / WEIGHTS_FILE)
                meta = {"format": FORMAT, "model": self.config.to_dict(), "finecap": extra or {}}
                if own:
                    meta["decoding"] = own
                (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
                self.vocab.save(tmp / VOCAB_FILE)
            if card is not None:
                (tmp / CARD_FILE).write_text(card, encoding="utf-8")
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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Captioner:
        """Move the model to `device` ("cuda", "cpu", ...); returns the captioner itself."""
        self.model.to(device)
        return self

    @torch.inference_mode()
    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        beam_size: int | None = None,
        decoding: DecodingConfig | None = None,
        batch_size: int = 32,
        with_attention: bool = False,
        *,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Caption | list[Caption]:
        """Caption one image (a `Caption`) or a list of them (a list, in order).

        An image is a path, opened with `finecap.data.images.load_image` (as `finecap caption`
        opens it), or a PIL image, converted to RGB by the same rules (transparency on white).

        Beam search by default: the model's own `decoding` (config.json's, else 3 beams), with
        `beam_size` (1 = greedy) replaced if given; `decoding` sets every option instead, and a
        `beam_size` given beside it overrides its beam_size (as keyword arguments override a
        Hugging Face generation config). `DecodingConfig(n_best=k)` keeps k
        captions per image: the best is returned, the others are in `Caption.alternatives`.

        `sampling` samples `sampling.n` captions per image instead (ranked as n-best are, by
        log-probability), as long as its max_len, or the model's own decoding's when it names
        none. `seed` makes it reproducible: the same seed, images and batch_size
        give the same captions; `generator` continues a `torch.Generator`'s stream instead
        (what `finecap caption` does across its batches); neither: torch's global RNG.
        """
        single = isinstance(images, str | os.PathLike | Image.Image)
        items = [images] if single else list(images)
        settings = self._settings(beam_size, decoding, sampling, seed, generator)
        if with_attention and not getattr(self.model.decoder, "gives_attention", True):
            raise UserError(
                f"attention maps: the {self.config.decoder.name} decoder of this captioner "
                "gives no attention weights (finecap's own lstm and transformer decoders do)"
            )
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        per_image = settings.n if isinstance(settings, SamplingConfig) else settings.n_best
        self.model.eval()
        results: list[Caption] = []
        for start in range(0, len(items), batch_size):
            # Files are opened a batch at a time: a long list of paths never sits in memory.
            chunk = [_rgb(item) for item in items[start : start + batch_size]]
            pixels = self.model.encoder.preprocess(chunk).to(self.device)
            enc = self.model.encode(pixels)
            if isinstance(settings, SamplingConfig):
                decoded = sample(self.model.decoder, enc, settings, generator, with_attention)
            else:
                decoded = decode(self.model.decoder, enc, settings, keep_attention=with_attention)
            results += self._to_captions(decoded, per_image, enc.regions.shape[1])
        return results[0] if single else results

    __call__ = caption  # `captioner(images, ...)`, as a Hugging Face pipeline is called

    def _settings(
        self,
        beam_size: int | None,
        decoding: DecodingConfig | None,
        sampling: SamplingConfig | None,
        seed: int | None,
        generator: torch.Generator | None,
    ) -> DecodingConfig | SamplingConfig:
        """`caption`'s decoding arguments as one checked config; conflicts are a ValueError."""
        # The model never saw longer captions (and the transformer has no positions for them).
        limit = self.config.decoder.max_len
        if sampling is not None:
            if beam_size is not None or decoding is not None:
                raise ValueError("sampling= cannot be combined with beam_size= or decoding=")
            if seed is not None and generator is not None:
                raise ValueError("give seed= or generator=, not both")
            # A SamplingConfig that names no max_len samples as long as the model's captions.
            given = "max_len" in sampling.model_fields_set
            max_len = sampling.max_len if given else self.decoding.max_len
            return sampling.replace(max_len=min(max_len, limit))
        if seed is not None or generator is not None:
            raise ValueError(
                "seed= and generator= only apply with sampling= (beam search is exact)"
            )
        if decoding is None:
            decoding = self.decoding
        if beam_size is not None and beam_size != decoding.beam_size:
            decoding = decoding.replace(beam_size=beam_size)  # may refuse: n_best > beam_size
        return decoding.replace(max_len=min(decoding.max_len, limit))

    def _to_captions(self, decoded: Decoded, per_image: int, regions: int) -> list[Caption]:
        """One Caption per image from rows [i * per_image, (i + 1) * per_image) of `decoded`."""
        side = int(round(regions**0.5))
        grid = (side, side) if side * side == regions else None
        out = []
        for first in range(0, decoded.tokens.shape[0], per_image):
            rows = range(first, first + per_image)
            # Beams come best first already; samples come in drawing order. A stable sort
            # ranks both the same way and leaves the beams' order (ties included) alone.
            rows = sorted(rows, key=lambda row: -float(decoded.scores[row]))
            best, *others = (self._caption_at(decoded, row, grid) for row in rows)
            best.alternatives = others
            out.append(best)
        return out

    def _caption_at(self, decoded: Decoded, row: int, grid: tuple[int, int] | None) -> Caption:
        ids = decoded.tokens[row].tolist()
        text = self.vocab.decode(ids)
        attention = None
        if decoded.attention is not None:
            # The steps that wrote the caption's words, then its <eos>; decode() drops
            # specials (<unk>, a stray <pad>), so word k is not always step k.
            end = ids.index(Vocab.eos_id) + 1 if Vocab.eos_id in ids else len(ids)
            steps = [t for t, w in enumerate(ids[:end]) if w >= len(SPECIALS) or w == Vocab.eos_id]
            attention = decoded.attention[row, steps].float().cpu()
        return Caption(text, text.split(), float(decoded.scores[row]), attention, grid)


def _rgb(image: ImageInput) -> Image.Image:
    """A path through the hardened loader, a PIL image through the same RGB conversion (so
    a transparent PNG captions alike whether the file or the opened image is given)."""
    if isinstance(image, Image.Image):
        # load_image's own conversion (transparency on white, 16-bit grey scaled), not
        # PIL's convert("RGB"), which would show the colours hidden under transparent pixels.
        return image if image.mode == "RGB" else to_rgb("image", image)
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    raise TypeError(f"expected a path or a PIL image, got {type(image).__name__}")


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
