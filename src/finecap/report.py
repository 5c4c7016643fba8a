"""Presenting evaluation results: the terminal table and a self-contained HTML report.

Both print metrics x100 as papers do, except those a metric group declares unscaled (MedR,
Vocabulary, Mean-Length). The HTML page embeds everything (images as base64 JPEG
thumbnails), so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from finecap.io import atomic_write_text
from finecap.metrics.suite import SuiteResult, list_metrics


@dataclass
class ReportSample:
    """One image shown in the report with its references and every system's caption."""

    image_id: int
    image_path: Path | None
    references: list[str]
    captions: dict[str, str]  # system name -> caption


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
     ("Facts-P", "Facts-R", "CHAIR-i", "CHAIR-s", *(f"Facts-{m}/{k}" for k in (
         "object", "color", "size", "pattern", "relation", "background") for m in "PR"))),
    ("Degeneration: repetition, diversity and length",
     ("Repetition", "Distinct-1", "Distinct-2", "Vocabulary", "Mean-Length", "Novel",
      "Caption-Similarity", "Caption-Similarity-max")),
]  # fmt: skip
SAMPLES_TITLE = {False: "Samples", True: "Table 3: examples, every system's caption"}


def _metrics_table(result: SuiteResult, columns: Sequence[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(m)}</th>" for m in columns)
    rows = []
    for name, scores in result.systems.items():
        cells = "".join(f"<td>{format_value(result, m, scores.get(m))}</td>" for m in columns)
        rows.append(f'<tr><td class="name">{esc(name)}</td>{cells}</tr>')
    notes = "".join(f"<p class='muted'>{esc(n)}</p>" for n in table_notes(result, columns))
    return f"{notes}<table class='metrics'><tr><th>system</th>{head}</tr>{''.join(rows)}</table>"


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
table.metrics { border-collapse: collapse; font-size: 0.9em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 0.3em 0.5em; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td.name { text-align: left; font-weight: 600; }
.sample { display: flex; gap: 1.5em; border-top: 1px solid #ddd; padding: 1em 0; }
.sample img { width: 256px; height: auto; object-fit: contain; }
.sample ul { margin: 0.2em 0 0.8em 1.2em; padding: 0; }
.system { margin: 0.2em 0; } .system b { display: inline-block; min-width: 9em; }
.muted { color: #777; font-size: 0.9em; }
"""


def render_report(
    result: SuiteResult,
    samples: Sequence[ReportSample],
    title: str = "finecap evaluation",
    paper_tables: bool = False,
) -> str:
    """The HTML page as a string: one table of every metric, or with `paper_tables` the
    tables of Cho et al. (PAPER_TABLES) and the samples as their Table 3."""
    esc = html.escape
    unavailable = "".join(
        f"<li><b>{esc(m)}</b>: {esc(reason)}</li>" for m, reason in result.unavailable.items()
    )
    settings = "".join(
        f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in result.settings.items()
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
        "<p class='muted'>Scores x100 except "
        f"{esc(', '.join(sorted(result.unscaled)) or 'none')}.</p>",
    ]
    if paper_tables:
        parts += _paper_tables(result)
    else:
        parts.append(_metrics_table(result, table_columns(result)))
    if unavailable:
        parts.append(f"<h2>Unavailable</h2><ul>{unavailable}</ul>")
    samples_html = "".join(_render_sample(s) for s in samples)
    parts.append(f"<h2>{SAMPLES_TITLE[paper_tables]}</h2>{samples_html}")
    parts.append(f"<h2>Settings</h2><ul class='muted'>{settings}</ul></body></html>\n")
    return "\n".join(parts)


def _render_sample(sample: ReportSample) -> str:
    esc = html.escape
    uri = image_data_uri(sample.image_path) if sample.image_path is not None else None
    image = (
        f"<img src='{uri}' alt='image {sample.image_id}'>"
        if uri
        else f"<div class='muted'>image {sample.image_id} not available</div>"
    )
    refs = "".join(f"<li>{esc(r)}</li>" for r in sample.references)
    systems = "".join(
        f"<div class='system'><b>{esc(name)}</b> {esc(caption) or '<i>(empty)</i>'}</div>"
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
    paper_tables: bool = False,
) -> None:
    """Write the self-contained HTML report atomically."""
    atomic_write_text(path, render_report(result, samples, title, paper_tables))


def pick_samples(
    image_ids: Sequence[int],
    image_paths: Sequence[Path] | None,
    references: Sequence[Sequence[str]],
    captions: Mapping[str, Sequence[str]],
    n: int = 12,
    seed: int = 0,
) -> list[ReportSample]:
    """A seeded random sample of `n` images with references and each system's caption."""
    import random

    order = sorted(random.Random(seed).sample(range(len(image_ids)), min(n, len(image_ids))))
    return [
        ReportSample(
            image_ids[i],
            Path(image_paths[i]) if image_paths is not None else None,
            list(references[i]),
            {name: caps[i] for name, caps in captions.items()},
        )
        for i in order
    ]
