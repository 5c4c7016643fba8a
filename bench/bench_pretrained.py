"""A Hugging Face captioner decoded by finecap's core vs by its own generate() (CPU).

    python bench/bench_pretrained.py [--runs 3] [--out bench/results/pretrained.md]

The model: a random VisionEncoderDecoderModel of nlpconnect/vit-gpt2-image-captioning's shape
cut down to run on a CPU in seconds: ViT 6 layers x 384 on 224-px images (197 tokens) and GPT-2
6 layers x 384 with a 10k vocabulary. Batch 32, at most 16 new tokens, no length penalty.
finecap runs the settings that reproduce generate() (`finished_beams="aside"`,
`at_max_len="stop"`), and its default beam search (`keep`, `eos`) as well; the captions of the
first two are checked to be identical to generate()'s before anything is timed. Each time is
the median of --runs runs after a warm-up run; the ratio is against generate() in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from finecap.captioner import Captioner
from finecap.decoding import DecodingConfig, decode
from finecap.io import atomic_write_text
from machine_info import machine, median_seconds

BATCH, NEW_TOKENS = 32, 16


def build(folder: Path) -> Captioner:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2TokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    vocab = {f"w{i}": i for i in range(10_000)}
    vocab["<|endoftext|>"] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    end = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)
    vit = ViTConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536
    )
    eos = vocab[end]
    gpt2 = GPT2Config(
        vocab_size=len(vocab), n_embd=384, n_layer=6, n_head=6, n_positions=64,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt2)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
    return Captioner.from_pretrained(folder)


timed = median_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pretrained.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = machine()
    with tempfile.TemporaryDirectory() as tmp:
        captioner = build(Path(tmp) / "model")
    model = captioner.model
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(BATCH)
    ]
    pixels = model.encoder.preprocess(images)
    end = model.decoder.specials.end
    rows = []
    for beams in (1, 3):
        hf_kwargs = dict(max_new_tokens=NEW_TOKENS, num_beams=beams, do_sample=False)
        if beams > 1:
            hf_kwargs["length_penalty"] = 0.0
        same = DecodingConfig(
            beam_size=beams, max_len=NEW_TOKENS, finished_beams="aside", at_max_len="stop"
        )

        def ours(config: DecodingConfig = same) -> torch.Tensor:
            with torch.inference_mode():
                return decode(model.decoder, model.encode(pixels), config).tokens

        def theirs(kwargs: dict = hf_kwargs) -> torch.Tensor:
            with torch.inference_mode():
                return model.hf.generate(pixel_values=pixels, **kwargs)

        mapped = [model.decoder.to_model[row[row != 0]].tolist() for row in ours()]
        reference = [r[: r.index(end) + 1] if end in r else r for r in theirs()[:, 1:].tolist()]
        assert mapped == reference, "finecap's captions differ from generate()'s"
        hf_s = timed(theirs, args.runs)
        plural = "s" if beams > 1 else ""
        rows.append((f"generate(), {beams} beam{plural}", hf_s, 1.0))
        ours_s = timed(ours, args.runs)
        rows.append(
            (f"finecap, generate()'s settings, {beams} beam{plural}", ours_s, hf_s / ours_s)
        )
        if beams > 1:
            default = DecodingConfig(beam_size=beams, max_len=NEW_TOKENS)
            keep_s = timed(lambda config=default: ours(config), args.runs)
            rows.append((f"finecap's default beam search, {beams} beams", keep_s, hf_s / keep_s))
    lines = [
        "# Pretrained captioners: finecap's decoding vs generate() (CPU)",
        "",
        "Command: `OMP_WAIT_POLICY=PASSIVE python bench/bench_pretrained.py`",
        "",
        f"Machine: {load}; median of {args.runs} runs after a warm-up run.",
        "",
        f"Random ViT 6x384 (197 tokens) + GPT-2 6x384, vocabulary 10k, batch {BATCH}, at most "
        f"{NEW_TOKENS} new tokens; finecap with generate()'s settings gives generate()'s captions "
        "token for token (checked before timing).",
        "",
        "| decoding | median s per batch | images/s | speed vs generate() |",
        "|---|---|---|---|",
        *(f"| {name} | {s:.3f} | {BATCH / s:.1f} | {r:.2f}x |" for name, s, r in rows),
        "",
    ]
    atomic_write_text(Path(args.out), "\n".join(lines))
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
