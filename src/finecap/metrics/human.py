"""Metric meta-evaluation: Kendall tau between per-caption metric values and human judgments.

The protocol of Hessel et al. 2021 ("CLIPScore", appendix A and their `flickr8k_example/`
scripts), after Anderson et al. 2016 (SPICE), on Flickr8k (Hodosh et al. 2013):

- Flickr8k-Expert: drop a pair whose caption is one of its image's references; references are
  the image's five captions; each of the three expert ratings is one observation (the pair's
  metric value repeated for each); Kendall tau-c.
- Flickr8k-CrowdFlower: keep every pair; a judged caption that is one of its image's
  references is taken out of them, for every pair of that image (Hessel's `download.py` edits
  one reference list per image), so all of an image's candidates meet the same references;
  rating = percent_yes; Kendall tau-b. Leaving the caption out of its own pair's references
  only would give other numbers (CIDEr 25.5 instead of 24.6 x100, BLEU-4 17.3 instead of 16.9).
- Metrics per caption from pycocoevalcap (`finecap.metrics.official`: PTB tokenizer, BLEU's
  per-caption scores, METEOR 1.5, ROUGE-L, CIDEr = CIDEr-D with document frequencies over the
  references of all pairs, SPICE when its jars are there); CLIP-S and RefCLIP-S from
  `finecap.metrics.clipscore` with the given CLIP and images.

"One of its references" compares caption text (whitespace collapsed), as Hessel's scripts do,
not caption ids: a different image's caption with the same words counts too. The file formats
are `finecap.metrics.judgments`.

    config = JudgmentsConfig(judgments="ExpertAnnotations.txt", dataset="Flickr8k.token.txt")
    result = correlate_with_humans(config)
    result.correlations["CIDEr"].tau  # 0.439 on Flickr8k-Expert
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finecap.config import PathStr
from finecap.data.formats import DatasetFormatError
from finecap.metrics.judgments import (
    FormatName,
    JudgedPair,
    Judgments,
    JudgmentsError,
    TauVariant,
    dataset_captions,
    load_judgments,
)
from finecap.metrics.suite import NEED_REASONS, SuiteConfig, resolve_selection

OFFICIAL = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CLIP_METRICS = ("CLIP-S", "RefCLIP-S")
HUMAN_METRICS = OFFICIAL + CLIP_METRICS
"""The metrics correlated with judgments (per-caption values), in table order."""


class JudgmentsConfig(SuiteConfig):
    """Which judgments, against which dataset's references, with which metrics."""

    judgments: PathStr
    """Human judgments: Flickr8k ExpertAnnotations.txt / CrowdFlowerAnnotations.txt, or a CSV
    with columns image,caption,score."""
    dataset: PathStr
    """The captions the judged caption ids and references come from (Flickr8k.token.txt, its
    folder, or any dataset `load_corpus` reads)."""
    judgments_format: FormatName | None = None
    """Format of the judgments file (default: recognised from its content)."""
    images: PathStr | None = None
    """Image root for CLIP-S (default: the dataset's folder)."""
    allow_outside_root: bool = False
    """Read image paths that lead outside the image root."""
    metrics: list[str] | None = None
    """Metric or group names (default: every metric of `HUMAN_METRICS`)."""


@dataclass(frozen=True)
class Correlation:
    tau: float
    variant: TauVariant
    n: int  # observations (ratings)

    def to_json(self) -> dict[str, Any]:
        return {"tau": self.tau, "variant": self.variant, "n": self.n}


@dataclass
class ProtocolItems:
    """The pairs a protocol scores, each with its references; `dropped` pairs were left out."""

    judgments: Judgments
    pairs: list[JudgedPair]  # in file order
    references: list[list[str]]
    dropped: int

    def ratings(self) -> list[list[float]]:
        return [p.ratings for p in self.pairs]


@dataclass
class HumanCorrelation:
    correlations: dict[str, Correlation]  # metric -> tau, in HUMAN_METRICS order
    unavailable: dict[str, str]  # metric -> why it has no correlation
    settings: dict[str, Any]
    seconds: dict[str, float]  # wall time: "official", "clip"

    def to_json(self) -> dict[str, Any]:
        """The `metrics.json` document."""
        return {
            "human_correlation": {m: c.to_json() for m, c in self.correlations.items()},
            "unavailable": self.unavailable,
            "settings": self.settings,
        }


# --------------------------------------------------------------------------- Kendall tau


def kendall_tau(x: Sequence[float], y: Sequence[float], variant: TauVariant) -> float:
    """Kendall tau-b or tau-c of two equally long samples; NaN when undefined (a constant
    sample). The same numbers as `scipy.stats.kendalltau(x, y, variant=...)`, O(n log n)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n != len(y):
        raise ValueError(f"x has {n} values, y has {len(y)}")
    if n < 2:
        return float("nan")

    def tied(*cols: np.ndarray) -> int:  # pairs tied on every column
        counts = np.unique(np.stack(cols, 1), axis=0, return_counts=True)[1]
        return int((counts * (counts - 1) // 2).sum())

    total, x_ties, y_ties, both = n * (n - 1) // 2, tied(x), tied(y), tied(x, y)
    concordant_minus_discordant = total - x_ties - y_ties + both - 2 * _discordant(x, y)
    if variant == "b":
        denom = np.sqrt(float(total - x_ties)) * np.sqrt(float(total - y_ties))
        return float(concordant_minus_discordant / denom) if denom > 0 else float("nan")
    if variant == "c":
        m = min(len(np.unique(x)), len(np.unique(y)))
        if m < 2:
            return float("nan")
        return float(2 * concordant_minus_discordant / (n * n * (m - 1) / m))
    raise ValueError(f"unknown Kendall tau variant {variant!r}; expected 'b' or 'c'")


def _discordant(x: np.ndarray, y: np.ndarray) -> int:
    """Pairs with x_i < x_j and y_i > y_j: inversions of y once sorted by (x, y)."""
    order = np.lexsort((y, x))
    ranks = np.unique(y, return_inverse=True)[1][order] + 1  # 1-based dense ranks of y
    tree = [0] * (int(ranks.max()) + 1)  # Fenwick tree: counts of ranks seen so far
    inversions = 0
    for seen, r in enumerate(ranks.tolist()):
        i, not_greater = r, 0
        while i > 0:
            not_greater += tree[i]
            i -= i & -i
        inversions += seen - not_greater
        i = r
        while i < len(tree):
            tree[i] += 1
            i += i & -i
    return inversions


def correlate(
    values: Sequence[float], ratings: Sequence[Sequence[float]], variant: TauVariant
) -> Correlation:
    """Correlation of per-pair metric values with every rating of each pair (a pair's value is
    repeated once for each of its ratings)."""
    x = np.repeat(np.asarray(values, np.float64), [len(r) for r in ratings])
    y = np.asarray([v for r in ratings for v in r], np.float64)
    return Correlation(kendall_tau(x, y, variant), variant, len(y))


# --------------------------------------------------------------------------- protocol


def _norm(text: str) -> str:
    return " ".join(text.split())


def apply_protocol(judgments: Judgments, references: Mapping[str, Sequence[str]]) -> ProtocolItems:
    """The pairs to score and their references under the judgments' protocol; `references`
    maps each image file name to its captions. An image the mapping lacks, or a pair left
    without references, is an error naming the judgments file and line."""
    protocol = judgments.protocol
    missing = next((p for p in judgments.pairs if p.image not in references), None)
    if missing is not None:
        raise DatasetFormatError(
            f"{judgments.source} line {missing.line}: image {missing.image!r} is not an image "
            "of the dataset"
        )
    refs_by_image = {p.image: list(references[p.image]) for p in judgments.pairs}
    own = [_norm(p.caption) in {_norm(r) for r in references[p.image]} for p in judgments.pairs]
    if protocol.own_reference == "remove_from_references":
        for pair, is_own in zip(judgments.pairs, own, strict=True):
            if is_own:  # one copy per judgment, as list.remove in Hessel's download.py
                refs = refs_by_image[pair.image]
                normed = [_norm(r) for r in refs]
                if _norm(pair.caption) in normed:
                    del refs[normed.index(_norm(pair.caption))]
    pairs, refs_of, dropped = [], [], 0
    for pair, is_own in zip(judgments.pairs, own, strict=True):
        if is_own and protocol.own_reference == "drop_pair":
            dropped += 1
            continue
        if not refs_by_image[pair.image]:
            raise DatasetFormatError(
                f"{judgments.source} line {pair.line}: image {pair.image!r} has no reference "
                "left once its judged captions are taken out"
            )
        pairs.append(pair)
        refs_of.append(list(refs_by_image[pair.image]))
    return ProtocolItems(judgments, pairs, refs_of, dropped)


# --------------------------------------------------------------------------- metrics


def official_pair_scores(
    items: ProtocolItems, wanted: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-pair pycocoevalcap values (P,) of the wanted `OFFICIAL` metrics, and the metrics
    that could not run (name -> reason). Pairs are keyed by position, so a caption judged for
    several images is several items."""
    from finecap.metrics.official import official_scores

    runs = [
        m
        for m in ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
        if any(w == m or (m == "BLEU" and w.startswith("BLEU-")) for w in wanted)
    ]
    refs = dict(enumerate(items.references))
    preds = {i: p.caption for i, p in enumerate(items.pairs)}
    out = official_scores(refs, preds, metrics=runs)
    unavailable: dict[str, str] = {}
    for label, reason in out.unavailable.items():  # "BLEU-1..4" stands for all four
        names = [f"BLEU-{k}" for k in range(1, 5)] if label.startswith("BLEU") else [label]
        unavailable.update({m: reason for m in names if m in wanted})
    return {m: v for m, v in out.per_image.items() if m in wanted}, unavailable


def clip_pair_scores(
    items: ProtocolItems, image_paths: Sequence[Path], config: SuiteConfig, wanted: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-pair CLIP-S and RefCLIP-S (P,) and the settings used. Each distinct image and text
    is embedded once (an image is judged with many captions, a reference serves many pairs)."""
    import torch

    from finecap.clip.embed import ClipEmbedder, load_clip
    from finecap.metrics.clipscore import CLIP_S_PREFIX, clip_s, harmonic_mean, reference_term

    embedder = ClipEmbedder(load_clip(config.clip), config.batch_size, config.clip_cache)
    files = sorted(set(image_paths))
    file_emb = embedder.embed_image_files(files)  # (F, P)
    embedder.save_cache()
    at = {path: i for i, path in enumerate(files)}
    img = file_emb[torch.tensor([at[p] for p in image_paths])]  # (N, P)
    texts = sorted(
        {p.caption for p in items.pairs} | {r for refs in items.references for r in refs}
    )
    text_emb = embedder.embed_texts(texts, prefix=CLIP_S_PREFIX)  # (T, P)
    row = {t: i for i, t in enumerate(texts)}
    txt = text_emb[torch.tensor([row[p.caption] for p in items.pairs])]  # (N, P)
    scores = {"CLIP-S": clip_s(img, txt)}
    if "RefCLIP-S" in wanted:
        ref_term = torch.empty(len(items.pairs))
        for start in range(0, len(items.pairs), 4096):  # (B, K, P) at a time, not (N, K, P)
            refs = items.references[start : start + 4096]
            k = max(len(r) for r in refs)
            index = torch.tensor([[row[t] for t in r] + [0] * (k - len(r)) for r in refs])
            mask = torch.tensor([[True] * len(r) + [False] * (k - len(r)) for r in refs])
            ref_term[start : start + len(refs)] = reference_term(
                txt[start : start + len(refs)], text_emb[index], mask, config.refclip_variant
            )
        scores["RefCLIP-S"] = harmonic_mean(scores["CLIP-S"], ref_term)
    settings = {"clip": embedder.bundle.name, "clip_s_prefix": CLIP_S_PREFIX}
    if "RefCLIP-S" in wanted:
        settings.update(refclip_variant=config.refclip_variant)
    return {m: v.double().numpy() for m, v in scores.items() if m in wanted}, settings


# --------------------------------------------------------------------------- the whole run


def selected_metrics(selection: Sequence[str] | None) -> list[str]:
    """`HUMAN_METRICS` named by a selection of metric or group names (None: all of them)."""
    names = [n.strip() for item in selection or () for n in item.split(",") if n.strip()]
    if not names:
        return list(HUMAN_METRICS)
    try:
        wanted = {m for ms in resolve_selection(names).values() for m in ms}
    except ValueError as err:
        raise JudgmentsError(str(err)) from None
    other = sorted(wanted - set(HUMAN_METRICS))
    if other:
        raise JudgmentsError(
            f"metrics {other} are not correlated with human judgments; these are: "
            f"{', '.join(HUMAN_METRICS)}"
        )
    return [m for m in HUMAN_METRICS if m in wanted]


def correlate_with_humans(
    config: JudgmentsConfig, log: Callable[[str], None] | None = None
) -> HumanCorrelation:
    """Read the judgments and the dataset, apply the protocol, score every pair with the
    selected metrics, and correlate. Metrics that cannot run are listed with the reason."""
    log = log or (lambda message: None)
    wanted = selected_metrics(config.metrics)
    captions = dataset_captions(config.dataset, config.images, config.allow_outside_root)
    judgments = load_judgments(config.judgments, captions.by_id, config.judgments_format)
    items = apply_protocol(judgments, captions.references)
    values: dict[str, np.ndarray] = {}
    unavailable: dict[str, str] = {}
    seconds: dict[str, float] = {}
    settings: dict[str, Any] = {}
    if any(m in OFFICIAL for m in wanted):
        started = time.perf_counter()
        scores, missing = official_pair_scores(items, [m for m in wanted if m in OFFICIAL])
        values.update(scores)
        unavailable.update(missing)
        seconds["official"] = time.perf_counter() - started
        log(f"official metrics on {len(items.pairs)} pairs: {seconds['official']:.1f}s")
    clip_wanted = [m for m in wanted if m in CLIP_METRICS]
    if clip_wanted and config.clip is None:
        unavailable.update(dict.fromkeys(clip_wanted, NEED_REASONS["clip"]))
    elif clip_wanted:
        started = time.perf_counter()
        paths = captions.image_paths([p.image for p in items.pairs])  # all must exist
        scores, used = clip_pair_scores(items, paths, config, clip_wanted)
        values.update(scores)
        settings.update(used)
        seconds["clip"] = time.perf_counter() - started
        log(f"CLIP-S on {len(items.pairs)} pairs: {seconds['clip']:.1f}s")
    variant = judgments.protocol.tau_variant
    correlations = {}
    for metric in (m for m in wanted if m in values):
        corr = correlate(values[metric], items.ratings(), variant)
        if np.isnan(corr.tau):
            unavailable[metric] = "Kendall tau is undefined: the metric is constant over the pairs"
        else:
            correlations[metric] = corr
    settings = {
        "judgments": str(config.judgments),
        "judgments_format": judgments.format,
        "dataset": str(config.dataset),
        "protocol": _describe(judgments),
        "n_pairs_read": len(judgments.pairs),
        "n_pairs_scored": len(items.pairs),
        "n_pairs_dropped_own_reference": items.dropped,
        "n_ratings": sum(len(r) for r in items.ratings()),
        "metric_source": "pycocoevalcap per caption (PTB tokenizer; CIDEr = CIDEr-D, document "
        "frequencies over the references of all scored pairs)",
        **settings,
    }
    return HumanCorrelation(correlations, unavailable, settings, seconds)


def _describe(judgments: Judgments) -> str:
    p = judgments.protocol
    own = (
        "pairs whose caption is one of its image's references dropped"
        if p.own_reference == "drop_pair"
        else "judged captions taken out of their image's references (for all its pairs)"
    )
    return f"{own}; every rating one observation; Kendall tau-{p.tau_variant}"


def format_correlation_table(result: HumanCorrelation) -> str:
    """Metrics as rows: Kendall tau x100, its variant and the number of observations."""
    s = result.settings
    lines = [
        f"Kendall tau x100 with the human judgments of {s['judgments']} ({s['judgments_format']}: "
        f"{s['n_pairs_scored']} pairs, {s['n_ratings']} ratings"
        + (
            f", {s['n_pairs_dropped_own_reference']} pairs dropped"
            if s["n_pairs_dropped_own_reference"]
            else ""
        )
        + ")",
        f"{'metric':10s} {'tau':>6s} variant {'n':>7s}",
    ]
    for metric, c in result.correlations.items():
        lines.append(f"{metric:10s} {100 * c.tau:6.1f} {'tau-' + c.variant:>7s} {c.n:7d}")
    return "\n".join(lines)
