"""Caption metrics.

N-gram metrics come in two tiers with the same names (``BLEU-1``..``BLEU-4``, ``METEOR``,
``ROUGE-L``, ``CIDEr`` = CIDEr-D, ``SPICE``):

* official -- :func:`official_scores`, pycocoevalcap as published (Java); metrics that cannot
  run are listed in ``OfficialResult.unavailable`` with the reason;
* fast -- :func:`fast_scores` (BLEU, ROUGE-L, CIDEr-D in pure Python/numpy, equal to the
  official numbers) and :class:`CiderD`, the cached scorer SCST rewards and validation use.

Names are imported lazily, so ``import finecap.metrics`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PUNCTUATIONS": "tokenizer",
    "ptb_tokenize": "tokenizer",
    "ptb_tokens": "tokenizer",
    "sanitize_caption": "tokenizer",
    "tokenize_captions": "tokenizer",
    "CiderD": "cider",
    "cider_d": "cider",
    "bleu": "bleu",
    "rouge_l": "rouge",
    "FAST_METRICS": "fast",
    "FastResult": "fast",
    "fast_scores": "fast",
    "OFFICIAL_METRICS": "official",
    "OfficialResult": "official",
    "official_scores": "official",
    "spice_status": "official",
    "java_status": "official",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
