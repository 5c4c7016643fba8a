"""A Hugging Face tokenizer behind finecap's `Vocab` interface.

finecap's decoding, training and rewards speak finecap ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <unk>,
then words. A pretrained captioner speaks its tokenizer's ids, with its own start and end
tokens (GPT-2's `<|endoftext|>` is both; BLIP starts with `[DEC]` and ends with `[SEP]`). The
adapter gives model token j the finecap id 4 + j, and maps the four specials to the model's:

    finecap id    0 <pad>   1 <bos>          2 <eos>   3 <unk>   4 + j
    model id      pad       decoder start    end       unk       j

so `Vocab.encode/decode`, `encode_captions`, `decode()` and SCST work unchanged. The model's
end token is only ever finecap's <eos> (its column 4 + end is never chosen), and the specials
<pad>, <bos> and <unk> are never generated: every other model token is, as generate() allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from finecap.data.vocab import SPECIALS, Vocab

OFFSET = len(SPECIALS)  # finecap id of model token 0


@dataclass(frozen=True)
class SpecialIds:
    """The model ids finecap's specials stand for."""

    start: int  # fed first (decoder_start_token_id / BLIP's bos [DEC])
    end: int  # ends a caption (eos; BLIP: [SEP])
    pad: int  # fed after a caption's end in teacher forcing (never attended to by its words)
    unk: int

    def to_model(self, vocab_size: int) -> Tensor:
        """(4 + V,) the model id of every finecap id."""
        head = torch.tensor([self.pad, self.start, self.end, self.unk])
        return torch.cat([head, torch.arange(vocab_size)])

    def from_model(self, vocab_size: int) -> tuple[Tensor, Tensor]:
        """The model logit behind each finecap column (4 + V,), and which columns can never be
        generated (<pad>, <bos>, <unk>, and 4 + end, which is finecap's <eos>)."""
        source = torch.cat([torch.tensor([0, 0, self.end, 0]), torch.arange(vocab_size)])
        blocked = torch.zeros(OFFSET + vocab_size, dtype=torch.bool)
        blocked[[Vocab.pad_id, Vocab.bos_id, Vocab.unk_id, OFFSET + self.end]] = True
        return source, blocked


class TokenizerVocab(Vocab):
    """`Vocab` over a Hugging Face tokenizer: model token j is finecap id 4 + j."""

    def __init__(self, tokenizer: Any, vocab_size: int, specials: SpecialIds) -> None:
        # Vocab's own word tables are not built: the tokenizer is the vocabulary.
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # the model's output size (may exceed the tokenizer's)
        self.specials = specials

    @property
    def itos(self) -> list[str]:  # type: ignore[override]  (read-only here)
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        padding = [f"<unused {j}>" for j in range(len(tokens), self.vocab_size)]
        return [*SPECIALS, *tokens[: self.vocab_size], *padding]

    def __len__(self) -> int:
        return OFFSET + self.vocab_size

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Caption -> finecap ids of its model tokens, without start/end, at most max_len."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = [OFFSET + i for i in ids]
        return ids[:max_len] if max_len is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        """finecap ids -> text, stopping at the first <eos>; specials are left out."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= OFFSET and i - OFFSET < len(self.tokenizer):
                tokens.append(i - OFFSET)
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def save(self, path: Any) -> None:
        raise TypeError("a pretrained captioner's vocabulary is its tokenizer: save_pretrained")
