"""`finecap grammar train|score`: Cho et al.'s grammar head on a CLIP text encoder.

`grammar train`'s options include `GrammarTrainConfig` (`finecap.clip.config`), flattened
into flags; the training code (torch, transformers) is imported when a command runs.
"""

from __future__ import annotations

import json
from typing import Annotated

import tyro
from pydantic import Field
from tyro.conf import Positional

from finecap.clip.config import GrammarTrainConfig
from finecap.config import Settings


class GrammarTrainOptions(Settings):
    """Train the grammar head on references vs corrupted copies (repeat, remove, insert, swap,
    shuffle) with the CLIP contrastive loss, vision tower frozen; save the fine-tuned CLIP +
    head to OUT and write OUT/grammar_eval.json."""

    clip: str
    """CLIP folder or hub name to start from."""
    dataset: str
    """Dataset file (its train split is used)."""
    out: str
    """Output folder."""
    train: GrammarTrainConfig = GrammarTrainConfig()


class GrammarScoreOptions(Settings):
    """Print g(c), the probability that each text is fluent, as SCORE<TAB>TEXT lines."""

    model: str
    """Grammar model folder (from `finecap grammar train`)."""
    texts: Positional[Annotated[list[str], tyro.conf.arg(metavar="TEXT [TEXT ...]")]] = Field(
        min_length=1
    )
    """Texts to score."""


def run_train(options: GrammarTrainOptions) -> int:
    from finecap.clip.grammar import train_grammar

    result = train_grammar(options.clip, options.dataset, options.out, options.train)
    print(json.dumps(result["accuracy"], indent=2))
    print(f"grammar model saved to {options.out} (train {result['train_seconds']} s)")
    return 0


def run_score(options: GrammarScoreOptions) -> int:
    from finecap.clip.grammar import GrammarModel

    model = GrammarModel.from_pretrained(options.model)
    scores = model.score(options.texts).tolist()
    for text, g in zip(options.texts, scores, strict=True):
        print(f"{g:.4f}\t{text}")
    return 0


COMMANDS = {"train": (GrammarTrainOptions, run_train), "score": (GrammarScoreOptions, run_score)}
