"""Benchmark the evaluation suite: every metric group on N test images x 5 references.

    python bench/bench_eval.py [--n 5000] [--clip DIR] [--out bench/results/eval.md]

Data: a scenes world with N test images (+ --train images, so `Novel` has training
references) and its FineCapEval CSV. The system's caption for an image is a reference of
the next image in its test group (same salient shape and colour, different details), so
scores are realistic rather than perfect. CLIP: --clip, else a tiny random CLIP (projection
16, 30-px images): its timings cover loading, preprocessing and batching but understate a
real ViT-B/32. Group times include loading the models that group is first to need.

    python bench/bench_eval.py --flickr8k ../shared/data/flickr8k [--runs 5]

The fast tier end to end on real captions instead: the 5,664 Flickr8k-Expert pairs (Hessel et
al.'s protocol), raw text in, per-caption BLEU-1..4, ROUGE-L and CIDEr-D out, against
pycocoevalcap's PTBTokenizer (Java) + Bleu + Rouge + Cider in the same process; writes
bench/results/eval_flickr8k.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine, timed_runs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tiny-CLIP builder lives with the test helpers


def build_data(work: Path, n: int, train: int, image_size: int):
    from finecap.data.formats import load_corpus
    from finecap.metrics.finecapeval import load_finecapeval
    from finecap.metrics.suite import EvalData, System
    from finecap.scenes import generate_world

    started = time.perf_counter()
    dataset = generate_world(work, n=n + train, val=0, test=n, image_size=image_size)
    gen_s = time.perf_counter() - started
    corpus = load_corpus(dataset)
    test = corpus.split("test")
    data = EvalData(
        image_ids=[r.image_id for r in test],
        references=[r.captions[:5] for r in test],
        file_names=[r.path for r in test],
        image_paths=[corpus.image_path(r) for r in test],
        train_captions=[c for r in corpus.split("train") for c in r.captions],
        finecapeval=load_finecapeval(work / "finecapeval.csv"),
    )
    # Neighbouring test images share the salient object: a plausible but imperfect caption.
    captions = [test[(i + 1) % len(test)].captions[0] for i in range(len(test))]
    return data, System("neighbour", captions), gen_s


def cider_row(data, system) -> str:
    """Our fast CIDEr-D (finecap.metrics.cider) vs pycocoevalcap's Cider on the same tokens."""
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    from finecap.metrics.cider import cider_d
    from finecap.metrics.tokenizer import tokenize_captions

    gts = tokenize_captions(dict(enumerate(data.references)))
    res = {
        i: c[0]
        for i, c in tokenize_captions({i: [c] for i, c in enumerate(system.captions)}).items()
    }
    started = time.perf_counter()
    _, base = Cider().compute_score(gts, {i: [c] for i, c in res.items()})
    base_s = time.perf_counter() - started
    started = time.perf_counter()
    _, ours = cider_d(gts, res)
    ours_s = time.perf_counter() - started
    diff = float(np.abs(np.asarray(base) - ours).max())
    return (
        f"CIDEr-D on the same PTB tokens: pycocoevalcap {base_s:.2f}s, finecap fast tier "
        f"{ours_s:.2f}s (**{base_s / ours_s:.1f}x**), largest per-image difference {diff:.1e} "
        "(details: bench/bench_cider.py, bench/results/cider.md)."
    )


def flickr8k_end_to_end(folder: Path, runs: int, out: Path) -> None:
    """The fast tier vs pycocoevalcap, tokenization included, on the Flickr8k-Expert pairs."""
    import numpy as np
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from finecap.io import atomic_write_text
    from finecap.metrics.fast import fast_scores
    from finecap.metrics.human import apply_protocol
    from finecap.metrics.judgments import dataset_captions, load_judgments
    from finecap.metrics.tokenizer import tokenize_captions

    host = machine()
    captions = dataset_captions(folder / "Flickr8k.token.txt")
    judgments = load_judgments(folder / "ExpertAnnotations.txt", captions.by_id)
    items = apply_protocol(judgments, captions.references)
    refs = dict(enumerate(items.references))
    preds = {i: p.caption for i, p in enumerate(items.pairs)}
    parts: dict[str, list[float]] = {}

    def pycocoevalcap() -> dict:
        clock = time.perf_counter()
        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in refs.items()})
        res = tok.tokenize({i: [{"caption": c}] for i, c in preds.items()})
        parts.setdefault("tokenizer", []).append(time.perf_counter() - clock)
        scores = {}
        _, bleu = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{k + 1}": np.asarray(bleu[k]) for k in range(4)})
        scores["ROUGE-L"] = np.asarray(Rouge().compute_score(gts, res)[1])
        scores["CIDEr"] = np.asarray(Cider().compute_score(gts, res)[1])
        return scores

    started = time.perf_counter()
    fast_scores({0: ["warm up the lexer"]}, {0: "a lexer"})  # builds the lexer tables once
    lexer_s = time.perf_counter() - started
    base_s, base_all, expected = timed_runs(pycocoevalcap, max(3, runs // 2))
    ours_s, ours_all, ours = timed_runs(lambda: fast_scores(refs, preds), runs)
    tok_s, _, _ = timed_runs(
        lambda: (tokenize_captions(refs), tokenize_captions({i: [c] for i, c in preds.items()})),
        runs,
    )
    diff = max(float(np.abs(ours.per_image[m] - v).max()) for m, v in expected.items())
    java_tok = statistics.median(parts["tokenizer"])
    lines = [
        "# Evaluation end to end on real captions (Flickr8k-Expert)",
        "",
        f"Command: `python bench/bench_eval.py --flickr8k {folder} --runs {runs}`",
        "",
        f"Machine: {host} (shared with other jobs while measured).",
        "",
        f"Data: the {len(preds):,} Flickr8k-Expert pairs (Hessel et al.'s protocol: "
        f"{items.dropped} pairs whose caption is a reference dropped), 5 references each; raw "
        "text in, per-caption BLEU-1..4, ROUGE-L, CIDEr-D out. Medians of "
        f"{len(base_all)} (pycocoevalcap) / {len(ours_all)} (finecap) runs in one process.",
        "",
        "| | pycocoevalcap | finecap fast tier | speed-up |",
        "|---|---:|---:|---:|",
        f"| tokenization (PTB) | {java_tok:.2f} s (Java) | {tok_s:.2f} s (Python) "
        f"| {java_tok / tok_s:.1f}x |",
        f"| **end to end** (tokenization + BLEU + ROUGE-L + CIDEr-D) | {base_s:.2f} s "
        f"| {ours_s:.2f} s | **{base_s / ours_s:.1f}x** |",
        "",
        f"Largest per-caption difference over all six metrics: {diff:.1e}. Building the "
        f"lexer's tables (once per process, not in the medians) took {lexer_s:.2f} s; "
        f"all runs: pycocoevalcap {', '.join(f'{s:.2f}' for s in base_all)} s, finecap "
        f"{', '.join(f'{s:.2f}' for s in ours_all)} s.",
    ]
    atomic_write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="test images (default 5000)")
    p.add_argument("--train", type=int, default=500, help="train images, for Novel")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--clip", default=None, help="CLIP folder or name (default: tiny random)")
    p.add_argument("--metrics", default=None, help="comma-separated groups (default: all)")
    p.add_argument("--out", default=None, help="results file (default bench/results/...)")
    p.add_argument("--flickr8k", type=Path, help="Flickr8k folder: the end-to-end comparison")
    p.add_argument("--runs", type=int, default=5, help="runs of each (--flickr8k)")
    args = p.parse_args(argv)
    results = ROOT / "bench" / "results"
    if args.flickr8k is not None:
        flickr8k_end_to_end(
            args.flickr8k, args.runs, Path(args.out or results / "eval_flickr8k.md")
        )
        return 0
    args.out = args.out or str(results / "eval.md")

    from finecap.io import atomic_write_text
    from finecap.metrics.suite import SuiteConfig, list_metrics, run_suite

    host = machine()  # before the run: the load average is the other jobs', not ours
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, system, gen_s = build_data(work / "world", args.n, args.train, args.image_size)
        if args.clip is None:
            from helpers.tiny_models import make_tiny_clip

            clip, clip_name = str(make_tiny_clip(work)), "tiny random CLIP (tests/helpers)"
        else:
            clip, clip_name = args.clip, args.clip
        groups = args.metrics.split(",") if args.metrics else [g.name for g in list_metrics()]
        config = SuiteConfig(clip=clip)
        rows, unavailable = [], {}
        for group in groups:  # one run per group: each group's time includes its model loading
            started = time.perf_counter()
            result = run_suite([system], data, config, metrics=[group])
            seconds = time.perf_counter() - started
            scores = result.systems[system.name]
            unavailable.update(result.unavailable)
            shown = ", ".join(f"{k} {v:.3f}" for k, v in list(scores.items())[:4])
            rows.append((group, seconds, shown or "unavailable"))
            print(f"{group:12s} {seconds:8.1f}s  {shown}", flush=True)

        cider = cider_row(data, system)
        print(cider)

    total = sum(s for _, s, _ in rows)
    lines = [
        "# Evaluation suite benchmark",
        "",
        f"Command: `{' '.join(['python bench/bench_eval.py', *(argv or sys.argv[1:])])}`",
        "",
        f"Machine: {host} (shared with other jobs while measured).",
        "",
        f"Data: scenes world, {args.n} test images x 5 references ({args.image_size} px), "
        f"{args.train} train images (for Novel); one system (a neighbour image's reference). "
        f"World generation took {gen_s:.1f}s (not counted). CLIP: {clip_name}. "
        "Each group ran on its own, so its time includes loading what it needs.",
        "",
        "| metric group | seconds | per image (ms) | sample values |",
        "|---|---:|---:|---|",
        *[f"| {g} | {s:.1f} | {1000 * s / args.n:.2f} | {v} |" for g, s, v in rows],
        f"| **total** | **{total:.1f}** | {1000 * total / args.n:.2f} | |",
    ]
    lines += ["", cider]
    if unavailable:
        lines += ["", "Unavailable here:", *[f"- {m}: {r}" for m, r in unavailable.items()]]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    print(json.dumps({g: round(s, 2) for g, s, _ in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
