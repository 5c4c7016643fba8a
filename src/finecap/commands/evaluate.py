"""`finecap evaluate`: score one or more systems' captions on a dataset split.

The work is `finecap.evaluation.evaluate` (the same call from Python); this module adds the
command line, the terminal table and where the files go.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from tyro.conf import arg

from finecap.config import NonNegativeInt
from finecap.evaluation import EvaluationConfig, InputError
from finecap.io import same_file
from finecap.metrics.judgments import FormatName

PROG = "finecap evaluate"


class EvaluateOptions(EvaluationConfig):
    """Score one or more systems' captions on a dataset split: n-gram, CLIP-S, retrieval,
    FineCapEval, scene facts, diversity by default; BERTScore and caption similarity on request
    (--metrics all, or name them). Predictions are COCO results files, one a system named after
    the file or NAME=FILE; image_id = the dataset's id of the image (Karpathy: cocoid, else
    imgid; Flickr8k: the position of the file name in the sorted list of its file names) or
    its file name, with or without the extension ("1000268201_693b08cb0e.jpg"). Writes
    metrics.json (scores, per-image scores, unavailable metrics with reasons, settings; with
    --bootstrap intervals and paired tests), prints the table (x100), and optionally an HTML
    report."""

    # Optional here, unlike in EvaluationConfig, so that --list-metrics needs nothing else;
    # the handler names whichever of them is missing.
    predictions: Annotated[list[str] | None, arg(metavar="[NAME=]FILE [...]")] = None
    """COCO results JSON, one a system; image_id the dataset's id of the image or its file name
    (required unless --reference-row)."""
    dataset: str | None = None
    """Karpathy-format dataset.json, or its folder (or COCO captions JSON) (required)."""
    metrics: Annotated[list[str] | None, arg(metavar="NAME[,NAME...]")] = None
    """Comma-separated metric or group names; `all`: every group (default: the default
    groups, all but the slow bertscore and similarity; see --list-metrics)."""
    out: str | None = None
    """Where to write metrics.json (default: only print the table)."""
    report: str | None = None
    """Also write a self-contained HTML report here."""
    report_samples: NonNegativeInt = 12
    """Images shown in the report."""
    paper_tables: bool = False
    """Report as Cho et al.'s tables (n-gram/embedding, retrieval, FineCapEval, degeneration,
    examples) even for one system (the default with several)."""
    single_table: bool = False
    """Report one table of every metric instead of Cho et al.'s tables."""
    list_metrics: bool = False
    """List the metric groups and exit."""
    judgments: str | None = None
    """Human judgments (Flickr8k ExpertAnnotations.txt / CrowdFlowerAnnotations.txt, or a CSV
    image,caption,score): report each metric's Kendall tau with them instead of scoring
    predictions; --dataset is then the captions they refer to (Flickr8k.token.txt)."""
    judgments_format: FormatName | None = None
    """Format of --judgments (default: recognised from its content)."""

    def evaluation_config(self) -> EvaluationConfig:
        """The library's settings: these options less the command's own."""
        settings = self.model_dump(include=set(EvaluationConfig.model_fields))
        settings["predictions"] = settings["predictions"] or []  # --reference-row alone
        return EvaluationConfig.load(settings, PROG)


def _print_metric_groups() -> int:
    from finecap.metrics.suite import list_metrics

    print("default: the groups marked default; --metrics all: every group")
    for g in list_metrics():
        needs = ", ".join(g.needs) or "-"
        selected = "default" if g.default else "on request"
        print(f"{g.name:12s} {selected:10s} needs {needs:20s} {', '.join(g.metrics)}")
        print(f"{'':12s} {g.description}")
    return 0


def _print_references(settings: dict) -> None:
    """ "references per image: good 4, Reference 4 (...)": what each row was scored against."""
    counts = settings.get("references_per_image", {})
    spans = {
        name: str(c["min"]) if c["min"] == c["max"] else f"{c['min']}-{c['max']}"
        for name, c in counts.items()
    }
    shown = ", ".join(f"{name} {span}" for name, span in spans.items())
    print(f"references per image: {shown} ({settings.get('references')})")


def _note(message: str) -> None:
    print(f"  {message}", file=sys.stderr)


def _check_outputs(options: EvaluateOptions, config: EvaluationConfig) -> None:
    """Refuse, before anything is scored, an output that would overwrite an input (a
    predictions file, the dataset, the FineCapEval CSV) or that is a folder."""
    from finecap.data.formats import dataset_files

    inputs = [path for _, path in config.systems()] + dataset_files(config.dataset)
    if config.finecapeval:
        inputs.append(Path(config.finecapeval))
    outputs = [("--out", Path(options.out))] if options.out else []
    if options.report:
        outputs.append(("--report", Path(options.report)))
    for flag, out in outputs:
        if out.is_dir():
            raise InputError(f"{flag} {out}: is a folder; name the file to write")
        clash = next((path for path in inputs if same_file(out, path)), None)
        if clash is not None:
            raise InputError(
                f"{flag} {out}: is an input ({clash}) and would be overwritten; "
                "write somewhere else"
            )
    if len(outputs) == 2 and same_file(outputs[0][1], outputs[1][1]):
        raise InputError(f"--out and --report name the same file ({options.out})")


# Options of a predictions evaluation that mean nothing with --judgments.
_NOT_WITH_JUDGMENTS = (
    "predictions",
    "report",
    "paper_tables",
    "single_table",
    "finecapeval",
    "reference_row",
    "leave_one_out",
    "allow_missing",
    "bootstrap",
    "features",
)


def _judgments_handler(options: EvaluateOptions) -> int:
    """`--judgments`: Kendall tau of each metric with human judgments (finecap.metrics.human)."""
    from finecap.data.formats import dataset_files
    from finecap.io import atomic_write_text
    from finecap.metrics.human import (
        JudgmentsConfig,
        correlate_with_humans,
        format_correlation_table,
    )

    given = [f"--{n.replace('_', '-')}" for n in _NOT_WITH_JUDGMENTS if getattr(options, n)]
    if given:
        raise InputError(f"{', '.join(given)}: not used with --judgments")
    if not options.dataset:
        raise InputError("--dataset required (the captions the judgments refer to)")
    config = JudgmentsConfig.load(
        options.model_dump(include=set(JudgmentsConfig.model_fields)), PROG
    )
    if options.out:
        out = Path(options.out)
        if out.is_dir():
            raise InputError(f"--out {out}: is a folder; name the file to write")
        inputs = [Path(options.judgments), *dataset_files(options.dataset)]
        if any(same_file(out, path) for path in inputs):
            raise InputError(f"--out {out}: is an input and would be overwritten")
    result = correlate_with_humans(config, log=_note)
    if options.out:
        atomic_write_text(options.out, json.dumps(result.to_json(), indent=2) + "\n")
    print(format_correlation_table(result))
    for metric, reason in result.unavailable.items():
        print(f"unavailable: {metric}: {reason}")
    if options.out:
        print(f"metrics: {options.out}")
    return 0


def handler(options: EvaluateOptions) -> int:
    from finecap.evaluation import evaluate, write_results
    from finecap.metrics.bootstrap import format_intervals, format_paired
    from finecap.report import format_table

    if options.list_metrics:
        return _print_metric_groups()
    if options.judgments:
        return _judgments_handler(options)
    needed = ("dataset",) if options.reference_row else ("predictions", "dataset")
    missing = [f"--{n}" for n in needed if not getattr(options, n)]
    if missing:
        raise InputError(f"{', '.join(missing)} required")
    if options.paper_tables and options.single_table:
        raise InputError("--paper-tables and --single-table: choose one")
    config = options.evaluation_config()
    _check_outputs(options, config)
    evaluation = evaluate(config, log=_note)
    # None: the paper's tables when there are several systems (finecap.report.render_report).
    layout = True if options.paper_tables else False if options.single_table else None
    write_results(evaluation, options.out, options.report, options.report_samples, layout)
    result = evaluation.result
    print(format_table(result))
    _print_references(result.settings)
    if result.intervals:
        print(format_intervals(result))
        if result.paired:
            print(format_paired(result))
        for metric, reason in result.bootstrap_unavailable.items():
            print(f"not bootstrapped: {metric}: {reason}")
    for metric, reason in result.unavailable.items():
        print(f"unavailable: {metric}: {reason}")
    if options.out:
        print(f"metrics: {options.out}")
    if options.report:
        print(f"report:  {options.report}")
    return 0


COMMANDS = {"evaluate": (EvaluateOptions, handler)}
