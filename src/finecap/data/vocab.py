"""Word vocabulary: caption text <-> token ids, saved as JSON beside every model."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def simple_tokenize(text: str) -> list[str]:
    """Lower-case words without punctuation: what the models read and write."""
    return _WORD.findall(text.lower())


class Vocab:
    """Maps words to ids. Ids 0..3 are <pad>, <bos>, <eos>, <unk>."""

    def __init__(self, words: Iterable[str]) -> None:
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocab:
        counts = Counter(w for c in captions for w in simple_tokenize(c))
        # Sort by frequency, then alphabetically, so the same corpus always gives the same ids.
        words = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Caption -> ids without <bos>/<eos>, truncated to max_len words."""
        ids = [self.stoi.get(w, self.unk_id) for w in simple_tokenize(text)]
        return ids[:max_len] if max_len is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> caption text, stopping at the first <eos> and skipping other specials."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                words.append(self.itos[i])
        return " ".join(words)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"itos": self.itos}, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        try:
            data = json.loads(Path(path).read_text())
            itos = data["itos"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a finecap vocabulary file ({err})") from err
        if list(itos[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"{path}: vocabulary must start with {SPECIALS}")
        return cls(itos[len(SPECIALS) :])
