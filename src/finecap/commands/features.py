"""`finecap features extract --config RECIPE | --model DIR --out DIR [--split S ...]
[--clip CLIP ...] [--shard-size N] [--shard i/n] [--dtype float16] [--merge]`.

The work is `finecap.features.extract.extract` (the same call from Python); the store's
layout is in `finecap.features.store`.
"""

from __future__ import annotations

from typing import Annotated

import tyro

from finecap.features.extract import ExtractConfig


class ExtractOptions(ExtractConfig):
    """Extract a frozen encoder's region and pooled features (--config RECIPE or --model
    CAPTIONER) and CLIP image embeddings (--clip, and the recipe's reward CLIPs) for every
    image of a dataset, once, into a memory-mapped feature store that `finecap train`
    (data.features: DIR), the CLIP rewards, `finecap evaluate --features DIR` and `finecap
    reproduce --features` read. Shards are written atomically: rerun the same command after
    a kill and only the unfinished shards are done. --shard i/n splits the work between n
    processes or machines; the part that finishes last writes the index (or --merge later)."""

    split: Annotated[list[str], tyro.conf.UseAppendAction] = []
    """Split to extract (repeatable: --split train --split val); default every image."""
    clip: Annotated[list[str], tyro.conf.UseAppendAction] = []
    """A CLIP (hub name or folder) whose image embeddings to store too (repeatable)."""


def handler(options: ExtractOptions) -> int:
    from finecap.features.extract import extract

    extract(ExtractConfig.load(options.model_dump(), "finecap features extract"))
    return 0


COMMANDS = {"extract": (ExtractOptions, handler)}
