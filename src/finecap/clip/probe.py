"""Attribute-binding probe of a CLIP (after ARO / NegCLIP, Yuksekgonul et al. 2023).

For each image, the CLIP scores its true text and the same text with one fact changed; it is
right when the true text scores higher. Accuracy per kind of change (chance 50 %):

    finecap clip probe --clip DIR --dataset dataset.json [--split test] [--out probe.json]

On a scenes dataset the pairs come from the ground truth (`finecap.scenes.changes`), in two
registers: the salient-first detailed description (`kinds`, every kind) and the short
caption-length text a CLIP reward sees ("a large red striped circle on grass": `short_kinds`,
the salient object's attributes and the background). For other data, a CSV with the columns
`image,true,changed,kind` (image: a file name of the dataset) gives the pairs.

A pair whose two texts score the same (within 1e-6; e.g. a "changed" text equal to the true
one) is a tie: counted in `n` and `ties`, never as a win.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from finecap.data.formats import CaptionCorpus, ImageRecord
from finecap.errors import UserError
from finecap.scenes.changes import CHANGE_KINDS, changed_texts

TIE_TOLERANCE = 1e-6
CSV_COLUMNS = ("image", "true", "changed", "kind")


class ProbeInputError(UserError, ValueError):
    """A probe CSV or dataset that cannot be probed; the message names the file and row."""


@dataclass(frozen=True)
class ProbePair:
    image: Path
    true: str
    changed: str
    kind: str


def scene_pairs(
    corpus: CaptionCorpus, records: list[ImageRecord], register: str = "description", seed=0
) -> list[ProbePair]:
    """One pair per image and kind the image's scene can take, drawn reproducibly."""
    pairs = []
    for record in records:
        scene = record.extra.get("scene")
        if scene is None:
            continue
        for kind in CHANGE_KINDS:
            rnd = random.Random(f"{seed}|{record.image_id}|{kind}")
            texts = changed_texts(scene, kind, rnd, register=register)
            if texts is not None:
                pairs.append(ProbePair(corpus.image_path(record), *texts, kind))
    return pairs


def csv_pairs(path: str | Path, corpus: CaptionCorpus, records: list[ImageRecord]):
    """Pairs from a CSV `image,true,changed,kind`; images are matched to `records` by their
    dataset file name (or its last component)."""
    by_name: dict[str, ImageRecord] = {}
    for record in records:
        by_name.setdefault(record.path, record)
        by_name.setdefault(Path(record.path).name, record)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ProbeInputError(f"{path}: cannot read the probe CSV ({err})") from err
    if missing := [c for c in CSV_COLUMNS if c not in header]:
        raise ProbeInputError(
            f"{path}: the CSV needs the columns {', '.join(CSV_COLUMNS)} "
            f"(missing: {', '.join(missing)})"
        )
    pairs = []
    for line, row in enumerate(rows, start=2):
        record = by_name.get(row["image"])
        if record is None:
            raise ProbeInputError(f"{path}: row {line}: image {row['image']!r} is not in the split")
        if not row["true"].strip() or not row["changed"].strip():
            raise ProbeInputError(f"{path}: row {line}: empty text")
        pairs.append(ProbePair(corpus.image_path(record), row["true"], row["changed"], row["kind"]))
    return pairs


def probe(embedder, pairs: list[ProbePair]) -> dict[str, dict[str, float | int]]:
    """{kind: {"accuracy", "n", "ties", "text_cosine"}} for `pairs`, scored by a
    `ClipEmbedder`. `text_cosine`: the mean cosine of the true and the changed text's
    embeddings — near 1, the text tower hardly tells the two apart, whatever the image."""
    if not pairs:
        return {}
    images = embedder.embed_image_files([p.image for p in pairs])  # (N, P), each file once
    true = embedder.embed_texts([p.true for p in pairs])  # (N, P)
    changed = embedder.embed_texts([p.changed for p in pairs])
    margin = (images * true).sum(-1) - (images * changed).sum(-1)  # (N,)
    cosine = (true * changed).sum(-1)  # (N,) the embeddings are unit vectors
    wins, ties, counts = defaultdict(int), defaultdict(int), defaultdict(int)
    cosines = defaultdict(float)
    for pair, m, c in zip(pairs, margin.tolist(), cosine.tolist(), strict=True):
        counts[pair.kind] += 1
        cosines[pair.kind] += c
        if abs(m) <= TIE_TOLERANCE:
            ties[pair.kind] += 1
        elif m > 0:
            wins[pair.kind] += 1
    order = [k for k in CHANGE_KINDS if k in counts] + sorted(set(counts) - set(CHANGE_KINDS))
    return {
        k: {
            "accuracy": wins[k] / counts[k],
            "n": counts[k],
            "ties": ties[k],
            "text_cosine": round(cosines[k] / counts[k], 6),
        }
        for k in order
    }


@torch.no_grad()
def probe_clip(
    clip: str,
    dataset: str | Path,
    split: str = "test",
    pairs_csv: str | Path | None = None,
    batch_size: int = 64,
) -> dict:
    """The probe's JSON document: `{"clip", "split", "kinds", ["short_kinds"]}`."""
    from finecap.clip.embed import ClipEmbedder, load_clip
    from finecap.data.formats import load_corpus

    corpus = load_corpus(dataset)
    records = corpus.split(split)
    if not records:
        raise ProbeInputError(f"{dataset}: no images in the {split!r} split")
    embedder = ClipEmbedder(load_clip(clip), batch_size=batch_size)
    result: dict = {"clip": str(clip), "split": split, "dataset": str(dataset)}
    if pairs_csv is not None:
        result["kinds"] = probe(embedder, csv_pairs(pairs_csv, corpus, records))
        result["pairs"] = str(pairs_csv)
        return result
    if not any("scene" in r.extra for r in records):
        raise ProbeInputError(
            f"{dataset}: the {split!r} images have no scene ground truth; give the pairs as "
            "--pairs FILE.csv (columns image,true,changed,kind)"
        )
    return {**result, **probe_scenes(embedder, corpus, records)}


def probe_scenes(embedder, corpus: CaptionCorpus, records: list[ImageRecord]) -> dict:
    """{"kinds", "short_kinds"}: both registers of the scenes probe."""
    return {
        "kinds": probe(embedder, scene_pairs(corpus, records, "description")),
        "short_kinds": probe(embedder, scene_pairs(corpus, records, "short")),
    }


def format_probe(result: dict) -> str:
    """A Markdown table: one row per kind, accuracy in %, for each register."""
    registers = [("description", "kinds"), ("short text", "short_kinds")]
    registers = [(name, key) for name, key in registers if key in result]
    kinds = list(dict.fromkeys(k for _, key in registers for k in result[key]))
    header = "| kind | " + " | ".join(f"{name} % (n)" for name, _ in registers) + " |"
    lines = [header, "|---" * (len(registers) + 1) + "|"]
    for kind in kinds:
        cells = []
        for _, key in registers:
            r = result[key].get(kind)
            cells.append("—" if r is None else f"{100 * r['accuracy']:.1f} ({r['n']})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
