"""Evaluating captioning systems on a dataset split, from files: what `finecap evaluate` and
`finecap reproduce` run, callable from Python.

    from finecap.evaluation import EvaluationConfig, evaluate, write_results

    config = EvaluationConfig(predictions=["MLE=mle.json", "scst.json"], dataset="data/",
                              clip="runs/clip", metrics=["official", "clipscore"])
    evaluation = evaluate(config)
    evaluation.result.systems["MLE"]["CIDEr"]  # pycocoevalcap scale (1.123, not 112.3)
    write_results(evaluation, "metrics.json", report="report.html")

Predictions are COCO results files (`[{"image_id", "caption"}]`, image_id = the dataset's
id of the image or its file name: `finecap.data.predictions`); each file is a system named
after the file, or NAME with `NAME=path`. References come from a Karpathy-format dataset (or
any `load_corpus` format).

References of each row: by default every system is scored against all of an image's
references. A Reference row (`reference_row`) is one of the references scored like a system,
so every row is then scored against the *other* references: with `reference_row` alone the
Reference row is each image's first reference and all rows are scored against references
2..n; with `leave_one_out` every row is scored K times, fold k holding out each image's k-th
reference (K = the fewest references a scored image has; the Reference row is reference k),
and the scores are the means over the K folds -- the leave-one-out human consensus of
Vedantam et al. 2015 (CIDEr), applied to the systems too so that all rows compare.
`settings["references_per_image"]` records what each row was scored against.
Inputs that do not fit together (an empty split, an unknown metric, predictions for other
images, image files that are not there, image paths leading outside the image root) raise a
`finecap.errors.UserError` naming the file and the fault, before any model loads.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from finecap.config import PathStr
from finecap.data.predictions import PredictionsError, align_predictions
from finecap.errors import UserError
from finecap.io import named_path
from finecap.metrics.suite import (
    EvalData,
    SuiteConfig,
    SuiteResult,
    System,
    list_metrics,
    resolve_selection,
    run_folds,
)

__all__ = ["Evaluation", "EvaluationConfig", "InputError", "evaluate", "write_results"]

logger = logging.getLogger(__name__)


class InputError(UserError, ValueError):
    """The inputs of an evaluation do not fit together; the message says how."""


class EvaluationConfig(SuiteConfig):
    """What to score, on what, with which metrics (plus the suite's models and options)."""

    predictions: list[str] = Field(default_factory=list)
    """COCO results files, one a system: `FILE` (named after the file) or `NAME=FILE`; a
    mapping {NAME: FILE} is read as the same list. May be empty with `reference_row`."""
    dataset: PathStr
    """Karpathy-format dataset.json, or its folder (or COCO captions JSON)."""
    split: str = "test"
    """The split to score."""
    images: PathStr | None = None
    """Image root (default: the dataset's folder)."""
    allow_outside_root: bool = False
    """Read image paths of the dataset that lead outside the image root (absolute, `..`, a
    symlink pointing out); by default such an entry is an error."""
    finecapeval: PathStr | None = None
    """FineCapEval annotations (CSV) of the split's images."""
    metrics: list[str] | None = None
    """Metric or group names, comma-separated or as a list (default: the default groups, all
    but BERTScore and caption similarity; `all`: every group)."""
    reference_row: bool = False
    """Add a row 'Reference': each image's first reference (every reference in turn with
    `leave_one_out`); every row is then scored against the other references."""
    leave_one_out: bool = False
    """Score every row once per held-out reference k = 1..K against the other references and
    report the means over the K folds."""
    allow_missing: bool = False
    """Score only the images every system captioned instead of failing."""

    @field_validator("predictions", mode="before")
    @classmethod
    def _mapping_to_items(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [f"{name}={os.fspath(path)}" for name, path in value.items()]
        items = [value] if isinstance(value, str | os.PathLike) else value
        if not isinstance(items, list | tuple):
            return value  # let pydantic word the type error
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in items]

    @field_validator("metrics", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # "BLEU-4,CIDEr" is how the command line has always spelled a selection.
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value  # let pydantic word the type error
        names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
        return names or None

    def systems(self) -> list[tuple[str, Path]]:
        """(name, predictions file) per system, in the order given."""
        systems: list[tuple[str, Path]] = []
        for item in self.predictions:
            name, path = named_path(item)
            if name in {n for n, _ in systems}:
                raise PredictionsError(f"two systems are named {name!r}: use NAME=path")
            systems.append((name, path))
        return systems


@dataclass
class Evaluation:
    """An evaluation's scores and what they were computed on."""

    result: SuiteResult  # scores, unavailable metrics with reasons, settings
    data: EvalData  # the scored images (those every system covers), references
    systems: list[System]  # captions aligned with data.image_ids (and Reference, if asked)
    predictions: dict[str, Path]  # system name -> its predictions file
    image_paths: list[Path]  # every scored image's path, whether or not the file exists

    def to_json(self) -> dict[str, Any]:
        """The `metrics.json` document."""
        return self.result.to_json()


def evaluate(config: EvaluationConfig, log: Callable[[str], None] | None = None) -> Evaluation:
    """Load the predictions, dataset split and annotations `config` names, check they fit
    together, and score every system. `log` gets notes (ignored predictions, images left out,
    time per metric group); default: this module's logger at INFO."""
    log = log or logger.info
    if not (config.predictions or config.reference_row):
        raise InputError("nothing to score: give predictions files, or the Reference row alone")
    try:
        wanted = resolve_selection(config.metrics)  # unknown names fail before any loading
    except ValueError as err:
        raise InputError(str(err)) from None
    data, captions, given, paths = _inputs(config, wanted, log)
    folds = _folds(config, data, captions)
    result = run_folds(folds, data, config, config.metrics, log=log)
    result.settings.update(
        dataset=str(config.dataset),
        split=config.split,
        predictions={name: str(path) for name, path in given},
        finecapeval_file=config.finecapeval,
        **_reference_settings(config, data, folds),
    )
    return Evaluation(result, data, folds[0], dict(given), paths)


def write_results(
    evaluation: Evaluation,
    out: str | os.PathLike | None,
    report: str | os.PathLike | None = None,
    report_samples: int = 12,
    paper_tables: bool | None = None,
    curves: Mapping[str, Sequence[str | os.PathLike]] | None = None,
) -> None:
    """Write `metrics.json` to `out` (unless None) and, with `report`, the self-contained HTML
    report (`report_samples` images; `paper_tables`: Cho et al.'s tables or one table, None:
    the tables when there are several systems; `curves`: system -> its training run's CSV
    logs, `finecap.report_plots.run_metric_logs`). Both are written atomically: a reader never
    sees half a file."""
    from finecap.io import atomic_write_text

    if out is not None:
        atomic_write_text(out, metrics_json(evaluation.to_json()))
    if report is None:
        return
    from finecap.report import pick_samples, write_report

    data = evaluation.data
    captions = {s.name: s.captions for s in evaluation.systems}
    result = evaluation.result
    samples = pick_samples(
        data.image_ids,
        evaluation.image_paths,
        data.references,
        captions,
        n=report_samples,
        per_image=result.per_image,
    )
    write_report(report, result, samples, paper_tables=paper_tables, curves=curves)


_NUMBER_LIST = re.compile(r"\[\s+((?:-?[0-9.eE+-]+|null)(?:,\s+(?:-?[0-9.eE+-]+|null))*)\s+\]")


def metrics_json(doc: dict[str, Any]) -> str:
    """`doc` as indented JSON with each list of numbers on one line (per-image scores would
    otherwise take a line per image)."""
    text = json.dumps(doc, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


# --------------------------------------------------------------------------- inputs


def _inputs(
    config: EvaluationConfig, wanted: dict[str, frozenset[str]], log: Callable[[str], None]
) -> tuple[EvalData, dict[str, list[str]], list[tuple[str, Path]], list[Path]]:
    """The suite's inputs, each system's captions, (name, file) per predictions file, image
    paths."""
    from finecap.data.formats import load_corpus

    given = config.systems()
    corpus = load_corpus(  # a missing file: a UserError
        config.dataset, image_root=config.images, allow_outside_root=config.allow_outside_root
    )
    records = _split_records(corpus, config)
    aligned, covered = _align(given, corpus, records, config, log)
    paths = [corpus.image_path(r) for r in covered]  # one outside the root: a UserError
    _check_images(covered, paths, config, wanted)
    data = EvalData(
        image_ids=[r.image_id for r in covered],
        references=[list(r.captions) for r in covered],
        file_names=[r.path for r in covered],
        image_paths=paths if all(p.is_file() for p in paths) else None,
        train_captions=[c for r in corpus.split("train") for c in r.captions] or None,
        finecapeval=_finecapeval(config, covered),
        scenes=_scenes(config, covered),
    )
    captions = {name: [preds[i] for i in data.image_ids] for name, preds in aligned.items()}
    return data, captions, given, paths


REFERENCE_ROW = "Reference"


def _folds(
    config: EvaluationConfig, data: EvalData, captions: dict[str, list[str]]
) -> list[list[System]]:
    """The rows of each fold: one fold against all references, or one per held-out reference
    (the module docstring has the rule)."""
    if not (config.reference_row or config.leave_one_out):
        return [[System(name, caps) for name, caps in captions.items()]]
    if config.reference_row and REFERENCE_ROW in captions:
        raise InputError(f"a system is named {REFERENCE_ROW!r}: rename it (NAME=path)")
    fewest = min(len(refs) for refs in data.references)
    if fewest < 2:
        image_id = next(
            i for i, r in zip(data.image_ids, data.references, strict=True) if len(r) < 2
        )
        raise InputError(
            f"{config.dataset}: image_id {image_id} has one reference; holding one out for "
            "the Reference row or leave-one-out needs at least two per image"
        )
    folds = []
    for k in range(fewest if config.leave_one_out else 1):
        others = [refs[:k] + refs[k + 1 :] for refs in data.references]
        fold = [System(name, caps, others) for name, caps in captions.items()]
        if config.reference_row:
            fold.append(System(REFERENCE_ROW, [refs[k] for refs in data.references], others))
        folds.append(fold)
    return folds


def _reference_settings(
    config: EvaluationConfig, data: EvalData, folds: list[list[System]]
) -> dict[str, Any]:
    """What each row was scored against, for metrics.json and the table."""

    def counts(refs: list[list[str]]) -> dict[str, int]:
        return {"min": min(map(len, refs)), "max": max(map(len, refs))}

    if config.leave_one_out:
        row = "; the Reference row is reference k" if config.reference_row else ""
        rule = (
            f"leave-one-out: {len(folds)} folds, fold k scores every row against each image's "
            f"references less the k-th{row}; scores are the means over the folds"
        )
    elif config.reference_row:
        rule = "the Reference row is each image's first reference; every row is scored "
        rule += "against references 2..n"
    else:
        rule = "every row is scored against all of an image's references"
    return {
        "references": rule,
        "references_per_image": {s.name: counts(s.references or data.references) for s in folds[0]},
        "reference_folds": len(folds),
        "reference_row": config.reference_row,
        "leave_one_out": config.leave_one_out,
    }


def _split_records(corpus, config: EvaluationConfig) -> list:
    try:
        records = corpus.split(config.split)
    except ValueError as err:  # an unknown split name
        raise InputError(str(err)) from None
    if not records:
        present = ", ".join(sorted({r.split for r in corpus.images}))
        raise InputError(f"{config.dataset}: the {config.split} split is empty (splits: {present})")
    no_refs = [r.image_id for r in records if not r.captions]
    if no_refs:
        raise InputError(
            f"{config.dataset}: {len(no_refs)} {config.split} images have no reference captions "
            f"(image_id {', '.join(map(str, no_refs[:10]))})"
        )
    return records


def _align(
    given: Sequence[tuple[str, Path]], corpus, records, config: EvaluationConfig, log
) -> tuple[dict[str, dict[int, str]], list]:
    """Each system's {image_id: caption} and the split records every system covers."""
    from finecap.data.formats import load_predictions

    split_of = {r.image_id: r.split for r in corpus.images}
    names = corpus.ids_by_name()
    split_ids = [r.image_id for r in records]
    aligned: dict[str, dict[int, str]] = {}
    for name, path in given:
        preds, elsewhere = align_predictions(
            load_predictions(path),
            split_ids,
            split_of,
            str(path),
            config.split,
            config.allow_missing,
            names,
        )
        if elsewhere:
            log(f"{path}: ignoring {elsewhere} captions of images outside {config.split}")
        aligned[name] = preds
    covered = [r for r in records if all(r.image_id in p for p in aligned.values())]
    if not covered:
        raise InputError(f"no {config.split} image is captioned by every system")
    if len(covered) < len(records):
        log(f"scoring the {len(covered)} of {len(records)} images every system covers")
    return aligned, covered


def _check_images(covered, paths: list[Path], config: EvaluationConfig, wanted) -> None:
    """With a CLIP and an image metric selected, every image file must exist: a silently
    unavailable CLIP-S would be worse than an error naming the missing file."""
    image_groups = [g.name for g in list_metrics() if "images" in g.needs and g.name in wanted]
    if not (config.clip and image_groups) or config.features:  # a store stands for the files
        return
    absent = [(r.image_id, p) for r, p in zip(covered, paths, strict=True) if not p.is_file()]
    if absent:
        shown = "; ".join(f"image_id {i}: {p}" for i, p in absent[:5])
        raise InputError(f"{len(absent)} image files not found ({shown}); pass --images DIR")


def _finecapeval(config: EvaluationConfig, covered) -> dict | None:
    if not config.finecapeval:
        return None
    from finecap.metrics.finecapeval import load_finecapeval, match_images

    try:
        entries = load_finecapeval(config.finecapeval)
    except ValueError as err:  # missing columns, bad rows (a missing file is a UserError)
        raise InputError(str(err)) from None
    if not any(match_images(entries, [r.path for r in covered])):
        raise InputError(
            f"{config.finecapeval}: none of its {len(entries)} images is a {config.split} "
            "image of the dataset (rows match images by file name)"
        )
    return entries


def _scenes(config: EvaluationConfig, covered) -> list | None:
    """Each scored image's ground-truth `scene` (the scenes world), or None unless every one
    has it; a malformed entry is an error naming the image."""
    from finecap.scenes.world import as_scene

    if not all(isinstance(r.extra.get("scene"), dict) for r in covered):
        return None
    scenes = []
    for r in covered:
        try:
            scenes.append(as_scene(r.extra["scene"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f'{config.dataset}: image_id {r.image_id}: malformed "scene" entry ({err!r})'
            ) from None
    return scenes
