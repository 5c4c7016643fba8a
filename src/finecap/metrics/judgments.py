"""Human judgments of image captions, as the meta-evaluation literature ships them.

Formats (`JUDGMENT_FORMATS`; `load_judgments` recognises them from the content):

- ``expert`` -- Flickr8k ``ExpertAnnotations.txt`` (Hodosh et al. 2013):
  ``IMAGE<TAB>CAPTION_ID<TAB>e1<TAB>e2<TAB>e3``, three expert scores 1 (does not describe the
  image) .. 4 (describes it).
- ``crowdflower`` -- Flickr8k ``CrowdFlowerAnnotations.txt``:
  ``IMAGE<TAB>CAPTION_ID<TAB>percent_yes<TAB>n_yes<TAB>n_no``; the rating is percent_yes, which
  must equal n_yes / (n_yes + n_no) (Hessel et al.'s ``download.py`` asserts the same).
- ``csv`` -- a header naming ``image,caption,score`` (other columns ignored); each row is one
  rating, and rows of the same (image, caption) are ratings of one pair.

Caption ids (``IMAGE.jpg#N``) are looked up in a `{caption id: caption}` mapping the caller
gives (`finecap.metrics.human` builds it from the Flickr8k token file). The sniffing is safe:
an expert line (three integers 1..4) can never pass as a CrowdFlower line, whose
percent_yes = n_yes / (n_yes + n_no) is 1 only when n_no = 0. Every fault -- a wrong field
count, a score out of range, an unknown caption id, a pair given twice -- is a
`DatasetFormatError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from finecap.data.formats import (
    FLICKR8K_TOKEN_FILE,
    CaptionCorpus,
    DatasetFormatError,
    ImageRecord,
    SourceFile,
    check_text,
    guess_format,
    load_corpus,
)
from finecap.errors import MissingFileError, UserError

TauVariant = Literal["b", "c"]
FormatName = Literal["expert", "crowdflower", "csv"]  # the keys of JUDGMENT_FORMATS


class JudgmentsError(UserError, ValueError):
    """Judgments and the other inputs do not fit together; the message says how."""


@dataclass(frozen=True)
class Protocol:
    """How a judgment set is correlated with a metric (Hessel et al. 2021, appendix A)."""

    own_reference: Literal["drop_pair", "remove_from_references"]
    """What to do with a pair whose caption is one of its image's references: drop the pair
    (Flickr8k-Expert), or keep it and take the caption out of the image's references -- for
    every pair of that image, so all its candidates meet the same references (CrowdFlower)."""
    tau_variant: TauVariant
    """Kendall tau-b or tau-c (`scipy.stats.kendalltau(variant=...)`)."""


@dataclass
class JudgedPair:
    """One judged (image, caption) pair; each of its ratings is one observation."""

    image: str  # the image's file name, as the judgments file spells it
    caption: str  # the raw candidate caption
    ratings: list[float]
    line: int  # 1-based line of the file where the pair (first) appears
    caption_id: str | None = None  # "IMAGE.jpg#N" where the file names captions by id


@dataclass
class Judgments:
    source: Path
    format: str  # a `JUDGMENT_FORMATS` name
    protocol: Protocol
    pairs: list[JudgedPair] = field(default_factory=list)

    @property
    def n_ratings(self) -> int:
        return sum(len(p.ratings) for p in self.pairs)


CaptionIds = Mapping[str, str]  # caption id ("IMAGE.jpg#N") -> caption
Reader = Callable[[SourceFile, CaptionIds], list[JudgedPair]]


@dataclass(frozen=True)
class JudgmentFormat:
    protocol: Protocol
    read: Reader
    sniff: Callable[[SourceFile], bool]


def load_judgments(
    path: str | os.PathLike, captions: CaptionIds, fmt: FormatName | None = None
) -> Judgments:
    """Read a judgments file; `fmt` (a `JUDGMENT_FORMATS` name) is recognised when None."""
    source = SourceFile(Path(path))
    if not source.path.is_file():
        raise MissingFileError(f"{path}: no such file")
    if fmt is None:
        fmt = next((name for name, f in JUDGMENT_FORMATS.items() if f.sniff(source)), None)
        if fmt is None:
            raise DatasetFormatError(
                f"{source.path}: not a judgments file this code reads (Flickr8k Expert or "
                "CrowdFlower annotations: 5 tab-separated fields a line; or a CSV with columns "
                "image,caption,score)"
            )
    elif fmt not in JUDGMENT_FORMATS:
        raise ValueError(f"unknown judgments format {fmt!r}; known: {', '.join(JUDGMENT_FORMATS)}")
    spec = JUDGMENT_FORMATS[fmt]
    pairs = spec.read(source, captions)
    if not pairs:
        raise DatasetFormatError(f"{source.path}: no judgments in the file")
    return Judgments(source.path, fmt, spec.protocol, pairs)


@dataclass
class DatasetCaptions:
    """A dataset's captions as judgments refer to them: by caption id, and per image."""

    corpus: CaptionCorpus
    records: dict[str, ImageRecord]  # by dataset path, and by file name where unique
    by_id: dict[str, str]  # "IMAGE.jpg#N" -> caption

    @property
    def references(self) -> dict[str, list[str]]:
        return {name: r.captions for name, r in self.records.items()}

    def image_paths(self, images: Sequence[str]) -> list[Path]:
        """The image file of each name; every file must exist (an error names the missing)."""
        paths = [self.corpus.image_path(self.records[name]) for name in images]
        absent = sorted({str(p) for p in paths if not p.is_file()})
        if absent:
            raise JudgmentsError(
                f"{len(absent)} judged images not found ({'; '.join(absent[:5])}); pass "
                "--images DIR"
            )
        return paths


def dataset_captions(
    dataset: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> DatasetCaptions:
    """Load a dataset (any `load_corpus` format) for judgments. Caption ids: a Flickr8k token
    file's own ``IMAGE#N`` keys; elsewhere ``FILE_NAME#N`` = the N-th caption of the image."""
    from finecap.data.formats import _flickr8k_captions  # the token file's ids, with its errors

    corpus = load_corpus(dataset, image_root=image_root, allow_outside_root=allow_outside_root)
    records = {r.path: r for r in corpus.images}
    names = Counter(Path(r.path).name for r in corpus.images)
    for r in corpus.images:
        if names[Path(r.path).name] == 1:
            records.setdefault(Path(r.path).name, r)
    source = Path(corpus.source or dataset)
    if guess_format(source) == "flickr8k":
        token_file = source if source.is_file() else source / FLICKR8K_TOKEN_FILE
        by_k = _flickr8k_captions(SourceFile(token_file))
        by_id = {f"{name}#{k}": c for name, caps in by_k.items() for k, c in caps.items()}
    else:
        by_id = {
            f"{Path(r.path).name}#{k}": c for r in corpus.images for k, c in enumerate(r.captions)
        }
    return DatasetCaptions(corpus, records, by_id)


# --- Flickr8k: tab-separated, captions by id ---------------------------------------------


def _first_fields(source: SourceFile) -> list[str]:
    first = next(source.lines(), (0, ""))[1]
    return first.rstrip("\r\n").split("\t")


def _sniff_expert(source: SourceFile) -> bool:
    fields = _first_fields(source)
    return len(fields) == 5 and all(f.strip() in ("1", "2", "3", "4") for f in fields[2:])


def _sniff_crowdflower(source: SourceFile) -> bool:
    return len(_first_fields(source)) == 5 and not _sniff_expert(source)


def _tab_lines(
    source: SourceFile, captions: CaptionIds, layout: str
) -> Iterator[tuple[int, str, str, str, list[str]]]:
    """(line, image, caption id, caption, the three value fields) of every line; each pair
    once."""
    seen: dict[tuple[str, str], int] = {}
    for line, text in source.lines():
        fields = [f.strip() for f in text.split("\t")]
        if len(fields) != 5:
            raise source.line_error(
                line, f"expected 5 tab-separated fields ({layout}), got {len(fields)}"
            )
        image, caption_id = fields[0], fields[1]
        if not image or (why := check_text(text)) is not None:
            raise source.line_error(line, why or "empty image name")
        if caption_id not in captions:
            raise source.line_error(
                line, f"caption id {caption_id!r} is not a caption of the dataset"
            )
        if (image, caption_id) in seen:
            raise source.line_error(
                line,
                f"pair {image} / {caption_id} already judged on line {seen[image, caption_id]}",
            )
        seen[image, caption_id] = line
        yield line, image, caption_id, captions[caption_id], fields[2:]


def _read_expert(source: SourceFile, captions: CaptionIds) -> list[JudgedPair]:
    pairs = []
    for line, image, cid, caption, values in _tab_lines(
        source, captions, "IMAGE, CAPTION_ID, e1..e3"
    ):
        if not all(v in ("1", "2", "3", "4") for v in values):
            raise source.line_error(line, f"expert scores must be integers 1..4, got {values}")
        pairs.append(JudgedPair(image, caption, [float(v) for v in values], line, cid))
    return pairs


def _read_crowdflower(source: SourceFile, captions: CaptionIds) -> list[JudgedPair]:
    pairs = []
    layout = "IMAGE, CAPTION_ID, percent_yes, n_yes, n_no"
    for line, image, cid, caption, values in _tab_lines(source, captions, layout):
        try:
            share, n_yes, n_no = float(values[0]), int(values[1]), int(values[2])
        except ValueError:
            raise source.line_error(
                line, f"expected percent_yes (a number), n_yes, n_no (integers), got {values}"
            ) from None
        if n_yes < 0 or n_no < 0 or n_yes + n_no == 0:
            raise source.line_error(line, f"vote counts must be >= 0, not both 0, got {values}")
        if abs(share - n_yes / (n_yes + n_no)) > 1e-6:
            raise source.line_error(
                line,
                f"percent_yes {values[0]} is not n_yes / (n_yes + n_no) = {n_yes}/{n_yes + n_no}",
            )
        pairs.append(JudgedPair(image, caption, [share], line, cid))
    return pairs


# --- CSV: captions as text ---------------------------------------------------------------

_CSV_COLUMNS = ("image", "caption", "score")


def _sniff_csv(source: SourceFile) -> bool:
    header = next(csv.reader([next(source.lines(), (0, ""))[1]]), [])
    return all(c in [h.strip().lower() for h in header] for c in _CSV_COLUMNS)


def _read_csv(source: SourceFile, captions: CaptionIds) -> list[JudgedPair]:
    reader = csv.reader(io.StringIO(source.text))
    header = [h.strip().lower() for h in next(reader, [])]
    if not all(c in header for c in _CSV_COLUMNS):
        raise source.line_error(
            1, f"CSV header must name columns image, caption, score, got {header}"
        )
    col = {c: header.index(c) for c in _CSV_COLUMNS}
    pairs: dict[tuple[str, str], JudgedPair] = {}
    for row in reader:
        line = reader.line_num
        if not any(f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise source.line_error(line, f"{len(row)} fields, the header has {len(header)}")
        image, caption = row[col["image"]].strip(), row[col["caption"]].strip()
        if not image:
            raise source.line_error(line, "empty image name")
        for text in (image, caption):
            if (why := check_text(text)) is not None:
                raise source.line_error(line, why)
        try:
            score = float(row[col["score"]])
        except ValueError:
            raise source.line_error(line, f"score {row[col['score']]!r} is not a number") from None
        if score != score or score in (float("inf"), float("-inf")):
            raise source.line_error(line, f"score {row[col['score']]!r} is not finite")
        pair = pairs.setdefault((image, caption), JudgedPair(image, caption, [], line))
        pair.ratings.append(score)
    return list(pairs.values())


EXPERT = Protocol(own_reference="drop_pair", tau_variant="c")
CROWDFLOWER = Protocol(own_reference="remove_from_references", tau_variant="b")
JUDGMENT_FORMATS: dict[str, JudgmentFormat] = {
    "expert": JudgmentFormat(EXPERT, _read_expert, _sniff_expert),
    "crowdflower": JudgmentFormat(CROWDFLOWER, _read_crowdflower, _sniff_crowdflower),
    # Free-form scores: CrowdFlower's rule (keep every pair, take judged captions out of the
    # references) and tau-b, which handles ties in continuous ratings.
    "csv": JudgmentFormat(CROWDFLOWER, _read_csv, _sniff_csv),
}
