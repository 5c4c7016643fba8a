"""The scenes CLIP's tokenizer: a byte-level BPE in OpenAI CLIP's own format (vocab.json +
merges.txt, `</w>` word ends, all 256 bytes in the vocabulary), learned on the dataset's text,
so any word, seen or not, tokenizes without an unknown token."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from finecap.io import atomic_write_text

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_bpe_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> CLIPTokenizer:
    """Learn BPE merges on `texts` with CLIP's normalizer/pre-tokenizer; return a CLIPTokenizer.

    The vocabulary is laid out like OpenAI's: 256 byte symbols, the same with `</w>`, one
    entry per merge, then BOS and EOS (EOS doubles as padding, as in OpenAI's tokenizer).
    """
    reference = CLIPTokenizer()  # empty; lends us CLIP's exact normalizer and pre-tokenizer
    normalizer = reference.backend_tokenizer.normalizer
    pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    words: Counter[str] = Counter()
    for text in texts:
        words.update(p for p, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    n_merges = max(0, vocab_size - 2 * len(byte_symbols) - 2)
    merges = learn_bpe_merges(words, n_merges)
    symbols = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab: dict[str, int] = {}
    for s in [*symbols, BOS, EOS]:
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def learn_bpe_merges(
    words: Counter[str], n_merges: int, min_count: int = 2
) -> list[tuple[str, str]]:
    """Classic BPE (Sennrich et al. 2016) over a word-frequency table, `</w>` marking word ends.

    Deterministic: ties go to the lexicographically smallest pair (the `tokenizers` trainer
    breaks ties by hash order, so its merges change from run to run). Plain Python is enough
    here: a captioning vocabulary has a few thousand distinct words at most.
    """
    split = {w: (*w[:-1], w[-1] + "</w>") for w in words}  # word -> current symbols
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, symbols in split.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_count:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for w, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[w] = tuple(out)
    return merges


def save_tokenizer(tokenizer: CLIPTokenizer, out_dir: Path) -> None:
    """save_pretrained, plus OpenAI-style vocab.json + merges.txt for older transformers."""
    tokenizer.save_pretrained(out_dir)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    atomic_write_text(out_dir / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False))
    atomic_write_text(out_dir / "merges.txt", "\n".join(["#version: 0.2", *merges]) + "\n")
