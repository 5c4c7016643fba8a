"""CIDEr-D reward (Vedantam et al. 2015; as an SCST reward: Rennie et al. 2017).

Wraps the metrics package's `CiderD`, built once, at construction, on the *training*
references: the document frequencies and each image's reference vectors are cached, never
recomputed per batch. Captions and references go through the COCO
evaluation tokenizer (`ptb_tokenize`), and, as in the reference SCST code, an end token is
appended to every reference and candidate (`append_eos`). Candidates are scored against the
references of their image id, so `RewardBatch.image_ids` must be training image ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from finecap.config import PathStr, PositiveFloat
from finecap.rewards.base import Reward, RewardBatch, RewardConfig, register_reward


class CiderConfig(RewardConfig):
    name: Literal["cider"] = "cider"
    dataset: PathStr | None = None
    """Dataset whose `split` references score the captions; in a recipe, the recipe's own
    training data unless given."""
    split: str = "train"
    append_eos: bool = True
    """Append an end token to candidates and references (the reference SCST code's reward)."""
    sigma: PositiveFloat = 6.0
    """CIDEr-D's length penalty width."""

    LOADED: ClassVar[tuple[str, ...]] = ("references",)


def load_references(dataset: str, split: str = "train") -> dict[Any, list[str]]:
    from finecap.data.formats import load_corpus

    return {r.image_id: list(r.captions) for r in load_corpus(dataset).split(split)}


class CiderReward(Reward):
    name = "cider"

    def __init__(
        self, cfg: CiderConfig, references: Mapping[Any, Sequence[str]] | None = None
    ) -> None:
        """`references`: image id -> raw training references, instead of `cfg.dataset`."""
        from finecap.metrics.cider import CiderD
        from finecap.metrics.tokenizer import tokenize_captions

        if (references is None) == (cfg.dataset is None):
            raise ValueError("cider reward: give exactly one of `references` or `dataset`")
        refs = references
        if refs is None:
            refs = load_references(cfg.dataset, cfg.split)
        self.cfg = cfg
        self.scorer = CiderD(tokenize_captions(refs), sigma=cfg.sigma, append_eos=cfg.append_eos)

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        from finecap.metrics.tokenizer import ptb_tokenize

        candidates = [ptb_tokenize(c) for c in batch.captions]
        scores = self.scorer.score(batch.caption_image_ids(), candidates)  # (B*K,)
        return torch.as_tensor(scores, dtype=torch.float32)


register_reward("cider", config=CiderConfig)(CiderReward)
