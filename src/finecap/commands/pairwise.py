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
    order, and its key beside it; annotators choose the better caption on five criteria and
    save a judgments JSON file. Images both systems caption the same are left off the page
    and counted as ties. Without --images and --dataset the page is text only."""

    a: Annotated[str, tyro.conf.arg(metavar="[NAME=]FILE")]
    """System A's predictions (COCO results JSON), optionally named."""
    b: Annotated[str, tyro.conf.arg(metavar="[NAME=]FILE")]
    """System B's predictions, optionally named."""
    out: Annotated[str, tyro.conf.arg(metavar="HTML")] = "pairwise.html"
    """Page to write (send it to the annotators)."""
    key: Annotated[
        str | None, tyro.conf.arg(metavar="JSON", help_behavior_hint="(default: PAGE.key.json)")
    ] = None
    """Key to write (A's side per item, identical pairs): tally needs it, annotators must not."""
    images: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
    """Image folder, files named by image id (with --dataset: its root); neither: text only."""
    dataset: Annotated[str | None, tyro.conf.arg(metavar="JSON")] = None
    """dataset.json (Karpathy format) mapping image ids to image files."""
    n: PositiveInt = 50
    """Images to sample (identical pairs among them are left off the page)."""
    seed: int = 0
    """Seed of the image sample and of the side each system is shown on."""
    allow_outside_root: bool = False
    """Embed images whose paths lead outside the image root (absolute, `..`, a symlink out)."""


class PairwiseTallyOptions(Settings):
    """Un-blind saved judgments with the page's key: win/lose/tie percentages per criterion,
    a sign test over items, Fleiss' kappa across annotators, and one row per annotator."""

    judgments: Positional[
        Annotated[list[str], tyro.conf.arg(metavar="FILE [FILE ...]", help_behavior_hint="")]
    ] = Field(min_length=1)
    """Judgments files, one per annotator (globs expanded; the same answers twice count once)."""
    key: Annotated[
        str | None,
        tyro.conf.arg(
            metavar="JSON", help_behavior_hint="(default: the one they name, beside them or here)"
        ),
    ] = None
    """The key `pairwise make` wrote beside the page judged."""


class PairwiseJudgeOptions(Settings):
    """Answer a page of `finecap pairwise make` without a person. With --oracle, each
    criterion goes to the caption with more correct minus wrong facts of its kind against the
    dataset's ground-truth scenes (finecap.scenes.oracle). Writes a judgments file that
    `finecap pairwise tally` reads like a person's."""

    page: Annotated[str, tyro.conf.arg(metavar="HTML")]
    """The page `finecap pairwise make` wrote."""
    dataset: Annotated[str, tyro.conf.arg(metavar="JSON")]
    """The scenes world's dataset.json (its "scene" entries are the ground truth)."""
    out: Annotated[str, tyro.conf.arg(metavar="JSON")] = "judgments.json"
    """Judgments file to write."""
    key: Annotated[
        str | None,
        tyro.conf.arg(metavar="JSON", help_behavior_hint="(default: the one beside the page)"),
    ] = None
    """The page's key, checked to belong to the page."""
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


def _check_out(out: Path, inputs: list[Path], flag: str = "--out") -> None:
    """Refuse, before any work, an output that would overwrite an input or is a folder."""
    if out.is_dir():
        raise UserError(f"{flag} {out}: is a folder; name the file to write")
    for path in inputs:
        if same_file(out, path):
            raise UserError(f"{flag} {out}: is an input ({path}) and would be overwritten")


def make_handler(options: PairwiseMakeOptions) -> int:
    from finecap.data.formats import dataset_files, load_corpus, load_predictions
    from finecap.pairwise import key_path_for, make_sample, write_study

    (a_name, a_path), (b_name, b_path) = named_path(options.a), named_path(options.b)
    page = Path(options.out)
    key = Path(options.key) if options.key else key_path_for(page)
    inputs = [a_path, b_path, *(dataset_files(options.dataset) if options.dataset else [])]
    _check_out(page, inputs)
    _check_out(key, [*inputs, page], "--key")
    a, b = load_predictions(a_path), load_predictions(b_path)
    ids = [k for k in a if k in b]
    paths: dict[int | str, Path] | None = None  # None: a text-only page
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
    if paths is not None:
        missing = [k for k, p in paths.items() if not p.is_file()]
        missing += [k for k in ids if k not in paths]
        if missing:
            raise UserError(
                f"{len(missing)} images not found (image_id {missing[0]!r}, ...); "
                "without --images and --dataset the page is text only"
            )
    try:
        sample = make_sample(a, b, paths, n=options.n, seed=options.seed)
    except ValueError as err:  # no image in common: the inputs' fault, not a bug
        raise UserError(str(err)) from None
    if not sample.items:
        raise UserError(
            f"all {len(sample.identical)} sampled images have the same caption from both "
            "systems: nothing to judge"
        )
    write_study(page, key, sample, a_name, b_name)
    same = f" (+ {len(sample.identical)} identical pairs, ties)" if sample.identical else ""
    text = ", text only (no --images or --dataset)" if paths is None else ""
    print(f"{len(sample.items)} images{same}, A = {a_name}, B = {b_name}: {page}{text}")
    print(f"key (keep it from the annotators; tally needs it): {key}")
    return 0


def _note(message: str) -> None:
    print(f"finecap pairwise tally: {message}", file=sys.stderr)


def _named_key(docs: dict[str, dict]) -> Path:
    """The key the judgments name (a file name), beside the first judgments file that names
    one or in the current folder."""
    for where, doc in docs.items():
        if isinstance(doc.get("key"), str) and doc["key"]:
            name = Path(doc["key"]).name  # a file name only, wherever the file came from
            for path in (Path(where).parent / name, Path(name)):
                if path.is_file():
                    return path
            raise UserError(
                f"{name} (the key {where} names) is neither beside it nor in the current "
                "folder: pass --key FILE"
            )
    raise UserError("the judgments name no key: pass --key FILE (written beside the page)")


def tally_handler(options: PairwiseTallyOptions) -> int:
    from finecap.pairwise import load_judgment_files, read_key
    from finecap.pairwise_tally import format_tally, tally

    files = [f for pattern in options.judgments for f in sorted(glob.glob(pattern)) or [pattern]]
    docs = load_judgment_files(files, note=_note)  # malformed: a PairwiseError (a UserError)
    key = read_key(options.key or _named_key(docs))
    print(format_tally(tally(key, docs)))
    return 0


def judge_handler(options: PairwiseJudgeOptions) -> int:
    from finecap.data.formats import dataset_files, load_corpus
    from finecap.io import atomic_write_text
    from finecap.pairwise import PairwiseError, read_key, read_page
    from finecap.scenes.oracle import judge_page
    from finecap.scenes.world import as_scene

    if not options.oracle:
        raise UserError("name the judge: --oracle (answers from the ground-truth scenes)")
    page_path, out = Path(options.page), Path(options.out)
    _check_out(out, [page_path, *dataset_files(options.dataset)])
    page = read_page(page_path)
    key_path = Path(options.key) if options.key else page_path.parent / Path(page["key"]).name
    _check_out(out, [key_path])
    key = read_key(key_path)
    if key.page_id != page["page_id"]:
        raise PairwiseError(
            f"{key_path}: the key of page {key.page_id}, not of {page_path} "
            f"(page {page['page_id']})"
        )
    corpus = load_corpus(options.dataset)
    scenes = {
        str(r.image_id): as_scene(r.extra["scene"]) for r in corpus.images if "scene" in r.extra
    }
    doc = judge_page(page, scenes)
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"{len(doc['items'])} items, A = {key.a}, B = {key.b}, oracle: {out}")
    return 0


COMMANDS = {
    "make": (PairwiseMakeOptions, make_handler),
    "tally": (PairwiseTallyOptions, tally_handler),
    "judge": (PairwiseJudgeOptions, judge_handler),
}
