"""COCO-size data without surprises: the corpus of COCO Karpathy (123,287 images x 5 captions,
synthetic captions, no images) and a feature store, each step in a fresh process.

    python bench/bench_scale.py [--runs 3] [--store-images 8192] [--extract-images 64]

Steps (each timed as the median of --runs, in its own spawned process so its peak memory is
its own; "RSS before" is that process's memory once its inputs are loaded):
  corpus    load dataset_coco.json (Karpathy format, restval merged) + the vocabulary
            (min_word_count 5, as the COCO recipes)
  cider     the CIDEr-D reward's document frequencies over the 113,287 training images' 566k
            references (PTB tokenization + n-gram tables: what `CiderReward` builds once)
  eval      the fast tier (BLEU-1..4, ROUGE-L, CIDEr-D, tokenization included) of 5,000 test
            captions against their 5 references each
  store     random batches of 50 image ids read from a feature store of (49, 2048) float16
            regions (a ResNet-50 grid) of --store-images images, from the page cache
  extract   `finecap features extract` of --extract-images 640x480 JPEGs with the COCO
            recipes' encoders (ResNet-50, CLIP ViT-B/32; random weights of the same
            architecture: no weights can be downloaded here) at 224 px, batch 32
Writes bench/results/scale.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from machine_info import machine, timed_runs

ROOT = Path(__file__).resolve().parents[1]
KARPATHY = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}  # 123,287


def _grammar():
    path = ROOT / "tests" / "fixtures" / "caption_grammar.py"
    spec = importlib.util.spec_from_file_location("caption_grammar", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_coco_size(path: Path, seed: int = 0) -> int:
    """A Karpathy-format dataset_coco.json with COCO's split sizes and synthetic captions."""
    import random

    grammar, rng = _grammar(), random.Random(seed)
    images, sentid = [], 0
    for split, count in KARPATHY.items():
        for _ in range(count):
            i = len(images)
            sentences = []
            for _ in range(5):
                raw = grammar.caption(rng)
                sentences.append({"tokens": raw.lower().split(), "raw": raw, "imgid": i,
                                  "sentid": sentid})  # fmt: skip
                sentid += 1
            folder = "train2014" if split == "train" else "val2014"
            images.append({"filepath": folder, "filename": f"COCO_{folder}_{i:012d}.jpg",
                           "imgid": i, "cocoid": 100_000 + i, "split": split,
                           "sentids": [s["sentid"] for s in sentences],
                           "sentences": sentences})  # fmt: skip
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return len(images)


def _rss_mb() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of this process, MB (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon", "RssFile")):
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("RssAnon", float("nan")), fields.get("RssFile", float("nan"))


def _peak_mb() -> float:
    """This process's peak resident memory, MB (VmHWM: unlike ru_maxrss, not inherited from
    the process that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _result(median: float, runs: list[float], before: float, note: str) -> dict:
    return {"s": median, "runs": runs, "peak_mb": _peak_mb(), "before_mb": before, "note": note}


def step_corpus(dataset: str, runs: int) -> dict:
    from finecap.data.formats import load_corpus
    from finecap.data.vocab import Vocab

    before = _rss_mb()[0]

    def work():
        corpus = load_corpus(dataset)
        train = corpus.split("train")
        return corpus, Vocab.build((c for r in train for c in r.captions), 5)

    median, all_runs, (corpus, vocab) = timed_runs(work, runs)
    note = f"{len(corpus.images):,} images, {len(vocab):,} words (min count 5)"
    return _result(median, all_runs, before, note)


def step_cider(dataset: str, runs: int) -> dict:
    from finecap.metrics.cider import CiderD
    from finecap.metrics.tokenizer import tokenize_captions
    from finecap.rewards.cider import load_references

    refs = load_references(dataset, "train")  # 113,287 images (restval merged)
    before = _rss_mb()[0]
    clock = time.process_time()
    tok_s, _, tokens = timed_runs(lambda: tokenize_captions(refs), runs)
    tok_cpu = (time.process_time() - clock) / runs
    clock = time.process_time()
    median, all_runs, _ = timed_runs(lambda: CiderD(tokenize_captions(refs), append_eos=True), runs)
    cpu = (time.process_time() - clock) / runs
    n = sum(map(len, refs.values()))
    note = (
        f"{len(refs):,} images, {n:,} references (reward mode, <eos> appended); CPU {cpu:.1f} s, "
        f"of which PTB tokenization {tok_s:.1f} s wall / {tok_cpu:.1f} s CPU"
    )
    return _result(median, all_runs, before, note)


def step_cider_cached(dataset: str, runs: int) -> dict:
    """The CIDEr-D reward as a second run builds it: its scorer loaded from the cache the
    first run wrote (file hash + safetensors load; no dataset parse, no tokenizing)."""
    from finecap.rewards.cider import CiderConfig, CiderReward

    os.environ["FINECAP_CACHE"] = str(Path(dataset).parent / "cache")
    cfg = CiderConfig(dataset=dataset)
    CiderReward(cfg)  # the first run: build and save
    before = _rss_mb()[0]
    median, all_runs, reward = timed_runs(lambda: CiderReward(cfg), runs)
    size = sum(f.stat().st_size for f in (Path(dataset).parent / "cache").rglob("*.safetensors"))
    note = (
        f"{len(reward.scorer.image_ids):,} images: the scorer a first run saved "
        f"({size / 1e6:,.0f} MB safetensors), loaded (dataset file hashed, not parsed)"
    )
    return _result(median, all_runs, before, note)


def step_real_tokens(folder: str, runs: int) -> dict:
    """The tokenizer's rate on real captions (Flickr8k's 40,460), in file order."""
    from finecap.metrics.tokenizer import tokenize_captions

    lines = (Path(folder) / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    captions = {i: [line.split("\t", 1)[1]] for i, line in enumerate(lines) if "\t" in line}
    before = _rss_mb()[0]
    median, all_runs, _ = timed_runs(lambda: tokenize_captions(captions), runs)
    per = median / len(captions)
    note = (
        f"{len(captions):,} Flickr8k captions: {1e6 * per:.1f} us a caption "
        f"(566,435 COCO references at this rate: {566_435 * per:.1f} s)"
    )
    return _result(median, all_runs, before, note)


def step_eval(dataset: str, runs: int) -> dict:
    import random

    from finecap.data.formats import load_corpus
    from finecap.metrics.fast import fast_scores

    test = load_corpus(dataset).split("test")
    rng = random.Random(1)
    refs = {r.image_id: r.captions for r in test}
    # A system's caption: another test image's reference (realistic length and words).
    preds = {r.image_id: rng.choice(test).captions[0] for r in test}
    before = _rss_mb()[0]
    median, all_runs, result = timed_runs(lambda: fast_scores(refs, preds), runs)
    note = f"{len(refs):,} captions x 5 references; CIDEr-D {result.scores['CIDEr']:.3f}"
    return _result(median, all_runs, before, note)


def build_store(folder: Path, n: int, shard_size: int = 1024) -> None:
    """A feature store of n images x (49, 2048) float16 regions in finecap's format (written
    with the store's own shard writer and merge; random values, no encoder run)."""
    import numpy as np

    from finecap.features.extract import merge, plan_id
    from finecap.features.store import PLAN, SHARDS, shard_name, write_shard

    ids = list(range(100_000, 100_000 + n))
    encoder = {"name": "resnet50", "hash": "synthetic", "weights": "-", "input_side": 224,
               "config": {"name": "resnet50"}}  # fmt: skip
    plan = {"format": 1, "dataset": "synthetic", "splits": "all", "image_ids": ids,
            "shard_size": shard_size, "dtype": "float16", "encoder": encoder,
            "clips": {}}  # fmt: skip
    folder.mkdir(parents=True)
    (folder / PLAN).write_text(json.dumps(plan))
    rng = np.random.default_rng(0)
    for k in range(0, n, shard_size):
        rows = ids[k : k + shard_size]
        regions = rng.standard_normal((len(rows), 49, 2048), dtype=np.float32).astype(np.float16)
        arrays = {"regions": regions, "pooled": regions.mean(1)}
        meta = {"plan": plan_id(plan), "shard": str(k // shard_size), "ids": json.dumps(rows)}
        write_shard(folder / SHARDS / shard_name(k // shard_size), arrays, meta)
    assert not merge(folder)


def step_store(folder: str, runs: int, batch: int = 50, reads: int = 200) -> dict:
    import numpy as np

    from finecap.features.store import FeatureStore

    store = FeatureStore(folder)
    ids = [int(i) for i in store.rows]
    rng = np.random.default_rng(0)
    store.regions(ids[:batch])
    for k in range(0, len(ids), 1024):  # one sequential pass: every page in the page cache
        store.regions(ids[k : k + 1024])
    anon_before = _rss_mb()[0]

    def work():
        for _ in range(reads):
            store.regions(rng.choice(ids, batch, replace=False).tolist())  # (50, 49, 2048)

    median, all_runs, _ = timed_runs(work, runs)
    anon_after, file_backed = _rss_mb()
    per_s = reads * batch / median
    gb = len(ids) * 49 * 2048 * 2 / 1e9
    grown = anon_after - anon_before
    note = (
        f"{per_s:,.0f} images/s ({per_s * 49 * 2048 * 2 / 1e9:.2f} GB/s), {len(ids):,} images "
        f"({gb:.1f} GB) in shards of 1,024; anonymous memory +{grown:.0f} MB while reading "
        f"(the mapped pages, {file_backed:.0f} MB, are the page cache's)"
    )
    return {**_result(median, all_runs, anon_before, note), "images_per_s": per_s}


def step_extract(dataset: str, encoder: str, runs: int, out: str) -> dict:
    import shutil

    import torch

    from finecap.features.extract import ExtractConfig, extract

    recipe = Path(out) / f"{encoder}.yaml"
    hf = "{}" if encoder == "resnet50" else "{image_size: 224, patch_size: 32}"
    recipe.write_text(
        f"data: {{dataset: {dataset}}}\nmodel:\n  encoder: {{name: {encoder}, freeze: true, "
        f"hf_config: {hf}}}\n"
    )
    threads = torch.get_num_threads()
    lines: list[str] = []

    def work():
        store = Path(out) / f"store-{encoder}"
        shutil.rmtree(store, ignore_errors=True)
        extract(ExtractConfig(config=str(recipe), out=str(store), batch_size=32, dtype="float16"),
                log=lines.append)  # fmt: skip

    median, all_runs, _ = timed_runs(work, runs)
    n = len(json.loads(Path(dataset).read_text())["images"])
    rates = [float(line.split("(")[1].split()[0]) for line in lines if "images/s" in line]
    rate = statistics.median(rates)
    note = (
        f"**{rate:.1f} images/s** in the extraction loop (load, preprocess, encode, write), "
        f"{n / median:.1f} images/s with the model's set-up; {n} images, {threads} threads, "
        "float16 store"
    )
    return {**_result(median, all_runs, _rss_mb()[0], note), "images_per_s": rate}


def write_images(folder: Path, n: int) -> Path:
    """n 640x480 JPEGs (noise over gradients: COCO-like file sizes) and a dataset of them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    images = []
    for i in range(n):
        base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None] * rng.random(3)
        pixels = np.clip(base + rng.normal(0, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.jpg", quality=90)
        images.append({"filename": f"images/{i}.jpg", "imgid": i, "split": "train",
                       "sentences": [{"raw": "a photo", "tokens": ["a", "photo"]}]})  # fmt: skip
    (folder / "dataset.json").write_text(json.dumps({"dataset": "bench", "images": images}))
    return folder / "dataset.json"


def _in_fresh_process(fn, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def _row(name: str, r: dict, aim: str) -> str:
    runs = ", ".join(f"{s:.2f}" for s in r["runs"])
    return (f"| {name} | {r['s']:.2f} | {runs} | {r['peak_mb']:,.0f} | {r['before_mb']:,.0f} | "
            f"{aim} | {r['note']} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--store-images", type=int, default=8192)
    p.add_argument("--extract-images", type=int, default=64)
    p.add_argument("--steps", default="corpus,cider,eval,store,extract")
    p.add_argument("--flickr8k", default=str(ROOT.parent / "shared" / "data" / "flickr8k"),
                   help="Flickr8k folder: the tokenizer's rate on real captions too")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.md"))
    args = p.parse_args(argv)
    steps = args.steps.split(",")
    host = machine()
    rows, results = [], {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        dataset = work / "dataset_coco.json"
        started = time.perf_counter()
        n_images = write_coco_size(dataset)
        print(f"wrote {n_images:,} images in {time.perf_counter() - started:.0f} s", flush=True)
        aims = {"corpus": "", "cider": "< 10 s", "cider_cached": "< 10 s", "eval": "< 10 s"}
        names = {"corpus": "load dataset + vocabulary",
                 "cider": "CIDEr-D document frequencies, built",
                 "cider_cached": "CIDEr-D reward, cached scorer (any later run)",
                 "eval": "fast-tier evaluation, 5,000 test images"}  # fmt: skip
        functions = {"corpus": step_corpus, "cider": step_cider,
                     "cider_cached": step_cider_cached, "eval": step_eval}  # fmt: skip
        if "cider" in steps:
            steps.append("cider_cached")
        for step in ("corpus", "cider", "cider_cached", "eval"):
            if step in steps:
                fn = functions[step]
                results[step] = _in_fresh_process(fn, str(dataset), args.runs)
                rows.append(_row(names[step], results[step], aims[step]))
                print(rows[-1], flush=True)
        flickr8k = Path(args.flickr8k)
        if "cider" in steps and (flickr8k / "Flickr8k.token.txt").is_file():
            r = _in_fresh_process(step_real_tokens, str(flickr8k), args.runs)
            rows.append(_row("PTB tokenization, real captions", r, ""))
            print(rows[-1], flush=True)
        if "store" in steps:
            build_store(work / "store", args.store_images)
            results["store"] = _in_fresh_process(step_store, str(work / "store"), args.runs + 2)
            rows.append(_row("feature store: 200 random batches of 50", results["store"],
                             ">= 5,000 images/s"))  # fmt: skip
            print(rows[-1], flush=True)
        if "extract" in steps:
            images = write_images(work / "photos", args.extract_images)
            for encoder in ("resnet50", "clip"):
                r = _in_fresh_process(step_extract, str(images), encoder, args.runs, tmp)
                results[f"extract-{encoder}"] = r
                label = {"resnet50": "ResNet-50 7x7x2048", "clip": "CLIP ViT-B/32 7x7x768"}
                rows.append(_row(f"features extract, {label[encoder]}", r, ""))
                print(rows[-1], flush=True)
    lines = [
        "# Scale: COCO-size data",
        "",
        f"Command: `python bench/bench_scale.py {' '.join(argv or sys.argv[1:])}`".rstrip() + "",
        "",
        f"Machine: {host} (shared with other jobs while measured).",
        "",
        f"Data: a Karpathy-format dataset_coco.json of **{n_images:,} images** x 5 synthetic "
        "captions (tests/fixtures/caption_grammar.py; COCO's split sizes: 82,783 train + "
        "30,504 restval, 5,000 val, 5,000 test; no images). Each step ran in a fresh process: "
        "seconds are the median of the runs listed; peak = the process's peak RSS, "
        "'before' = its RSS once its inputs were loaded.",
        "",
        "| step | median s | runs (s) | peak MB | before MB | aim | what |",
        "|---|---:|---|---:|---:|---|---|",
        *rows,
    ]
    from finecap.io import atomic_write_text

    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
