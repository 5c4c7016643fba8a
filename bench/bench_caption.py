"""Captioning throughput (images/s) on CPU: greedy vs beam 5, one image at a time vs batched,
the transformer's KV cache on vs off, and beam 3 with vs without trigram blocking (the
bundled default model's own decoding).

    python bench/bench_caption.py [--quick] [--out bench/results/caption.md]

Two models:
- the bundled default model (`src/finecap/assets/default_model`) when it exists, captioning
  rendered scenes images end to end (preprocess + encoder + decoder); otherwise a random
  scenes-sized LSTM (small CNN 96 px / 128, LSTM 256, the `scenes_lstm.yaml` recipe);
- a 6-layer d=512 transformer decoder (Cho et al. 2022 size) with random weights, vocabulary
  10k, max_len 16, decoding from precomputed ResNet-style grid features (B, 49, 2048).

Random models have <eos> suppressed so every caption runs the full max_len: a fixed, worst-case
workload. Each setting's time is the median of --runs runs (after one warm-up run).
Threads: 2 (--threads). On a busy shared machine run it with OMP_WAIT_POLICY=PASSIVE: OpenMP
threads that spin-wait for a descheduled partner made decoding ~10x slower there.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from finecap.captioner import DEFAULT_MODEL_DIR, Captioner
from finecap.data.images import load_image
from finecap.data.vocab import Vocab
from finecap.decoding import DecodingConfig, decode
from finecap.io import atomic_write_text
from finecap.models import (
    EncoderOutput,
    ModelConfig,
    create_decoder,
    decoder_config,
    encoder_config,
)
from finecap.models.transformer import Uncached
from finecap.scenes import generate_world
from machine_info import machine

MAX_LEN = 16
BATCH = 32


def has_kv_cache(decoder) -> bool:
    return "cache" in inspect.signature(decoder.init_state).parameters


def suppress_eos(decoder) -> None:
    """Random weights: make every caption run to max_len, so runs do the same work."""
    with torch.no_grad():
        decoder.out.bias[Vocab.eos_id] = -1e4


@dataclass
class Row:
    model: str
    decoding: str
    cache: str
    batch: int
    images: int
    seconds: float  # median over runs

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def median_time(runs: int, fn, *args) -> float:
    fn(*args)  # warm-up: allocator, oneDNN kernels
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scenes_model(workdir: Path, n_images: int) -> tuple[str, Captioner, list]:
    """The default model (or a scenes-sized random LSTM) and rendered scenes images."""
    dataset = generate_world(workdir / "scenes", n=max(n_images, 10), seed=0)
    images = [load_image(p) for p in sorted((dataset.parent / "images").glob("*.png"))]
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        captioner = Captioner.from_pretrained(None)
        return "default model", captioner, images[:n_images]
    torch.manual_seed(0)
    config = ModelConfig(
        encoder=encoder_config("small_cnn", image_size=96, width=128),
        decoder=decoder_config(
            "lstm", hidden_size=256, embed_size=128, attention_size=128, max_len=MAX_LEN
        ),
    )
    vocab = Vocab([f"w{i}" for i in range(120)])  # about the scenes world's vocabulary
    captioner = Captioner.create(config, vocab)
    captioner.model.eval()
    suppress_eos(captioner.model.decoder)
    return "scenes-sized LSTM (random)", captioner, images[:n_images]


def big_transformer(n_images: int) -> tuple[torch.nn.Module, EncoderOutput]:
    torch.manual_seed(0)
    config = decoder_config(
        "transformer",
        hidden_size=512,
        num_layers=6,
        num_heads=8,
        ffn_size=2048,
        dropout=0.0,
        max_len=MAX_LEN,
    )
    decoder = create_decoder(config, vocab_size=10_000, feature_dim=2048).eval()
    suppress_eos(decoder)
    regions = torch.randn(n_images, 49, 2048)
    return decoder, EncoderOutput(regions, None, regions.mean(1))


def caption_images(captioner: Captioner, images: list, config, batch: int, cached: bool) -> None:
    """Captioner.caption's pipeline (preprocess, encode, decode), with the cache choosable."""
    model = captioner.model
    decoder = model.decoder if cached else Uncached(model.decoder)
    config = config.replace(max_len=min(config.max_len, model.config.decoder.max_len))
    for start in range(0, len(images), batch):
        pixels = model.encoder.preprocess(images[start : start + batch])
        decode(decoder, model.encode(pixels), config)


def decode_features(decoder, enc: EncoderOutput, n: int, config, batch: int, cached: bool) -> None:
    dec = decoder if cached else Uncached(decoder)
    for start in range(0, n, batch):
        part = EncoderOutput(
            enc.regions[start : start + batch], None, enc.pooled[start : start + batch]
        )
        decode(dec, part, config)


BLOCKED = "beam 3, no trigram repeated"


def settings(quick: bool, kv: bool) -> list[tuple[str, bool, int, int]]:
    """(decoding, cached, batch, images): one at a time on fewer images (it is slow)."""
    single, batched = (2, BATCH) if quick else (8, 2 * BATCH)
    out = []
    for decoding in ("greedy", "beam 5"):
        out += [(decoding, True, 1, single), (decoding, True, BATCH, batched)]
    if kv:  # without the cache: the slowest cells, so fewer of them
        out += [("greedy", False, 1, single), ("greedy", False, BATCH, BATCH)]
        if not quick:
            out.append(("beam 5", False, BATCH, BATCH))
    # The bundled default model's own decoding (config.json's) against plain beam 3.
    out += [("beam 3", True, BATCH, batched), (BLOCKED, True, BATCH, batched)]
    return out


def run(quick: bool, runs: int) -> list[Row]:
    rows: list[Row] = []
    configs = {
        "greedy": DecodingConfig(beam_size=1, max_len=MAX_LEN),
        "beam 5": DecodingConfig(beam_size=5, max_len=MAX_LEN),
        "beam 3": DecodingConfig(beam_size=3, max_len=MAX_LEN),
        BLOCKED: DecodingConfig(beam_size=3, max_len=MAX_LEN, block_trigrams=True),
    }
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        name, captioner, images = scenes_model(Path(tmp), BATCH if quick else 2 * BATCH)
        kv = has_kv_cache(captioner.model.decoder)
        for decoding, cached, batch, n in settings(quick, kv):
            config = configs[decoding]
            seconds = median_time(
                runs, caption_images, captioner, images[:n], config, batch, cached
            )
            rows.append(Row(name, decoding, _cache(kv, cached), batch, n, seconds))
            print(_line(rows[-1]), file=sys.stderr, flush=True)
        name = "transformer 6x512, V=10k"
        decoder, enc = big_transformer(2 * BATCH)
        for decoding, cached, batch, n in settings(quick, True):
            config = configs[decoding]
            seconds = median_time(runs, decode_features, decoder, enc, n, config, batch, cached)
            rows.append(Row(name, decoding, _cache(True, cached), batch, n, seconds))
            print(_line(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _cache(kv: bool, cached: bool) -> str:
    return "n/a" if not kv else ("on" if cached else "off")


def _line(row: Row) -> str:
    return (
        f"| {row.model} | {row.decoding} | {row.cache} | {row.batch} | {row.images} | "
        f"{row.seconds:.3f} | {row.rate:.2f} | {1000 / row.rate:.1f} |"
    )


def ratios(rows: list[Row]) -> list[str]:
    def find(model, decoding, cache, batch):
        return next(
            (
                r
                for r in rows
                if (r.model, r.decoding, r.cache, r.batch) == (model, decoding, cache, batch)
            ),
            None,
        )

    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        plain, blocked = find(model, "beam 3", "on", BATCH), find(model, BLOCKED, "on", BATCH)
        if plain and blocked:
            lines.append(
                f"- {model}, beam 3, batch {BATCH}: with no trigram repeated it captions at "
                f"**{blocked.rate / plain.rate:.2f}x** the plain rate"
            )
        for decoding in ("greedy", "beam 5"):
            for cache in ("on", "n/a"):
                one, many = find(model, decoding, cache, 1), find(model, decoding, cache, BATCH)
                if one and many:
                    lines.append(
                        f"- {model}, {decoding}: batched ({BATCH}) captions "
                        f"**{many.rate / one.rate:.1f}x** the images per second of one at a time"
                    )
            for batch in (1, BATCH):
                on, off = find(model, decoding, "on", batch), find(model, decoding, "off", batch)
                if on and off:
                    lines.append(
                        f"- {model}, {decoding}, batch {batch}: the KV cache runs at "
                        f"**{on.rate / off.rate:.1f}x** the rate of re-running the prefix"
                    )
    return lines


def _load_note(load: tuple[float, float]) -> str:
    seen = f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
    if max(load) <= (os.cpu_count() or 1) + 0.5:  # about the benchmark's own threads
        return f"Quiet machine ({seen}, on {os.cpu_count()} cores)."
    return (
        f"**Shared machine** ({seen}, on {os.cpu_count()} cores): other jobs ran at the same "
        "time, so absolute numbers are pessimistic and noisy; the ratios are the point."
    )


def report(rows: list[Row], argv: list[str], load: tuple[float, float], runs: int) -> str:
    header = (
        "| model | decoding | KV cache | batch | images | median s | images/s | ms/image |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    policy = os.environ.get("OMP_WAIT_POLICY")
    env = f"OMP_WAIT_POLICY={policy} " if policy else ""
    return "\n".join(
        [
            "# Captioning throughput (CPU)",
            "",
            f"Command: `{' '.join([f'{env}python bench/bench_caption.py', *argv])}`",
            "",
            f"Machine: {machine()}; median of {runs} runs after a warm-up run.",
            "",
            _load_note(load),
            "",
            "Scenes rows are end to end (preprocess + encoder + decoder) on rendered scenes "
            "images; the default model ends its captions where it says <eos>. Random-weight "
            f"models have <eos> suppressed: every caption is max_len = {MAX_LEN} words (plus "
            "<eos>). The 6x512 transformer decodes precomputed (B, 49, 2048) features.",
            "",
            header,
            *(_line(r) for r in rows),
            "",
            "## Ratios",
            "",
            *ratios(rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default="bench/results/caption.md", help="markdown report")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = run(args.quick, max(args.runs, 1))
    text = report(
        rows, sys.argv[1:] if argv is None else argv, (load_start, os.getloadavg()[0]), args.runs
    )
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
