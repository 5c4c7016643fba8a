"""`finecap caption PATH...`: caption images and folders of images with a saved captioner.

Every file is opened with the hardened `load_image`; a file that cannot be read (missing,
empty, corrupt, truncated, not an image, too large) gets an error line naming it and the
others are still captioned. Good images are captioned together in batches of --batch-size
(batched beam search is several times faster per image than one at a time), while memory stays
bounded by one batch of decoded images. Lines come out in input order, one per file (or
--n-best lines per file, best first).

`--dataset D` captions a split of D instead (`--split`, default test; images through
`CaptionCorpus.image_path`, so they stay inside the image root unless --allow-outside-root),
and `--out` writes the COCO results file `finecap evaluate --predictions` reads. With image
paths as well, D only names the images: their --json lines carry D's `image_id`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro
from PIL import Image
from pydantic import Field
from tqdm import tqdm
from tyro.conf import Positional

from finecap.attention_maps import figure_names, save_attention_figure
from finecap.captioner import (
    DEFAULT_MODEL_DIR,
    Caption,
    Captioner,
    bundled_model_dir,
)
from finecap.config import NonNegativeInt, PositiveFloat, PositiveInt, Settings
from finecap.data.formats import (
    CaptionCorpus,
    OutsideRootError,
    dataset_files,
    load_corpus,
    save_predictions,
)
from finecap.data.images import ImageLoadError, iter_image_files, load_image
from finecap.decoding import DecodingConfig, SamplingConfig
from finecap.errors import UserError
from finecap.hub import WeightsNotFoundError
from finecap.io import same_file
from finecap.model_card import describe
from finecap.models.pretrained import looks_like_hub_name

PROG = "finecap caption"
PROGRESS_MIN_IMAGES = 8  # a bar for a handful of images is noise


class CaptionOptions(Settings):
    """Caption images (folders give their image files), or a dataset split with --dataset.
    Prints PATH<TAB>caption per image (in PATH, a backslash, tab, newline or other
    unprintable character is written as a Python escape: \\\\, \\t, \\n, \\xff for a byte that
    is not UTF-8), --n-best lines per image best first, or one JSON object per line with
    --json ("captions": the n-best list; "image_id" for an image of --dataset); unreadable
    files get an error line and make the exit status 1. --out writes the COCO results file
    that `finecap evaluate --predictions` reads."""

    paths: Positional[Annotated[list[str], tyro.conf.arg(metavar="[PATH ...]")]] = Field(
        default_factory=list
    )
    """Image files or folders (none with --dataset: its --split is captioned)."""
    model: str | None = None
    """Saved captioner folder, or a Hugging Face VisionEncoderDecoder / BLIP captioner (folder
    or hub name, e.g. nlpconnect/vit-gpt2-image-captioning), or a bundled model by name: `mle`
    (the MLE model), `default`; default: the bundled distinctive scenes model."""
    beam_size: PositiveInt | None = None
    """Beams per image; 1 = greedy (default: the model's own, 3 unless its config.json says
    otherwise, or --n-best if larger; not with --sample)."""
    n_best: PositiveInt = 1
    """Captions per image, best first: the n best beams, or n samples with --sample."""
    block_trigrams: bool | None = None
    """True: forbid a beam to repeat a trigram; False: allow it (default: as the model's
    config.json says; the bundled default model blocks them)."""
    sample: bool = False
    """Sample captions instead of beam search (--temperature, --top-k, --top-p, --seed)."""
    temperature: PositiveFloat | None = None
    """Sampling temperature (default 1)."""
    top_k: NonNegativeInt | None = None
    """Sample among the k most likely words only (default 0 = all)."""
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    """Nucleus sampling: among the most likely words holding this much probability (default 1)."""
    seed: int | None = None
    """Makes --sample reproducible for the same images and --batch-size (default: random)."""
    max_len: PositiveInt | None = None
    """Most new tokens per caption (words; a pretrained captioner's own tokens), capped at the
    decoder's max_len (default: its config.json decoding's max_len; if it gives none, 20,
    capped at the decoder's: 16 for the bundled models)."""
    batch_size: PositiveInt = 32
    """Images decoded together."""
    as_json: Annotated[bool, tyro.conf.arg(name="json")] = False
    """One JSON object per line."""
    attention: str | None = None
    """Write DIR/<image stem>.png: where the decoder looked for each word (best caption)."""
    dataset: str | None = None
    """A dataset (dataset.json, its folder, or any finecap format): caption its --split."""
    split: str = "test"
    """The split of --dataset to caption (when no PATH is given)."""
    images: str | None = None
    """Image root of --dataset (default: the dataset's folder)."""
    allow_outside_root: bool = False
    """Read --dataset image paths leading outside the image root (absolute, `..`, a symlink)."""
    out: str | None = None
    """Write the captions of --dataset's images here as COCO results JSON (image_id, caption)."""
    progress: bool = True
    """Show a progress bar (from 8 images on)."""


class CaptionInputError(UserError, ValueError):
    """Options or inputs of `finecap caption` that do not fit together."""


@dataclass
class _Item:
    path: str  # exactly as given, or as listed from a given folder
    figure: str  # attention PNG file name, unique among the run's images
    image_id: int | None = None  # the --dataset image this file is, if any
    image: Image.Image | None = None
    error: str | None = None


def _usage_error(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _load_captioner(model: str | None) -> Captioner:
    """The captioner, or a `ValueError` with one sentence saying why not."""
    if model is None and not DEFAULT_MODEL_DIR.is_dir():
        raise ValueError(
            f"no --model given and the bundled default model is not installed ({DEFAULT_MODEL_DIR})"
        )
    bundled = bundled_model_dir(model) if model is not None else None
    if bundled is not None and not bundled.is_dir():
        raise ValueError(f"the bundled {model!r} model is not installed ({bundled})")
    if (
        model is not None
        and bundled is None
        and not Path(model).is_dir()
        and not looks_like_hub_name(model)
    ):
        raise ValueError(f"model folder {model!r} does not exist")
    try:
        return Captioner.from_pretrained(model)
    except (OSError, ValueError, KeyError, WeightsNotFoundError) as err:
        raise ValueError(f"cannot load the model: {err}") from err


def handler(args: CaptionOptions) -> int:
    # Everything that can be refused is, before the model loads and anything is captioned.
    settings = _sampling_settings(args)
    corpus = _load_dataset(args)
    items = _items(args, corpus)
    if args.out is not None:
        _check_out(Path(args.out), args.dataset, items)
    try:
        captioner = _load_captioner(args.model)
    except ValueError as err:
        return _usage_error(str(err))
    bundled = bundled_model_dir(args.model) if args.model is not None else None
    if args.model is None:
        where = "the bundled default model"
    elif bundled is not None:
        where = f"the bundled {args.model} model"
    else:
        where = args.model
    if settings is None:
        settings = _with_model_decoding(args, captioner.decoding)
    how = f"; {settings.describe()}" if isinstance(settings, DecodingConfig) else ""
    print(f"{PROG}: using {where} ({describe(captioner.info)}{how})", file=sys.stderr)
    if not items:
        hint = "" if args.paths else " (give image files or folders, or --dataset)"
        return _usage_error(f"no images to caption{hint}")
    generator = None
    if isinstance(settings, SamplingConfig):
        # One generator for the whole run: each batch draws on from where the last stopped,
        # as `Captioner.caption(all images, seed=...)` would, instead of repeating its noise.
        seed = args.seed if args.seed is not None else secrets.randbits(63)
        generator = torch.Generator(captioner.device).manual_seed(seed)
    predictions: dict[int, str] = {}
    failed = False
    bar = tqdm(
        total=len(items),
        unit="img",
        file=sys.stderr,
        disable=True if not args.progress or len(items) < PROGRESS_MIN_IMAGES else None,
    )
    with bar:
        for window in _windows(items, args.batch_size):
            images = [item.image for item in window if item.image is not None]
            options = {"decoding": settings} if generator is None else {"sampling": settings}
            captions = iter(
                captioner.caption(
                    images,
                    batch_size=args.batch_size,
                    with_attention=args.attention is not None,
                    generator=generator,
                    **options,
                )
            )
            for item in window:
                caption = next(captions) if item.image is not None else None
                if caption is not None and args.attention is not None:
                    _write_figure(item, caption, Path(args.attention))
                if caption is not None and item.image_id is not None:
                    predictions[item.image_id] = caption.text
                failed |= item.error is not None
                _report(item, caption, args.as_json)
                item.image = None  # free the decoded pixels as soon as they are used
            sys.stdout.flush()
            bar.update(len(window))
    if args.out is not None:
        _write_predictions(Path(args.out), predictions, items, args.dataset)
    return 1 if failed else 0


def _sampling_settings(args: CaptionOptions) -> SamplingConfig | None:
    """Sampling settings from the flags, or None for beam search (the model's own decoding,
    `_with_model_decoding`); flags of the other kind are refused rather than ignored."""
    knobs = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    if args.sample:
        beam_only = {"--beam-size": args.beam_size, "--block-trigrams": args.block_trigrams}
        if given := [flag for flag, value in beam_only.items() if value is not None]:
            raise CaptionInputError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for beam search; "
                "--sample draws --n-best captions per image"
            )
        given = {key: value for key, value in knobs.items() if value is not None}
        if args.max_len is not None:
            given["max_len"] = args.max_len
        return SamplingConfig(n=args.n_best, **given)
    given = [f"--{key.replace('_', '-')}" for key, value in knobs.items() if value is not None]
    given += ["--seed"] if args.seed is not None else []
    if given:
        raise CaptionInputError(f"{', '.join(given)}: only with --sample")
    if args.beam_size is not None and args.n_best > args.beam_size:
        raise CaptionInputError(
            f"--n-best {args.n_best} is more than --beam-size {args.beam_size}: beam search "
            "keeps at most one caption per beam"
        )
    return None


def _with_model_decoding(args: CaptionOptions, model: DecodingConfig) -> DecodingConfig:
    """The model's own decoding (its config.json's `decoding`) with the flags given; with no
    --beam-size, the model's beams or --n-best if larger."""
    changes = {"beam_size": args.beam_size or max(model.beam_size, args.n_best)}
    changes["n_best"] = args.n_best
    if args.max_len is not None:
        changes["max_len"] = args.max_len
    if args.block_trigrams is not None:
        changes["block_trigrams"] = args.block_trigrams
    return model.replace(**changes)


def _load_dataset(args: CaptionOptions) -> CaptionCorpus | None:
    if args.dataset is None:
        needs = [f"--{flag}" for flag in ("out", "images") if getattr(args, flag) is not None]
        needs += ["--allow-outside-root"] if args.allow_outside_root else []
        if needs:
            raise CaptionInputError(f"{', '.join(needs)}: only with --dataset")
        return None
    return load_corpus(  # a missing or malformed file: a UserError naming it
        args.dataset, image_root=args.images, allow_outside_root=args.allow_outside_root
    )


def _items(args: CaptionOptions, corpus: CaptionCorpus | None) -> list[_Item]:
    """What to caption: the given paths (tagged with --dataset's image ids where they are
    its images), or else the --split of --dataset."""
    if args.paths or corpus is None:
        for given in args.paths:
            if Path(given).is_dir() and not iter_image_files([given]):
                print(f"{PROG}: {given}: no image files in this folder", file=sys.stderr)
        files = iter_image_files(args.paths)
        ids = _ids_by_file(corpus) if corpus is not None else {}
        found = [ids.get(os.path.realpath(path)) for path in files]
    else:
        try:
            records = corpus.split(args.split)
        except ValueError as err:  # an unknown split name
            raise CaptionInputError(f"--split: {err}") from None
        if not records:
            present = ", ".join(sorted({r.split for r in corpus.images}))
            raise CaptionInputError(
                f"{args.dataset}: the {args.split} split is empty (splits: {present})"
            )
        # Every path is checked before anything is captioned: one outside the root fails now.
        files = [str(corpus.image_path(record)) for record in records]
        found = [record.image_id for record in records]
    names = figure_names(files)
    return [_Item(path, name, id_) for path, name, id_ in zip(files, names, found, strict=True)]


def _ids_by_file(corpus: CaptionCorpus) -> dict[str, int]:
    """{real path of the image file: image_id} over every split of the dataset."""
    ids: dict[str, int] = {}
    for record in corpus.images:
        try:
            path = corpus.image_path(record)
        except OutsideRootError:
            continue  # a path the dataset may not make us read is nobody's image here
        ids.setdefault(os.path.realpath(path), record.image_id)
    return ids


def _check_out(out: Path, dataset: str, items: list[_Item]) -> None:
    """Refuse, before anything is captioned, an --out that is a folder or an input."""
    if out.is_dir():
        raise CaptionInputError(f"--out {out}: is a folder; name the file to write")
    inputs = [*dataset_files(dataset), *(Path(item.path) for item in items)]
    clash = next((path for path in inputs if same_file(out, path)), None)
    if clash is not None:
        raise CaptionInputError(f"--out {out}: is an input ({clash}) and would be overwritten")


def _write_predictions(
    out: Path, predictions: dict[int, str], items: list[_Item], dataset: str
) -> None:
    others = sum(item.image_id is None for item in items)
    if others:
        print(
            f"{PROG}: {others} of the {len(items)} images are not in {dataset}: left out of {out}",
            file=sys.stderr,
        )
    save_predictions(out, predictions)  # atomic: a reader never sees half a file


def _windows(items: list[_Item], batch_size: int):
    """Load files in order; yield runs of items holding batch_size good images (or the rest)."""
    window: list[_Item] = []
    good = 0
    for item in items:
        try:
            item.image = load_image(item.path)
            good += 1
        except ImageLoadError as err:
            item.error = str(err)
        window.append(item)
        if good == batch_size:
            yield window
            window, good = [], 0
    if window:
        yield window


def _write_figure(item: _Item, caption: Caption, folder: Path) -> None:
    try:
        save_attention_figure(item.image, caption, folder / item.figure)
    except (OSError, ValueError) as err:
        item.error = f"{item.path}: cannot write the attention figure ({err})"


def escape_path(path: str) -> str:
    """`path` on one tab-free line: a backslash and every unprintable character (tab, newline,
    other controls, a lone surrogate) as its Python escape; a byte of a file name that is not
    UTF-8 (which Python holds as a surrogate U+DC80..U+DCFF) as \\xNN."""
    if path.isprintable() and "\\" not in path:
        return path
    out = []
    for char in path:
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def _report(item: _Item, caption: Caption | None, as_json: bool) -> None:
    """One stdout line per image; errors go to stdout with --json (in order), else stderr."""
    ranked = [] if caption is None else [caption, *caption.alternatives]
    if as_json:
        record: dict = {"image": item.path}
        if item.image_id is not None:
            record["image_id"] = item.image_id
        if caption is not None:
            record["caption"] = caption.text
            if caption.alternatives:  # --n-best above 1
                record["captions"] = [c.text for c in ranked]
        if item.error is not None:
            record["error"] = item.error
        tqdm.write(json.dumps(record), file=sys.stdout)
        return
    for each in ranked:  # --n-best lines, each still exactly PATH<TAB>caption
        tqdm.write(f"{escape_path(item.path)}\t{each.text}", file=sys.stdout)
    if item.error is not None:
        tqdm.write(f"{PROG}: {item.error}", file=sys.stderr)


COMMANDS = {"caption": (CaptionOptions, handler)}
