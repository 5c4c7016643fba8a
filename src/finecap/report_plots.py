"""The report's figures, as self-contained PNG data: URIs (matplotlib, Agg, no pyplot state).

Each figure is drawn only when its metrics exist:

- `tradeoff_figure`: text-to-image R@1 against CIDEr-D, one labelled point a system -- the
  distinctiveness / n-gram-similarity trade-off of Cho et al. (2022), Fig. 1;
- `criteria_figure`: FineCapEval recall per criterion (background / object / relation);
- `facts_figure`: scene-fact recall and precision per kind (`Facts-R/<kind>`, `Facts-P/<kind>`);
- `curves_figure`: training curves read from Lightning CSVLogger files (`read_metric_log`):
  the SCST reward, validation CIDEr-D and the MLE loss per step.

Values are plotted on the tables' scale (x100 except unscaled metrics).
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from finecap.errors import MissingFileError, UserError
from finecap.metrics.finecapeval import CRITERIA as FINECAPEVAL_CRITERIA
from finecap.metrics.suite import SuiteResult
from finecap.scenes.facts import FACT_KINDS

# Logged keys plotted as training curves (train/tasks.py, train/scst.py): key -> (title, x100).
CURVE_KEYS: dict[str, tuple[str, bool]] = {
    "train/reward": ("SCST reward (train, mean of the samples)", False),
    "val/CIDEr": ("validation CIDEr-D (x100)", True),
    "train/xe": ("MLE cross-entropy (train)", False),
}


class MetricLogError(UserError, ValueError):
    """A training log is not a Lightning CSVLogger metrics.csv; the message names the file."""


@dataclass
class Figure:
    """One figure of the report: an anchor id, a caption and the PNG as a data: URI."""

    id: str
    title: str
    uri: str


def _new_figure(width: float, height: float, panels: int = 1, columns: int = 3):  # noqa: ANN202
    """A matplotlib Figure (no pyplot: no global state) and its `panels` axes, `columns` a
    row; `width` and `height` are one panel's, in inches (100 px each)."""
    from matplotlib.figure import Figure as MplFigure

    cols = min(panels, columns)
    rows = -(-panels // cols)
    fig = MplFigure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, list(axes[:panels])


def _legend(fig, axes) -> None:  # noqa: ANN001
    """One legend for the figure, right of its panels, so that no bar hides under it."""
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)


def _png_uri(fig) -> str:  # noqa: ANN001 (a matplotlib Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # Figure.savefig uses Agg: no backend to choose
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(systems: Sequence[str]) -> dict[str, tuple]:
    """The same colour for a system in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(systems)}


def _shown(result: SuiteResult, metric: str, value: float | None) -> float:
    if value is None:
        return math.nan
    return value if metric in result.unscaled else 100 * value


def tradeoff_figure(result: SuiteResult) -> Figure | None:
    """R@1 against CIDEr-D, a labelled point per system having both; None when none has."""
    points = {
        name: (_shown(result, "CIDEr", s["CIDEr"]), _shown(result, "R@1", s["R@1"]))
        for name, s in result.systems.items()
        if "CIDEr" in s and "R@1" in s
    }
    if not points:
        return None
    fig, (ax,) = _new_figure(6, 4.5)
    colors = _colors(list(result.systems))
    for name, (x, y) in points.items():
        ax.scatter([x], [y], color=colors[name], s=40, zorder=3)
        ax.annotate(name, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=9)
    ax.set_xlabel("CIDEr-D (x100)")
    ax.set_ylabel("text-to-image R@1 (x100)")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    title = "Distinctiveness vs n-gram similarity: retrieval R@1 against CIDEr-D"
    return Figure("figure-tradeoff", title, _png_uri(fig))


def _grouped_bars(ax, result: SuiteResult, labels: Sequence[str], metrics: Sequence[str]) -> None:  # noqa: ANN001
    """Bars of `metrics` (one group a label), one bar a system with any of them."""
    systems = [n for n, s in result.systems.items() if any(m in s for m in metrics)]
    colors = _colors(list(result.systems))
    width = 0.8 / max(len(systems), 1)
    for j, name in enumerate(systems):
        scores = result.systems[name]
        values = [_shown(result, m, scores.get(m)) for m in metrics]
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(metrics))]
        ax.bar(xs, values, width, label=name, color=colors[name])
    ax.set_xticks(range(len(labels)), labels)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _present(result: SuiteResult, metrics: Sequence[str]) -> bool:
    return any(m in s for s in result.systems.values() for m in metrics)


def criteria_figure(result: SuiteResult) -> Figure | None:
    """FineCapEval recall per criterion, grouped bars per system; None without FineCapEval."""
    metrics = [f"FineCapEval-{c}" for c in FINECAPEVAL_CRITERIA]
    if not _present(result, metrics):
        return None
    fig, axes = _new_figure(6, 4)
    _grouped_bars(axes[0], result, FINECAPEVAL_CRITERIA, metrics)
    axes[0].set_ylabel("FineCapEval recall (x100)")
    _legend(fig, axes)
    return Figure("figure-finecapeval", "FineCapEval: recall per criterion", _png_uri(fig))


def facts_figure(result: SuiteResult) -> Figure | None:
    """Scene-fact recall (and precision, beside it) per kind; None without scene facts."""
    panels = [
        (f"Facts-{m}", [f"Facts-{m}/{k}" for k in FACT_KINDS])
        for m in ("R", "P")
        if _present(result, [f"Facts-{m}/{k}" for k in FACT_KINDS])
    ]
    if not panels:
        return None
    fig, axes = _new_figure(5, 4, len(panels))
    for ax, (label, metrics) in zip(axes, panels, strict=True):
        _grouped_bars(ax, result, FACT_KINDS, metrics)
        ax.set_title({"Facts-R": "recall", "Facts-P": "precision"}[label])
        ax.set_ylabel(f"{label} (x100)")
        ax.tick_params(axis="x", labelrotation=30)
    _legend(fig, axes)
    title = "Scene facts per kind: recall (left) and precision against the ground-truth scenes"
    return Figure(
        "figure-facts", title if len(panels) == 2 else "Scene facts per kind", _png_uri(fig)
    )


# --------------------------------------------------------------------------- training curves


def run_metric_logs(run_dir: str | os.PathLike) -> list[Path]:
    """A training run's CSV logs, RUN/logs/version_N/metrics.csv in order of N (one a resumed
    start); [] when the run logged none (e.g. TensorBoard)."""
    logs = Path(run_dir) / "logs"
    found = [p for p in logs.glob("version_*/metrics.csv") if p.parent.name[8:].isdigit()]
    return sorted(found, key=lambda p: int(p.parent.name[8:]))


def read_metric_log(paths: Sequence[str | os.PathLike]) -> dict[str, list[tuple[int, float]]]:
    """{logged key: [(step, value), ...]} from CSVLogger files read in the given order (the
    versions of one run: resumed steps continue). Each row holds the keys logged at that
    step, the other cells empty."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise MissingFileError(f"{path}: no such training log (a CSVLogger metrics.csv)")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "step" not in (reader.fieldnames or []):
                raise MetricLogError(f"{path}: no 'step' column; not a Lightning metrics.csv")
            for line, row in enumerate(reader, start=2):
                try:
                    step = int(float(row["step"]))
                    values = {k: float(v) for k, v in row.items() if k in CURVE_KEYS and v}
                except (TypeError, ValueError):
                    raise MetricLogError(f"{path}: line {line}: a value is not a number") from None
                for key, value in values.items():
                    curves.setdefault(key, []).append((step, value))
    return curves


def curves_figure(
    curves: Mapping[str, Sequence[str | os.PathLike]], systems: Sequence[str] = ()
) -> Figure | None:
    """One panel per logged key of CURVE_KEYS, one line per system; None when nothing was
    logged. `curves`: system -> its run's metrics.csv files (`run_metric_logs`); `systems`:
    the order that gives each system its colour in the other figures."""
    logged = {name: read_metric_log(paths) for name, paths in curves.items()}
    keys = [k for k in CURVE_KEYS if any(k in c for c in logged.values())]
    if not keys:
        return None
    fig, axes = _new_figure(5, 3.6, len(keys), columns=2)
    colors = _colors([*systems, *(n for n in curves if n not in systems)])
    for ax, key in zip(axes, keys, strict=True):
        title, x100 = CURVE_KEYS[key]
        for name, series in logged.items():
            points = series.get(key, [])
            if points:
                steps, values = zip(*points, strict=True)
                shown = [100 * v for v in values] if x100 else values
                marker = "o" if len(points) < 30 else None  # validation: a few points
                ax.plot(steps, shown, label=name, color=colors[name], marker=marker, ms=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Figure("figure-curves", "Training curves", _png_uri(fig))


def report_figures(
    result: SuiteResult, curves: Mapping[str, Sequence[str | os.PathLike]] | None = None
) -> list[Figure]:
    """Every figure whose data exist, in the report's order."""
    figures = [tradeoff_figure(result), criteria_figure(result), facts_figure(result)]
    if curves:
        figures.append(curves_figure(curves, list(result.systems)))
    return [f for f in figures if f is not None]
