"""Presenting evaluation results: the terminal table and a self-contained HTML report.

Both print metrics x100 as papers do, except those a metric group declares unscaled (MedR,
Vocabulary, Mean-Length). The HTML page embeds everything (images as base64 JPEG
thumbnails, figures as PNG, `finecap.report_plots`), so it can be mailed or archived as one
file. Wide tables scroll inside their box with the system column kept in view; the best value
of each column is marked (the lowest for metrics a group declares `lower_is_better`).

    from finecap.report import pick_samples, write_report
    from finecap.report_plots import run_metric_logs

    write_report("report.html", result, pick_samples(ids, paths, refs, captions),
                 curves={"SCST": run_metric_logs("runs/scst")})  # training curves, optional
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finecap.io import atomic_write_text
from finecap.metrics.suite import SuiteResult, list_metrics
from finecap.report_plots import Figure, report_figures


@dataclass
class ReportSample:
    """One image shown in the report with its references and every system's caption."""

    image_id: int
    image_path: Path | None
    references: list[str]
    captions: dict[str, str]  # system name -> caption
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)  # system -> metric


def table_columns(result: SuiteResult) -> list[str]:
    """Metrics present in the result, in registry order."""
    order = [m for g in list_metrics() for m in g.metrics]
    present = {m for scores in result.systems.values() for m in scores}
    return [m for m in order if m in present] + sorted(present - set(order))


def format_value(result: SuiteResult, metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    shown = value if metric in result.unscaled else 100 * value
    return f"{shown:.0f}" if metric == "Vocabulary" else f"{shown:.1f}"


# Metric groups whose numbers depend on a choice the column name does not show: the tables
# holding them say it, from the setting the group writes (group -> (label, settings key)).
TABLE_NOTES = {
    "bertscore": ("BERTScore", "bertscore_setup"),
    "finecapeval": ("FineCapEval", "finecapeval_rule"),
}


def table_notes(result: SuiteResult, columns: Sequence[str]) -> list[str]:
    """Lines such as "BERTScore: roberta-large, layer 17, ..." for the groups in `columns`."""
    shown = set(columns)
    notes = []
    for group in list_metrics():
        label, key = TABLE_NOTES.get(group.name, ("", ""))
        if key and shown & set(group.metrics) and result.settings.get(key):
            notes.append(f"{label}: {result.settings[key]}")
    return notes


def format_table(result: SuiteResult) -> str:
    """Systems as rows, metrics as columns; x100 except unscaled metrics. Notes naming the
    BERTScore encoder and the FineCapEval rule come first."""
    columns = table_columns(result)
    name_w = max([len("system")] + [len(s) for s in result.systems])
    widths = [max(len(m), 5) for m in columns]
    header = ["system".ljust(name_w)] + [m.rjust(w) for m, w in zip(columns, widths, strict=True)]
    lines = [*table_notes(result, columns), " ".join(header)]
    for name, scores in result.systems.items():
        cells = [
            format_value(result, m, scores.get(m)).rjust(w)
            for m, w in zip(columns, widths, strict=True)
        ]
        lines.append(" ".join([name.ljust(name_w)] + cells))
    return "\n".join(lines)


def image_data_uri(path: str | os.PathLike, max_side: int = 256) -> str | None:
    """A JPEG thumbnail of the image as a data: URI, or None when it cannot be read."""
    from finecap.data.images import ImageLoadError, load_image

    try:
        image = load_image(path)
    except ImageLoadError:
        return None
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# The tables of Cho et al. (2022), for `finecap evaluate --paper-tables` (and `reproduce`):
# (title, metrics); metrics a run did not compute are left out, the others follow.
PAPER_TABLES: list[tuple[str, tuple[str, ...]]] = [
    ("Table 1: n-gram and embedding metrics",
     ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "BERTScore", "CLIP-S", "RefCLIP-S")),
    ("Table 2: text-to-image retrieval with the captions as queries",
     ("R@1", "R@5", "R@10", "MedR", "I2T-R@1", "I2T-R@5", "I2T-R@10", "I2T-MedR")),
    ("FineCapEval: fine-grained recall", tuple(
        f"FineCapEval-{m}" for m in ("background", "object", "relation", "overall-BLEU-4",
                                     "overall-ROUGE-L", "overall-CIDEr"))),
    ("Scene facts: precision and recall against the ground truth, hallucination (CHAIR)",
     ("Facts-P", "Facts-R", "CHAIR-i", "CHAIR-s", "Salient", "Shapeless",
      *(f"Facts-{m}/{k}" for k in (
          "object", "color", "size", "pattern", "relation", "background") for m in "PR"))),
    ("Degeneration: repetition, diversity and length",
     ("Repetition", "Distinct-1", "Distinct-2", "Distinct-Captions", "Vocabulary", "Mean-Length",
      "Novel",
      "Caption-Similarity", "Caption-Similarity-max")),
]  # fmt: skip
SAMPLES_TITLE = {False: "Samples", True: "Table 3: examples, every system's caption"}


def best_systems(result: SuiteResult, metric: str) -> set[str]:
    """The systems showing the best value of `metric` as printed (ties: all of them); the
    lowest for `lower_is_better` metrics; none for `unranked` ones or when all are equal."""
    groups = [g for g in list_metrics() if metric in g.metrics]
    if any(metric in g.unranked for g in groups):
        return set()
    shown = {
        name: float(format_value(result, metric, scores[metric]))
        for name, scores in result.systems.items()
        if scores.get(metric) is not None and math.isfinite(scores[metric])
    }
    if len(set(shown.values())) < 2:
        return set()
    best = (min if any(metric in g.lower_is_better for g in groups) else max)(shown.values())
    return {name for name, value in shown.items() if value == best}


_BEST_CELL = "<td class='best'>"


def _metrics_table(result: SuiteResult, columns: Sequence[str]) -> str:
    """A table in a box that scrolls sideways when it is wider than the page."""
    esc = html.escape
    head = "".join(f"<th>{esc(m)}</th>" for m in columns)
    best = {m: best_systems(result, m) for m in columns}
    rows = []
    for name, scores in result.systems.items():
        cells = "".join(
            (_BEST_CELL if name in best[m] else "<td>")
            + f"{format_value(result, m, scores.get(m))}</td>"
            for m in columns
        )
        rows.append(f'<tr><td class="name">{esc(name)}</td>{cells}</tr>')
    notes = "".join(f"<p class='muted'>{esc(n)}</p>" for n in table_notes(result, columns))
    return (
        f"{notes}<div class='table-scroll'><table class='metrics'><tr><th>system</th>{head}</tr>"
        f"{''.join(rows)}</table></div>"
    )


def _paper_tables(result: SuiteResult) -> list[str]:
    """One titled table per entry of PAPER_TABLES, then the metrics no table named."""
    present = table_columns(result)
    parts, used = [], set()
    for title, metrics in PAPER_TABLES:
        columns = [m for m in metrics if m in present]
        used.update(columns)
        if columns:
            parts.append(f"<h2>{html.escape(title)}</h2>{_metrics_table(result, columns)}")
    rest = [m for m in present if m not in used]
    if rest:
        parts.append(f"<h2>Other metrics</h2>{_metrics_table(result, rest)}")
    return parts


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.table-scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0 1.2em; }
table.metrics { border-collapse: separate; border-spacing: 0; font-size: 0.9em;
  border-top: 1px solid #ccc; border-left: 1px solid #ccc; }
table.metrics th, table.metrics td { border-right: 1px solid #ccc;
  border-bottom: 1px solid #ccc; padding: 0.3em 0.5em; white-space: nowrap; }
table.metrics th { background: #f4f4f4; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics tr > :first-child { position: sticky; left: 0; z-index: 1; background: #fff;
  text-align: left; font-weight: 600; box-shadow: 1px 0 0 #ccc; }
table.metrics tr:first-child > :first-child { background: #f4f4f4; }
table.metrics td.best { font-weight: 700; background: #e6f2e6; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
.sample { display: flex; gap: 1.5em; border-top: 1px solid #ddd; padding: 1em 0; }
.sample > div:last-child { min-width: 0; }
.sample img { width: 256px; height: auto; object-fit: contain; }
.sample ul { margin: 0.2em 0 0.8em 1.2em; padding: 0; }
.system { margin: 0.2em 0; } .system b { display: inline-block; min-width: 9em; }
.scores { color: #777; font-size: 0.85em; margin-left: 0.6em; overflow-wrap: anywhere; }
.muted { color: #777; font-size: 0.9em; } li { overflow-wrap: anywhere; }
"""


def render_report(
    result: SuiteResult,
    samples: Sequence[ReportSample],
    title: str = "finecap evaluation",
    paper_tables: bool | None = None,
    curves: Mapping[str, Sequence[str | os.PathLike]] | None = None,
) -> str:
    """The HTML page as a string: the tables of Cho et al. (PAPER_TABLES) with the samples as
    their Table 3, or one table of every metric; `paper_tables` None: the paper's tables when
    there are several systems. Then the figures (`report_figures`; training curves from
    `curves`, system -> its run's CSV logs), unavailable metrics, samples, settings."""
    esc = html.escape
    if paper_tables is None:
        paper_tables = len(result.systems) > 1
    unavailable = "".join(
        f"<li><b>{esc(m)}</b>: {esc(reason)}</li>" for m, reason in result.unavailable.items()
    )
    settings = "".join(
        f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in result.settings.items()
    )
    lower = sorted(m for g in list_metrics() for m in g.lower_is_better)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
        "<p class='muted'>Scores x100 except "
        f"{esc(', '.join(sorted(result.unscaled)) or 'none')}. Shaded bold: the best of a "
        f"column (the lowest for {esc(', '.join(lower))}).</p>",
    ]
    if paper_tables:
        parts += _paper_tables(result)
    else:
        parts.append(_metrics_table(result, table_columns(result)))
    figures = report_figures(result, curves)
    if figures:
        parts.append("<h2>Figures</h2>" + "".join(_render_figure(f) for f in figures))
    if unavailable:
        parts.append(f"<h2>Unavailable</h2><ul>{unavailable}</ul>")
    columns = table_columns(result)
    samples_html = "".join(_render_sample(s, result, columns) for s in samples)
    parts.append(f"<h2>{SAMPLES_TITLE[paper_tables]}</h2>{samples_html}")
    parts.append(f"<h2>Settings</h2><ul class='muted'>{settings}</ul></body></html>\n")
    return "\n".join(parts)


def _render_figure(figure: Figure) -> str:
    esc = html.escape
    return (
        f"<figure id='{esc(figure.id)}'><img src='{figure.uri}' alt='{esc(figure.title)}'>"
        f"<figcaption>{esc(figure.title)}</figcaption></figure>"
    )


def _render_scores(result: SuiteResult, columns: Sequence[str], scores: Mapping) -> str:
    """ "CIDEr 112.3 · BLEU-4 40.1": an image's own scores, in the tables' column order."""
    order = [m for m in columns if m in scores] + sorted(set(scores) - set(columns))
    shown = [f"{html.escape(m)} {format_value(result, m, _finite(scores[m]))}" for m in order]
    return f"<span class='scores'>{' · '.join(shown)}</span>" if shown else ""


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _render_sample(sample: ReportSample, result: SuiteResult, columns: Sequence[str]) -> str:
    esc = html.escape
    uri = image_data_uri(sample.image_path) if sample.image_path is not None else None
    image = (
        f"<img src='{uri}' alt='image {sample.image_id}'>"
        if uri
        else f"<div class='muted'>image {sample.image_id} not available</div>"
    )
    refs = "".join(f"<li>{esc(r)}</li>" for r in sample.references)
    systems = "".join(
        f"<div class='system'><b>{esc(name)}</b> {esc(caption) or '<i>(empty)</i>'}"
        f"{_render_scores(result, columns, sample.scores.get(name, {}))}</div>"
        for name, caption in sample.captions.items()
    )
    return (
        f"<div class='sample' id='image-{sample.image_id}'><div>{image}</div><div>"
        f"<div class='muted'>image_id {sample.image_id}</div><b>References</b><ul>{refs}</ul>"
        f"{systems}</div></div>"
    )


def write_report(
    path: str | os.PathLike,
    result: SuiteResult,
    samples: Sequence[ReportSample],
    title: str = "finecap evaluation",
    paper_tables: bool | None = None,
    curves: Mapping[str, Sequence[str | os.PathLike]] | None = None,
) -> None:
    """Write the self-contained HTML report atomically (arguments: `render_report`)."""
    atomic_write_text(path, render_report(result, samples, title, paper_tables, curves))


def pick_samples(
    image_ids: Sequence[int],
    image_paths: Sequence[Path] | None,
    references: Sequence[Sequence[str]],
    captions: Mapping[str, Sequence[str]],
    n: int = 12,
    seed: int = 0,
    per_image: Mapping[str, Mapping[str, Sequence[float | None]]] | None = None,
) -> list[ReportSample]:
    """A seeded random sample of `n` images with references, each system's caption and, from
    `per_image` (system -> metric -> a value per image, as `SuiteResult.per_image`), its
    scores of that image."""
    import random

    per_image = per_image or {}
    order = sorted(random.Random(seed).sample(range(len(image_ids)), min(n, len(image_ids))))
    return [
        ReportSample(
            image_ids[i],
            Path(image_paths[i]) if image_paths is not None else None,
            list(references[i]),
            {name: caps[i] for name, caps in captions.items()},
            {
                name: {m: values[i] for m, values in per_image[name].items()}
                for name in captions
                if per_image.get(name)
            },
        )
        for i in order
    ]
