"""`finecap evaluate`: score one or more systems' captions on a dataset split.

Predictions are COCO results files (`[{"image_id", "caption"}]`, image_id = the dataset's
cocoid where it has one, else imgid); each file is a system named after the file, or NAME
with `NAME=path`. References come from a Karpathy-format dataset (or COCO captions JSON).
Writes `metrics.json` = {"systems": {NAME: {METRIC: value}}, "unavailable": {METRIC:
reason}, "settings": {...}} atomically, prints one table (x100), and optionally an HTML report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finecap.metrics.suite import (
    EvalData,
    PredictionsError,
    SuiteConfig,
    System,
    align_predictions,
    list_metrics,
    resolve_selection,
    run_suite,
)

PROG = "finecap evaluate"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score captions: n-gram, CLIP-S, retrieval, FineCapEval, BERTScore, diversity",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument(
        "--predictions", nargs="+", metavar="[NAME=]FILE", help="COCO results JSON, one a system"
    )
    p.add_argument("--dataset", help="Karpathy-format dataset.json (or COCO captions JSON)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--images", metavar="DIR", help="image root (default: the dataset's folder)")
    p.add_argument("--clip", metavar="MODEL", help="CLIP for CLIP-S and retrieval (name or dir)")
    p.add_argument(
        "--text-encoder", metavar="MODEL", help="BERTScore/similarity encoder (default: MiniLM)"
    )
    p.add_argument("--finecapeval", metavar="CSV", help="FineCapEval annotations")
    p.add_argument("--metrics", help="comma-separated metric or group names (default: all)")
    p.add_argument("--out", metavar="JSON", help="where to write metrics.json")
    p.add_argument("--report", metavar="HTML", help="also write a self-contained HTML report")
    p.add_argument("--report-samples", type=int, default=12, help="images in the report")
    p.add_argument(
        "--paper-tables",
        action="store_true",
        help="report as Cho et al.'s tables (n-gram/embedding, retrieval, FineCapEval, "
        "degeneration, examples) instead of one table",
    )
    p.add_argument("--refclip-variant", choices=("hessel", "cho"), default="hessel")
    p.add_argument(
        "--reference-row",
        action="store_true",
        help="add a system 'Reference': each image's first reference, scored against the others",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="score only the images every system captioned instead of failing",
    )
    p.add_argument("--bertscore-idf", action="store_true", help="idf weights from the references")
    p.add_argument("--bertscore-layers", type=int, default=None, help="encoder layer to use")
    p.add_argument("--clip-cache", metavar="FILE", help="safetensors cache of image embeddings")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--list-metrics", action="store_true", help="list metric groups and exit")
    p.set_defaults(func=handler)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _list_metrics() -> int:
    for g in list_metrics():
        needs = ", ".join(g.needs) or "-"
        print(f"{g.name:12s} needs {needs:20s} {', '.join(g.metrics)}")
        print(f"{'':12s} {g.description}")
    return 0


def _parse_systems(items: list[str]) -> list[tuple[str, Path]]:
    systems: list[tuple[str, Path]] = []
    for item in items:
        name, eq, path = item.partition("=")
        if not eq or not name or Path(item).exists():
            name, path = Path(item).stem, item
        if name in {n for n, _ in systems}:
            raise PredictionsError(f"two systems are named {name!r}: use NAME=path")
        systems.append((name, Path(path)))
    return systems


class InputError(ValueError):
    """The command line names inputs that do not fit together; the message says how."""


def handler(args: argparse.Namespace) -> int:
    if args.list_metrics:
        return _list_metrics()
    missing = [f"--{a}" for a in ("predictions", "dataset", "out") if not getattr(args, a)]
    if missing:
        return _fail(f"{', '.join(missing)} required")
    from finecap.clip.embed import ClipUnavailableError
    from finecap.data.formats import DatasetFormatError
    from finecap.data.images import ImageLoadError
    from finecap.metrics.bertscore import TextEncoderUnavailableError

    try:
        return _evaluate(args)
    except (
        InputError,
        PredictionsError,
        DatasetFormatError,
        FileNotFoundError,
        ClipUnavailableError,
        TextEncoderUnavailableError,
        ImageLoadError,
    ) as err:
        return _fail(str(err))


def _split_records(corpus, args: argparse.Namespace) -> list:
    try:
        records = corpus.split(args.split)
    except ValueError as err:
        raise InputError(str(err)) from err
    if not records:
        present = ", ".join(sorted({r.split for r in corpus.images}))
        raise InputError(f"{args.dataset}: the {args.split} split is empty (splits: {present})")
    no_refs = [r.image_id for r in records if not r.captions]
    if no_refs:
        raise InputError(
            f"{args.dataset}: {len(no_refs)} {args.split} images have no reference captions "
            f"(image_id {', '.join(map(str, no_refs[:10]))})"
        )
    return records


def _align(systems_given, corpus, records, args) -> tuple[dict[str, dict[int, str]], list]:
    """Each system's {image_id: caption} and the split records every system covers."""
    from finecap.data.formats import load_predictions

    split_of = {r.image_id: r.split for r in corpus.images}
    split_ids = [r.image_id for r in records]
    aligned: dict[str, dict[int, str]] = {}
    for name, path in systems_given:
        preds, elsewhere = align_predictions(
            load_predictions(path), split_ids, split_of, str(path), args.split, args.allow_missing
        )
        if elsewhere:
            print(f"{path}: ignoring {elsewhere} captions of images outside {args.split}")
        aligned[name] = preds
    covered = [r for r in records if all(r.image_id in p for p in aligned.values())]
    if not covered:
        raise InputError(f"no {args.split} image is captioned by every system")
    if len(covered) < len(records):
        print(f"scoring the {len(covered)} of {len(records)} images every system covers")
    return aligned, covered


def _check_images(covered, paths, args, wanted) -> None:
    """With --clip and an image metric selected, every image file must exist."""
    image_groups = [g.name for g in list_metrics() if "images" in g.needs and g.name in wanted]
    if not (args.clip and image_groups):
        return
    absent = [(r.image_id, p) for r, p in zip(covered, paths, strict=True) if not p.is_file()]
    if absent:
        shown = "; ".join(f"image_id {i}: {p}" for i, p in absent[:5])
        raise InputError(f"{len(absent)} image files not found ({shown}); pass --images DIR")


def _finecapeval(args, covered) -> dict | None:
    if not args.finecapeval:
        return None
    from finecap.metrics.finecapeval import load_finecapeval, match_images

    entries = load_finecapeval(args.finecapeval)
    if not any(match_images(entries, [r.path for r in covered])):
        raise InputError(
            f"{args.finecapeval}: none of its {len(entries)} images is a {args.split} "
            "image of the dataset (rows match images by file name)"
        )
    return entries


def _build_inputs(args, wanted) -> tuple[EvalData, list[System], list[tuple[str, Path]], list]:
    """The suite's inputs, the systems, (name, file) per predictions file, image paths."""
    from finecap.data.formats import load_corpus

    systems_given = _parse_systems(args.predictions)
    corpus = load_corpus(args.dataset, image_root=args.images)
    records = _split_records(corpus, args)
    aligned, covered = _align(systems_given, corpus, records, args)
    paths = [corpus.image_path(r) for r in covered]
    _check_images(covered, paths, args, wanted)
    data = EvalData(
        image_ids=[r.image_id for r in covered],
        references=[list(r.captions) for r in covered],
        file_names=[r.path for r in covered],
        image_paths=paths if all(p.is_file() for p in paths) else None,
        train_captions=[c for r in corpus.split("train") for c in r.captions] or None,
        finecapeval=_finecapeval(args, covered),
    )
    systems = [System(name, [preds[i] for i in data.image_ids]) for name, preds in aligned.items()]
    if args.reference_row:
        # The first reference is the "system", scored against the remaining ones.
        first = [refs[0] for refs in data.references]
        systems.append(System("Reference", first, [r[1:] or r for r in data.references]))
    return data, systems, systems_given, paths


def _evaluate(args: argparse.Namespace) -> int:
    from finecap.io import atomic_write_text
    from finecap.report import format_table, pick_samples, write_report

    selection = [m for m in (args.metrics or "").split(",") if m.strip()] or None
    try:
        wanted = resolve_selection(selection)  # fails early on unknown names
    except ValueError as err:
        raise InputError(str(err)) from err
    data, systems, systems_given, paths = _build_inputs(args, wanted)
    config = SuiteConfig(
        clip=args.clip,
        text_encoder=args.text_encoder,
        refclip_variant=args.refclip_variant,
        bertscore_idf=args.bertscore_idf,
        bertscore_layers=args.bertscore_layers,
        batch_size=args.batch_size,
        clip_cache=args.clip_cache,
    )
    log = lambda msg: print(f"  {msg}", file=sys.stderr)  # noqa: E731
    result = run_suite(systems, data, config, selection, log=log)
    result.settings.update(
        dataset=str(args.dataset),
        split=args.split,
        predictions={name: str(path) for name, path in systems_given},
        finecapeval_file=args.finecapeval,
        reference_row="first reference vs the others" if args.reference_row else None,
    )
    atomic_write_text(args.out, json.dumps(result.to_json(), indent=2) + "\n")
    print(format_table(result))
    for metric, reason in result.unavailable.items():
        print(f"unavailable: {metric}: {reason}")
    if args.report:
        captions = {s.name: s.captions for s in systems}
        samples = pick_samples(
            data.image_ids, paths, data.references, captions, n=args.report_samples
        )
        write_report(args.report, result, samples, paper_tables=args.paper_tables)
    print(f"metrics: {args.out}" + (f"\nreport:  {args.report}" if args.report else ""))
    return 0
