"""Bootstrap confidence intervals and paired significance tests over the scored images
(Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation").

The images are resampled with replacement B times (seeded); every system is rescored on the
*same* resamples, so system differences are paired. A metric that is the mean of per-image
values is rescored by reweighting those values; a corpus metric that is not (BLEU pools
n-gram counts, METEOR aggregates the jar's statistics, fact precision is micro-averaged) is
recomputed from per-image sufficient statistics by its own group (`GroupScores.replicates`),
or listed in `SuiteResult.bootstrap_unavailable` with the reason.

- interval: the 2.5th and 97.5th percentiles of a system's B resampled scores;
- paired p: for systems A and B, the share of resamples in which A does not score higher than
  B (ties count half): small p means "A > B" held in nearly every resample; identical
  systems get 0.5. For a lower-is-better metric (MedR, CHAIR, Repetition) a small p still
  means A's number is higher.

What a resample keeps fixed: whatever a per-image value depends on beyond its image -- CIDEr-D's
document frequencies (from all the split's references) and retrieval's gallery (all the
split's images) -- stays that of the full split; only which images count, and how often,
changes. Diversity statistics of the whole caption set (Distinct-n, Vocabulary) are not
bootstrapped: a resample repeats captions, which alone lowers them.

A resample is held as counts (B, I): how often each image is drawn, so a mean is one matrix
product and a pooled statistic `counts @ stats`.

    resamples = Resamples.draw(n_images=1000, n_resamples=1000, seed=0)
    replicates = mean_replicates(per_image_cider, resamples)  # (B,)
    low, high = percentile_interval(replicates)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from finecap.metrics.results import SuiteResult

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Resamples:
    """B resamples of I images: `counts[b, i]` = times image i is drawn in resample b."""

    counts: np.ndarray  # (B, I) int
    seed: int

    @classmethod
    def draw(cls, n_images: int, n_resamples: int, seed: int = 0) -> Resamples:
        rng = np.random.default_rng(seed)
        drawn = rng.integers(0, n_images, size=(n_resamples, n_images))  # (B, I) image index
        flat = drawn + n_images * np.arange(n_resamples)[:, None]
        counts = np.bincount(flat.ravel(), minlength=n_resamples * n_images)
        return cls(counts.reshape(n_resamples, n_images), seed)

    def __len__(self) -> int:
        return len(self.counts)

    def describe(self) -> str:
        """The method, for settings."""
        return (
            f"{len(self)} resamples of the {self.counts.shape[1]} images with replacement (seed "
            f"{self.seed}), the same for every system; {CONFIDENCE:.0%} percentile intervals; "
            "paired p = share of resamples in which A does not score higher than B, ties "
            "counted half (Koehn 2004)"
        )

    def restrict(self, positions: Sequence[int]) -> Resamples:
        """The same resamples seen on a subset of the images (their columns)."""
        return Resamples(self.counts[:, list(positions)], self.seed)


def mean_replicates(values: np.ndarray, resamples: Resamples) -> np.ndarray:
    """(B,) mean of `values` (I,) on each resample; NaN values (the image does not count for
    the metric) are skipped, as the corpus score skips them."""
    valid = ~np.isnan(values)
    weight = resamples.counts @ valid.astype(np.float64)  # (B,)
    total = resamples.counts @ np.where(valid, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight


def ratio_replicates(num: np.ndarray, den: np.ndarray, resamples: Resamples) -> np.ndarray:
    """(B,) micro-average sum(num) / sum(den) on each resample (NaN where sum(den) is 0)."""
    top, bottom = resamples.counts @ num, resamples.counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / bottom, np.nan)


def median_replicates(values: np.ndarray, resamples: Resamples) -> np.ndarray:
    """(B,) `np.median` of `values` (I,) on each resample (numpy's rule for even counts)."""
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    cum = np.cumsum(resamples.counts[:, order], axis=1)  # (B, I)
    total = cum[:, -1]

    def kth(k: np.ndarray) -> np.ndarray:  # k-th smallest (1-based) of each resample
        return ranked[(cum < k[:, None]).sum(axis=1)]

    return (kth((total + 1) // 2) + kth(total // 2 + 1)) / 2


def percentile_interval(
    replicates: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The central `confidence` interval of the replicates' percentiles."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.nanpercentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def paired_p(replicates_a: np.ndarray, replicates_b: np.ndarray) -> float:
    """Share of resamples in which A does not score higher than B, ties counted half."""
    keep = ~(np.isnan(replicates_a) | np.isnan(replicates_b))
    a, b = replicates_a[keep], replicates_b[keep]
    if not len(a):
        return float("nan")
    return float(np.mean(a < b) + 0.5 * np.mean(a == b))


def intervals_of(
    replicates: Mapping[str, Mapping[str, np.ndarray]],
) -> dict[str, dict[str, list[float]]]:
    """{system: {metric: [low, high]}} from {system: {metric: (B,) replicates}}."""
    return {
        system: {m: list(percentile_interval(r)) for m, r in by_metric.items()}
        for system, by_metric in replicates.items()
    }


def paired_tests(
    scores: Mapping[str, Mapping[str, float]],
    replicates: Mapping[str, Mapping[str, np.ndarray]],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{A: {B: {metric: {"delta": A - B, "p": p(A > B)}}}} for each A listed before B."""
    names = list(replicates)
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = [m for m in replicates[a] if m in replicates[b]]
            out.setdefault(a, {})[b] = {
                m: {
                    "delta": scores[a][m] - scores[b][m],
                    "p": paired_p(replicates[a][m], replicates[b][m]),
                }
                for m in shared
            }
    return out


def format_intervals(result: SuiteResult) -> str:
    """Each system's 95 % interval per metric, on the main table's scale ("168.2-176.4")."""
    from finecap.report import format_value, table_columns

    columns = [m for m in table_columns(result) if any(m in i for i in result.intervals.values())]
    rows = [
        [name]
        + [
            "-".join(format_value(result, m, v) for v in intervals[m]) if m in intervals else "-"
            for m in columns
        ]
        for name, intervals in result.intervals.items()
    ]
    title = f"{CONFIDENCE:.0%} bootstrap intervals ({result.settings.get('bootstrap')} resamples)"
    return _grid(title, ["system", *columns], rows)


def format_paired(result: SuiteResult) -> str:
    """p of "A > B" per pair and metric (paired bootstrap; small: A higher in most resamples)."""
    from finecap.report import table_columns

    pairs = [(a, b, tests) for a, by_b in result.paired.items() for b, tests in by_b.items()]
    if not pairs:
        return ""
    columns = [m for m in table_columns(result) if any(m in t for _, _, t in pairs)]
    rows = [
        [f"{a} > {b}"] + [_p_value(tests[m]["p"]) if m in tests else "-" for m in columns]
        for a, b, tests in pairs
    ]
    return _grid("paired bootstrap p (A > B)", ["systems", *columns], rows)


def _p_value(p: float) -> str:
    if np.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _grid(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(" ".join(cells))
    return "\n".join([title, *lines])
