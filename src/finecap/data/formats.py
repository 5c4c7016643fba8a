"""Caption dataset loaders: every on-disk format becomes one `CaptionCorpus` of `ImageRecord`s.

Formats (registry names):

- `karpathy`: Karpathy split JSON (`dataset_coco.json`, `dataset_flickr8k.json`,
  `dataset_flickr30k.json`, the scenes world's `dataset.json`). Splits come from the file and
  are never redrawn; keys we do not use (`descriptions`, `scene`, ...) land in `extra`.
- `flickr8k`: `Flickr8k.token.txt` + the three `Flickr_8k.*Images.txt` split files beside it.
- `coco_captions`: a COCO captions annotation file. It has no split: the caller names one.
- `pairs`: JSONL (`{"image", "caption"}` per line) or CSV (header naming `image,caption`).

Policies, the same for every format:

- `image_root` defaults to the directory holding the dataset file; `ImageRecord.path` is
  relative to it. `CaptionCorpus.image_path` refuses (`OutsideRootError`) a path that leads
  outside the root -- absolute, `..` leading out, or through a symlink pointing out -- unless
  the corpus was loaded with `allow_outside_root=True`: a dataset file must not make us read,
  or embed in a report, a file the user never meant to hand over.
- Text (captions, file names, image ids) must be encodable as UTF-8: a lone surrogate such as
  the JSON string "\\ud800" is a `DatasetFormatError` naming the entry, never replaced.
- Captions are stripped of surrounding whitespace; empty captions are kept as "".
- An image with *no* captions is fine in val/test (a set to caption now, score later) but an
  error in train/restval: there it means a broken file, and an empty reference set would
  silently poison MLE batches and CIDEr rewards.
- Duplicate image ids are an error, so `CaptionCorpus.by_id` is total.
- Image ids (`ImageRecord.image_id`, what predictions files name): karpathy the `cocoid`,
  else the `imgid`; coco_captions the image `id`; flickr8k the position of the file name in
  the sorted list of every name in the token and split files (the stray "...jpg.1" entry
  included, so ids never depend on line order); pairs the order in which images first
  appear. Predictions may name an image by file name instead (`CaptionCorpus.ids_by_name`:
  the path as written, its base name, or its stem).
- A malformed file raises `DatasetFormatError` naming the file, the entry or line, and the fault.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from finecap.errors import MissingFileError, UserError
from finecap.io import atomic_write_text
from finecap.registry import Registry

SPLITS = ("train", "val", "test", "restval")
FLICKR8K_TOKEN_FILE = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
CORPUS_FILE = "dataset.json"  # what a folder written by `finecap.scenes` holds


class DatasetFormatError(UserError, ValueError):
    """A dataset or predictions file is malformed; the message names file, entry and fault."""


class OutsideRootError(DatasetFormatError):
    """An image path of a dataset leads outside its image root (and that was not allowed)."""


@dataclass
class ImageRecord:
    image_id: int  # cocoid where the dataset has one, else imgid
    path: str  # relative to the corpus image root (Karpathy: filepath/filename)
    split: str  # "train" | "val" | "test" ("restval" unless merged into "train")
    captions: list[str]  # raw reference captions
    extra: dict[str, Any] = field(default_factory=dict)  # every other key of the entry


@dataclass
class CaptionCorpus:
    name: str
    images: list[ImageRecord]
    image_root: Path | None = None
    source: Path | None = None  # the dataset file (or folder) read, for error messages
    allow_outside_root: bool = False  # image paths may lead outside image_root

    def split(self, name: str) -> list[ImageRecord]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [r for r in self.images if r.split == name]

    def by_id(self) -> dict[int, ImageRecord]:
        return {r.image_id: r for r in self.images}

    def ids_by_name(self) -> dict[str, int | None]:
        """{file name: image_id} for predictions that name images by file: each image's path
        as the dataset writes it, else its base name, else that without its extension
        ("1000268201_693b08cb0e.jpg", "1000268201_693b08cb0e"); a path wins over another
        image's base name or stem. None: a name that fits several images at the same level."""
        levels: list[dict[str, int | None]] = [{}, {}, {}]  # path, base name, stem
        for record in self.images:
            base = record.path.replace("\\", "/").rsplit("/", 1)[-1]
            stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
            for level, name in zip(levels, (record.path, base, stem), strict=True):
                if level.setdefault(name, record.image_id) != record.image_id:
                    level[name] = None
        return {**levels[2], **levels[1], **levels[0]}

    def image_path(self, record: ImageRecord) -> Path:
        """Where the record's image file is: `image_root / record.path`, refused with an
        `OutsideRootError` when that leads outside the root (unless `allow_outside_root`)."""
        path = Path(record.path)
        if self.image_root is None:
            return path
        why = None if self.allow_outside_root else outside_root(self.image_root, path)
        if why is not None:
            raise OutsideRootError(
                f"{self.source or self.name}: image_id {record.image_id}: image path "
                f"{record.path!r} {why}, outside the image root {self.image_root} "
                "(pass --allow-outside-root, or allow_outside_root=True, to read it anyway)"
            )
        return self.image_root / path

    def __len__(self) -> int:
        return len(self.images)


def outside_root(root: str | os.PathLike, path: str | os.PathLike) -> str | None:
    """Why `root / path` lies outside `root` ("is absolute", "leads out with '..'", "goes
    through a symlink to ..."), or None when it stays inside. Symlinks are resolved, so a link
    pointing elsewhere inside the root is fine; the files need not exist."""
    if Path(path).is_absolute():
        return "is absolute"
    if os.path.normpath(path).split(os.sep)[0] == os.pardir:
        return "leads out with '..'"
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([real_root, real]) != real_root:
        return f"goes through a symlink to {real}"
    return None


def check_text(text: str) -> str | None:
    """None when `text` can be written as UTF-8, else what stops it (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        return f"holds a lone surrogate (\\u{ord(bad):04x} at character {err.start}): not UTF-8"
    return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class SourceFile:
    """A dataset file (or folder) being read; parses at most once and words errors uniformly."""

    path: Path

    @cached_property
    def text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DatasetFormatError(
                f"{self.path}: not UTF-8 text (bad byte at {err.start})"
            ) from err

    @cached_property
    def json(self) -> Any:
        try:
            with _gc_paused():  # dataset_coco.json is millions of objects: GC passes would
                return json.loads(self.text)  # double the parse (10.9 s -> 5.0 s measured)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(
                f"{self.path}: invalid JSON at line {err.lineno} col {err.colno}: {err.msg}"
            ) from err

    def lines(self) -> Iterator[tuple[int, str]]:
        """(1-based line number, line) for every non-blank line."""
        for number, line in enumerate(self.text.splitlines(), 1):
            if line.strip():
                yield number, line

    def error(self, where: str, what: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.path}: {where}: {what}")

    def line_error(self, line: int, what: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.path} line {line}: {what}")


# A loader reads one source; `split` is the caller's split for formats that carry none.
Loader = Callable[[SourceFile, str | None], CaptionCorpus]
_FORMATS: Registry[CaptionCorpus] = Registry("dataset format")
_SNIFFERS: dict[str, Callable[[SourceFile], bool]] = {}


def register_format(
    name: str, sniff: Callable[[SourceFile], bool] | None = None
) -> Callable[[Loader], Loader]:
    """Register a loader; `sniff(source) -> bool` lets `load_corpus` recognise the format."""

    def decorator(loader: Loader) -> Loader:
        _FORMATS.register(name)(loader)
        if sniff is not None:
            _SNIFFERS[name] = sniff
        return loader

    return decorator


def list_formats() -> list[str]:
    return _FORMATS.names()


def load_corpus(
    path: str | os.PathLike,
    fmt: str | None = None,
    image_root: str | os.PathLike | None = None,
    merge_restval: bool = True,
    split: str | None = None,
    allow_outside_root: bool = False,
) -> CaptionCorpus:
    """Load a caption dataset. `fmt` is guessed from the content when None.

    `split` names the split of formats that carry none (coco_captions: default "test";
    pairs: rows without a split column, default "train"). `allow_outside_root` lets
    `image_path` return paths that lead outside the image root (see the module docstring).
    """
    source = SourceFile(Path(path))
    if not source.path.exists():
        raise MissingFileError(f"{path}: no such file or directory")
    if source.path.is_dir() and (source.path / CORPUS_FILE).is_file():
        source = SourceFile(source.path / CORPUS_FILE)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    corpus = _FORMATS.create(fmt or guess_format(source), source, split)
    if image_root is not None:
        corpus.image_root = Path(image_root)
    corpus.source, corpus.allow_outside_root = source.path, allow_outside_root
    _check_corpus(source, corpus)  # before the merge, so errors name the file's own split
    if merge_restval:
        for record in corpus.images:
            if record.split == "restval":
                record.split = "train"
    return corpus


def dataset_files(path: str | os.PathLike) -> list[Path]:
    """The files `load_corpus(path)` may read: the file itself, or a folder's dataset.json /
    Flickr8k token file, plus the Flickr8k split files beside a token file."""
    path = Path(path)
    if path.is_dir():
        files, folder = [path / CORPUS_FILE, path / FLICKR8K_TOKEN_FILE], path
        flickr8k = files[1].is_file()
    else:
        files, folder = [path], path.parent
        flickr8k = path.suffix.lower() == ".txt"  # what the flickr8k sniffer takes
    if flickr8k:
        files += [folder / name for name in FLICKR8K_SPLIT_FILES.values()]
    return files


def guess_format(source: str | os.PathLike | SourceFile) -> str:
    """Name of the first registered format whose sniffer recognises the file."""
    if not isinstance(source, SourceFile):
        source = SourceFile(Path(source))
    for name, sniff in _SNIFFERS.items():
        if sniff(source):
            return name
    hint = ""
    if isinstance(_json_value(source), list):
        hint = " (a JSON list looks like a predictions file: use load_predictions)"
    raise DatasetFormatError(
        f"{source.path}: cannot tell the dataset format{hint}; pass fmt= one of "
        f"{', '.join(list_formats())}"
    )


def _check_corpus(source: SourceFile, corpus: CaptionCorpus) -> None:
    seen: dict[int, ImageRecord] = {}
    for record in corpus.images:
        if record.image_id in seen:
            raise DatasetFormatError(
                f"{source.path}: image id {record.image_id} is used twice "
                f"({seen[record.image_id].path} and {record.path})"
            )
        seen[record.image_id] = record
        if not record.captions and record.split in ("train", "restval"):
            raise DatasetFormatError(
                f"{source.path}: image {record.image_id} ({record.path}) is in the "
                f"{record.split} split but has no captions"
            )


def _no_split_argument(fmt: str, split: str | None) -> None:
    if split is not None:
        raise ValueError(f"the {fmt} format carries its own splits; split= is for other formats")


_TYPE_NAMES = {
    int: "an integer",
    str: "a string",
    list: "a list",
    (int, str): "an integer or string",
}


def _require(
    source: SourceFile, where: str, entry: dict, key: str, kind: type | tuple[type, ...]
) -> Any:
    if key not in entry:
        raise source.error(where, f'missing key "{key}"')
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        got = type(value).__name__
        raise source.error(where, f'"{key}" must be {_TYPE_NAMES[kind]}, got {got}')
    why = check_text(value) if isinstance(value, str) else None
    if why is not None:
        raise source.error(where, f'"{key}" {why}')
    return value


def _json_value(source: SourceFile) -> Any:
    """The parsed JSON of anything that is not a folder or one of the text formats."""
    if source.path.is_dir() or source.path.suffix.lower() in (".txt", ".csv", ".jsonl"):
        return None
    return source.json


# --- pairs -------------------------------------------------------------------------------

_PAIR_KEYS = ("image", "caption", "split")


def _sniff_pairs(source: SourceFile) -> bool:
    return source.path.suffix.lower() in (".jsonl", ".csv")


@register_format("pairs", sniff=_sniff_pairs)
def _load_pairs(source: SourceFile, split: str | None) -> CaptionCorpus:
    rows = _csv_rows(source) if source.path.suffix.lower() == ".csv" else _jsonl_rows(source)
    records: dict[str, ImageRecord] = {}
    for line, row in rows:
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image:
            raise source.line_error(line, '"image" must be a non-empty string')
        if not isinstance(caption, str):
            raise source.line_error(line, f'"caption" must be a string, got {caption!r}')
        for key, text in (("image", image), ("caption", caption)):
            if (why := check_text(text)) is not None:
                raise source.line_error(line, f'"{key}" {why}')
        row_split = row.get("split") or split or "train"
        if row_split not in SPLITS:
            raise source.line_error(line, f"unknown split {row_split!r}")
        record = records.get(image)
        if record is None:
            record = records[image] = ImageRecord(len(records), image, row_split, [])
        elif record.split != row_split:
            raise source.line_error(
                line, f"{image} is in split {row_split!r} here but {record.split!r} earlier"
            )
        record.captions.append(caption.strip())
        # Extra columns become lists aligned with the captions (FineCapEval phrases, ...).
        for key in row:
            if key not in _PAIR_KEYS:
                record.extra.setdefault(key, [None] * (len(record.captions) - 1))
        for key, values in record.extra.items():
            values.append(row.get(key))
    return CaptionCorpus(source.path.stem, list(records.values()), source.path.parent)


def _csv_rows(source: SourceFile) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(source.text))
    header = reader.fieldnames or []
    if "image" not in header or "caption" not in header:
        raise source.line_error(1, f"CSV header must name columns image and caption, got {header}")
    for row in reader:
        if None in row:
            raise source.line_error(reader.line_num, "more fields than the header has columns")
        yield reader.line_num, row


def _jsonl_rows(source: SourceFile) -> Iterator[tuple[int, dict]]:
    for line, text in source.lines():
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise source.line_error(line, f"invalid JSON at col {err.colno}: {err.msg}") from err
        if not isinstance(row, dict):
            raise source.line_error(line, 'expected an object {"image": ..., "caption": ...}')
        yield line, row


# --- flickr8k ----------------------------------------------------------------------------


def _sniff_flickr8k(source: SourceFile) -> bool:
    if source.path.is_dir():
        return (source.path / FLICKR8K_TOKEN_FILE).is_file()
    return source.path.suffix.lower() == ".txt"


@register_format("flickr8k", sniff=_sniff_flickr8k)
def _load_flickr8k(source: SourceFile, split: str | None) -> CaptionCorpus:
    _no_split_argument("flickr8k", split)
    if source.path.is_dir():
        source = SourceFile(source.path / FLICKR8K_TOKEN_FILE)
        if not source.path.is_file():
            raise MissingFileError(f"{source.path}: no such file")
    captions = _flickr8k_captions(source)
    split_of = _flickr8k_splits(source.path)
    # Ids follow sorted file names so they never depend on line order; token-file images
    # listed in no split file (e.g. the stray "...jpg.1" entry) take an id but are dropped.
    records = []
    for image_id, name in enumerate(sorted(captions.keys() | split_of.keys())):
        if name in split_of:
            by_k = captions.get(name, {})
            records.append(
                ImageRecord(image_id, name, split_of[name], [by_k[k] for k in sorted(by_k)])
            )
    return CaptionCorpus("flickr8k", records, source.path.parent)


def _flickr8k_captions(source: SourceFile) -> dict[str, dict[int, str]]:
    captions: dict[str, dict[int, str]] = {}
    for line, text in source.lines():
        key, tab, caption = text.partition("\t")
        name, hash_, k = key.strip().rpartition("#")
        if not tab or not hash_ or not name or not k.isdigit():
            raise source.line_error(line, f'expected "IMAGE#K<TAB>caption", got {text[:80]!r}')
        by_k = captions.setdefault(name, {})
        if int(k) in by_k:
            raise source.line_error(line, f"caption {name}#{k} appears twice")
        by_k[int(k)] = caption.strip()
    return captions


def _flickr8k_splits(token_file: Path) -> dict[str, str]:
    files = {split: token_file.parent / name for split, name in FLICKR8K_SPLIT_FILES.items()}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise DatasetFormatError(
            f"{token_file}: split files missing beside it: {', '.join(missing)}"
        )
    split_of: dict[str, str] = {}
    for split, path in files.items():
        source = SourceFile(path)
        for line, text in source.lines():
            name = text.strip()
            if name in split_of:
                raise source.line_error(line, f"{name} is already in the {split_of[name]} split")
            split_of[name] = split
    return split_of


# --- karpathy ----------------------------------------------------------------------------

_KARPATHY_USED = frozenset({"filepath", "filename", "split", "sentences", "sentids"})


def _sniff_karpathy(source: SourceFile) -> bool:
    data = _json_value(source)
    return isinstance(data, dict) and isinstance(data.get("images"), list) and not _is_coco(data)


def _is_coco(data: dict) -> bool:
    """COCO annotations, or a COCO image-info file (images keyed "file_name", no captions)."""
    images = data.get("images")
    first = images[0] if isinstance(images, list) and images else None
    return "annotations" in data or (isinstance(first, dict) and "file_name" in first)


@register_format("karpathy", sniff=_sniff_karpathy)
def _load_karpathy(source: SourceFile, split: str | None) -> CaptionCorpus:
    _no_split_argument("karpathy", split)
    data = source.json
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise source.error("top level", 'expected an object with an "images" list')
    records = [_karpathy_record(source, i, entry) for i, entry in enumerate(data["images"])]
    name = data.get("dataset") if isinstance(data.get("dataset"), str) else source.path.stem
    return CaptionCorpus(name, records, source.path.parent)


def _karpathy_record(source: SourceFile, index: int, entry: Any) -> ImageRecord:
    where = f"images[{index}]"
    if not isinstance(entry, dict):
        raise source.error(where, "expected an object")
    id_key = "cocoid" if "cocoid" in entry else "imgid"
    if id_key in entry:
        where += f" ({id_key} {entry[id_key]})"
    image_id = _require(source, where, entry, id_key, int)
    filename = _require(source, where, entry, "filename", str)
    filepath = entry.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise source.error(where, f'"filepath" must be a string, got {type(filepath).__name__}')
    split = _require(source, where, entry, "split", str)
    if split not in SPLITS:
        raise source.error(where, f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    sentences = _require(source, where, entry, "sentences", list)
    captions = []
    for j, sentence in enumerate(sentences):
        if not isinstance(sentence, dict):
            raise source.error(f"{where} sentences[{j}]", "expected an object")
        captions.append(_require(source, f"{where} sentences[{j}]", sentence, "raw", str).strip())
    extra = {k: v for k, v in entry.items() if k not in _KARPATHY_USED and k != id_key}
    path = f"{filepath}/{filename}" if filepath else filename
    return ImageRecord(image_id, path, split, captions, extra)


# --- coco_captions -----------------------------------------------------------------------


def _sniff_coco(source: SourceFile) -> bool:
    data = _json_value(source)
    return isinstance(data, dict) and _is_coco(data)


@register_format("coco_captions", sniff=_sniff_coco)
def _load_coco(source: SourceFile, split: str | None) -> CaptionCorpus:
    data = source.json
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise source.error("top level", 'expected an object with an "images" list')
    # Image-info files (COCO test2014) have no "annotations": captions stay empty.
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise source.error("top level", '"annotations" must be a list')
    by_id: dict[int, ImageRecord] = {}
    for i, entry in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(entry, dict):
            raise source.error(where, "expected an object")
        if "id" in entry:
            where += f" (id {entry['id']})"
        image_id = _require(source, where, entry, "id", int)
        file_name = _require(source, where, entry, "file_name", str)
        if image_id in by_id:
            raise source.error(where, f"image id {image_id} appears twice")
        extra = {k: v for k, v in entry.items() if k not in ("id", "file_name")}
        by_id[image_id] = ImageRecord(image_id, file_name, split or "test", [], extra)
    for j, annotation in enumerate(annotations):
        where = f"annotations[{j}]"
        if not isinstance(annotation, dict):
            raise source.error(where, "expected an object")
        image_id = _require(source, where, annotation, "image_id", int)
        caption = _require(source, where, annotation, "caption", str)
        if image_id not in by_id:
            raise source.error(where, f"image_id {image_id} is not in images")
        by_id[image_id].captions.append(caption.strip())
    return CaptionCorpus(source.path.stem, list(by_id.values()), source.path.parent)


# --- predictions (COCO results format) ---------------------------------------------------


def load_predictions(path: str | os.PathLike) -> dict[int | str, str]:
    """Read `[{"image_id": int|str, "caption": str}, ...]` into {image_id: caption}."""
    source = SourceFile(Path(path))
    if not source.path.is_file():
        raise MissingFileError(f"{path}: no such file")
    data = source.json
    if not isinstance(data, list):
        raise source.error("top level", 'expected a list of {"image_id", "caption"} objects')
    predictions: dict[int | str, str] = {}
    first_at: dict[int | str, int] = {}
    for i, entry in enumerate(data):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            raise source.error(where, 'expected an object {"image_id", "caption"}')
        image_id = _require(source, where, entry, "image_id", (int, str))
        caption = _require(source, f"{where} (image_id {image_id!r})", entry, "caption", str)
        if image_id in first_at:
            raise source.error(
                where, f"duplicate image_id {image_id!r} (first at [{first_at[image_id]}])"
            )
        first_at[image_id] = i
        predictions[image_id] = caption
    return predictions


def save_predictions(path: str | os.PathLike, predictions: Mapping[int | str, str]) -> None:
    """Write {image_id: caption} as COCO results JSON, one entry a line, atomically."""
    entries = [
        json.dumps({"image_id": image_id, "caption": caption}, ensure_ascii=False)
        for image_id, caption in predictions.items()
    ]
    atomic_write_text(path, "[\n" + ",\n".join(entries) + "\n]\n" if entries else "[]\n")
