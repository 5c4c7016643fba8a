"""What a suite run found: `SuiteResult` (the `metrics.json` document) and `FoldedScores`,
which gathers each system's group outputs over the folds of a run and averages them.

Averaging over leave-one-out folds keeps each kind of metric what it is: a mean of per-image
values stays the mean of the folds' per-image means; a pooled metric (BLEU) is the mean of the
folds' corpus scores, and its bootstrap replicates the mean of the folds' replicates on the
same resamples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from finecap.metrics.bootstrap import Resamples, intervals_of, mean_replicates, paired_tests

if TYPE_CHECKING:
    from finecap.metrics.suite import GroupScores, MetricGroup


@dataclass
class SuiteResult:
    systems: dict[str, dict[str, float]]
    unavailable: dict[str, str]
    settings: dict[str, Any]
    seconds: dict[str, float]  # wall time per metric group, all systems together
    unscaled: frozenset[str] = frozenset()
    # Per-image values where a group gives them: system -> metric -> one value per image of
    # `image_ids` (None where undefined for that image); the report's samples show them.
    per_image: dict[str, dict[str, Sequence[float | None]]] = field(default_factory=dict)
    image_ids: list[int] = field(default_factory=list)
    # metric -> "mean of per_image", or how its corpus score is formed instead
    aggregation: dict[str, str] = field(default_factory=dict)
    # With bootstrap resamples: system -> metric -> (B,) resampled scores (not in the JSON),
    # their 95 % percentile [low, high], and the paired tests of `bootstrap.paired_tests`.
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    paired: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    bootstrap_unavailable: dict[str, str] = field(default_factory=dict)  # metric -> reason

    def to_json(self) -> dict[str, Any]:
        """The `metrics.json` document (NaN written as null)."""
        doc = {
            "systems": self.systems,
            "unavailable": self.unavailable,
            "settings": self.settings,
            "image_ids": self.image_ids,
            "per_image": self.per_image,
            "aggregation": self.aggregation,
        }
        if self.settings.get("bootstrap"):
            doc.update(
                intervals=nan_to_none(self.intervals),
                paired=nan_to_none(self.paired),
                bootstrap_unavailable=self.bootstrap_unavailable,
            )
        return doc


def nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value


class FoldedScores:
    """Scores of each system gathered over the folds, averaged by `finish`."""

    def __init__(self, names: Sequence[str], n_folds: int) -> None:
        self.n_folds = n_folds
        self.scores = {name: {} for name in names}  # name -> metric -> [score per fold]
        self.per_image = {name: {} for name in names}  # name -> metric -> [(I,) per fold]
        self.replicates = {name: {} for name in names}  # name -> metric -> [(B,) per fold]

    def add(self, name: str, group: MetricGroup, out: GroupScores, wanted: frozenset) -> None:
        """One fold's `out` of `group` for system `name` (the `wanted` metrics of it)."""
        for metric in group.metrics:
            if metric in wanted and metric in out.scores:
                self.scores[name].setdefault(metric, []).append(float(out.scores[metric]))
                for got, into in (
                    (out.per_image, self.per_image),
                    (out.replicates, self.replicates),
                ):
                    if metric in got:
                        into[name].setdefault(metric, []).append(np.asarray(got[metric], float))

    def finish(
        self, result: SuiteResult, groups: Iterable[MetricGroup], resamples: Resamples | None
    ) -> None:
        """Fill `result`'s scores, per-image values and aggregation with the means over the
        folds, and with `resamples` its replicates, intervals and paired tests."""
        not_means = {m: how for g in groups for m, how in g.not_means.items()}
        complete = lambda values: len(values) == self.n_folds  # noqa: E731
        for name, by_metric in self.scores.items():
            scores = {m: float(np.mean(v)) for m, v in by_metric.items() if complete(v)}
            result.systems[name] = scores
            per_image = {
                m: np.mean(v, axis=0)
                for m, v in self.per_image[name].items()
                if m in scores and complete(v)
            }
            result.per_image[name] = {m: nan_to_none(v.tolist()) for m, v in per_image.items()}
            for metric in scores:
                result.aggregation[metric] = not_means.get(metric) or (
                    "mean of per_image" if metric in per_image else "no per-image values"
                )
            if resamples is None:
                continue
            replicates = {
                m: np.mean(v, axis=0)
                for m, v in self.replicates[name].items()
                if m in scores and m in not_means and complete(v)
            }
            for metric, values in per_image.items():
                if metric not in not_means:
                    replicates[metric] = mean_replicates(values, resamples)
            result.replicates[name] = replicates
            for metric in (m for m in scores if m not in replicates):
                result.bootstrap_unavailable[metric] = not_means.get(metric, "no per-image values")
        if resamples is not None:
            result.intervals = intervals_of(result.replicates)
            result.paired = paired_tests(result.systems, result.replicates)


def check_means(group: MetricGroup, out: GroupScores, n: int) -> None:
    """Per-image values fit the images, and a metric not declared in `not_means` is their
    mean: a wrong declaration would make its bootstrap silently wrong."""
    for metric, values in out.per_image.items():
        if len(values) != n:
            raise ValueError(f"group {group.name!r}: {metric} has {len(values)} values, {n} images")
        if metric in group.not_means or metric not in out.scores or np.isnan(values).all():
            continue
        mean = float(np.nanmean(values))
        if not np.isclose(out.scores[metric], mean, rtol=1e-6, atol=1e-9):
            raise ValueError(
                f"group {group.name!r}: {metric} is {out.scores[metric]} but the mean of its "
                f"per-image values is {mean}; declare how it is formed in not_means"
            )
