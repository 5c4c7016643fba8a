"""`finecap pairwise make|tally|judge`: blind A/B judgments of two systems' captions, by
people or by the ground-truth oracle."""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import tyro
from pydantic import Field
from tyro.conf import Positional

from finecap.config import PositiveInt, Settings
from finecap.errors import UserError
from finecap.io import named_path, same_file


class PairwiseMakeOptions(Settings):
    """Write an HTML page showing N images with the captions of A and B in random, hidden
    order; annotators choose the better caption on five criteria and save a judgments JSON
    file."""

    a: Annotated[str, tyro.conf.arg(metavar="[NAME=]FILE")]
    """System A's predictions (COCO results JSON), optionally named."""
    b: Annotated[str, tyro.conf.arg(metavar="[NAME=]FILE")]
    """System B's predictions."""
    out: Annotated[str, tyro.conf.arg(metavar="HTML")]
    """Page to write."""
    images: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
    """Image folder (without it: the dataset's own)."""
    dataset: str | None = None
    """dataset.json mapping image ids to files."""
    n: PositiveInt = 50
    """Images on the page."""
    seed: int = 0
    """Seed of the image sample and of the side each system is shown on."""
    allow_outside_root: bool = False
    """Embed images whose paths lead outside the image root (absolute, `..`, a symlink
    pointing out); by default such an image is an error."""


class PairwiseTallyOptions(Settings):
    """Win/lose/tie percentages per criterion from saved judgments files."""

    judgments: Positional[Annotated[list[str], tyro.conf.arg(metavar="FILE [FILE ...]")]] = Field(
        min_length=1
    )
    """Judgments JSON files (globs are expanded)."""


class PairwiseJudgeOptions(Settings):
    """Answer a page of `finecap pairwise make` without a person. With --oracle, each
    criterion goes to the caption with more correct minus wrong facts of its kind against the
    dataset's ground-truth scenes (finecap.scenes.oracle). Writes a judgments file that
    `finecap pairwise tally` reads like a person's."""

    page: Annotated[str, tyro.conf.arg(metavar="HTML")]
    """The page `finecap pairwise make` wrote."""
    dataset: str
    """The scenes world's dataset.json (its "scene" entries are the ground truth)."""
    out: Annotated[str, tyro.conf.arg(metavar="JSON")]
    """Judgments file to write."""
    oracle: bool = False
    """Judge by the ground-truth scene facts (the one judge so far; required)."""


def _image_files(folder: Path, ids: list[int | str], allow_outside: bool) -> dict[int | str, Path]:
    """Without a dataset: a file whose stem is the id, or ends in it as a number
    (COCO_val2014_000000522418.jpg for 522418). A symlink out of the folder is refused."""
    from finecap.data.formats import outside_root
    from finecap.data.images import iter_image_files

    by_stem: dict[str, Path] = {}
    for f in map(Path, iter_image_files(str(folder))):
        by_stem[f.stem] = f
        digits = re.search(r"(\d+)$", f.stem)
        if digits:
            by_stem.setdefault(str(int(digits.group(1))), f)
    paths = {i: by_stem[str(i)] for i in ids if str(i) in by_stem}
    for i, path in paths.items():
        why = None if allow_outside else outside_root(folder, path.name)
        if why is not None:
            raise UserError(
                f"{path} (image_id {i!r}) {why}, outside the image folder {folder} "
                "(pass --allow-outside-root to embed it anyway)"
            )
    return paths


def _check_out(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an output that would overwrite an input or is a folder."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the file to write")
    for path in inputs:
        if same_file(out, path):
            raise UserError(f"--out {out}: is an input ({path}) and would be overwritten")


def make_handler(options: PairwiseMakeOptions) -> int:
    from finecap.data.formats import dataset_files, load_corpus, load_predictions
    from finecap.pairwise import make_items, write_page

    (a_name, a_path), (b_name, b_path) = named_path(options.a), named_path(options.b)
    dataset_inputs = dataset_files(options.dataset) if options.dataset else []
    _check_out(Path(options.out), [a_path, b_path, *dataset_inputs])
    a, b = load_predictions(a_path), load_predictions(b_path)
    ids = [k for k in a if k in b]
    if options.dataset:
        corpus = load_corpus(
            options.dataset,
            image_root=options.images,
            allow_outside_root=options.allow_outside_root,
        )
        records = {str(r.image_id): r for r in corpus.images}
        unknown = [k for k in ids if str(k) not in records]
        if unknown:
            raise UserError(f"image_id {unknown[0]!r} (of {a_path}) is not in {options.dataset}")
        paths = {k: corpus.image_path(records[str(k)]) for k in ids}
    elif options.images:
        paths = _image_files(Path(options.images), ids, options.allow_outside_root)
    else:
        raise UserError("pass --images DIR or --dataset dataset.json to find the images")
    missing = [k for k, p in paths.items() if not p.is_file()] + [k for k in ids if k not in paths]
    if missing:
        raise UserError(f"{len(missing)} images not found (image_id {missing[0]!r}, ...)")
    try:
        items = make_items(a, b, paths, n=options.n, seed=options.seed)
    except ValueError as err:  # no image in common: the inputs' fault, not a bug
        raise UserError(str(err)) from None
    write_page(options.out, items, a_name, b_name, options.seed)
    print(f"{len(items)} images, A = {a_name}, B = {b_name}: {options.out}")
    return 0


def _note(message: str) -> None:
    print(f"finecap pairwise tally: {message}", file=sys.stderr)


def tally_handler(options: PairwiseTallyOptions) -> int:
    from finecap.pairwise import format_tally, load_judgment_files, tally

    files = [f for pattern in options.judgments for f in sorted(glob.glob(pattern)) or [pattern]]
    docs = load_judgment_files(files, note=_note)  # malformed: a JudgmentsError (a UserError)
    print(format_tally(tally(list(docs.values()), sources=list(docs))))
    return 0


def judge_handler(options: PairwiseJudgeOptions) -> int:
    from finecap.data.formats import dataset_files, load_corpus
    from finecap.io import atomic_write_text
    from finecap.pairwise import read_page
    from finecap.scenes.oracle import judge_page
    from finecap.scenes.world import as_scene

    if not options.oracle:
        raise UserError("name the judge: --oracle (answers from the ground-truth scenes)")
    _check_out(Path(options.out), [Path(options.page), *dataset_files(options.dataset)])
    page = read_page(options.page)
    corpus = load_corpus(options.dataset)
    scenes = {
        str(r.image_id): as_scene(r.extra["scene"]) for r in corpus.images if "scene" in r.extra
    }
    doc = judge_page(page, scenes)
    atomic_write_text(options.out, json.dumps(doc, indent=1) + "\n")
    print(f"{len(doc['items'])} items, A = {doc['a']}, B = {doc['b']}, oracle: {options.out}")
    return 0


COMMANDS = {
    "make": (PairwiseMakeOptions, make_handler),
    "tally": (PairwiseTallyOptions, tally_handler),
    "judge": (PairwiseJudgeOptions, judge_handler),
}
