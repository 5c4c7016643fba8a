"""`finecap train --config RECIPE [--init MODEL] [--set KEY=VALUE ...] [--print-config]` and
`finecap recipes`."""

from __future__ import annotations

import sys
from typing import Annotated

import tyro

from finecap.config import Settings


class TrainOptions(Settings):
    """Train a captioner from a YAML recipe (MLE or SCST); resumes from
    OUTPUT_DIR/checkpoints/last.ckpt and exports OUTPUT_DIR/model/."""

    config: str
    """Recipe: a YAML file, or the name of a shipped recipe (`finecap recipes`)."""
    init: str | None = None
    """Start from this captioner folder (e.g. an MLE model for SCST), or a Hugging Face
    ViT-GPT2 / BLIP captioner (hub name or folder); its architecture and vocabulary replace the
    recipe's model section (model.encoder.freeze / unfreeze_after_epochs still apply)."""
    output_dir: str | None = None
    """Run folder (overrides the recipe's output_dir)."""
    set: Annotated[list[str], tyro.conf.UseAppendAction] = []
    """Override a recipe value: --set optim.lr=1e-4, --set scst.rewards.0.weight=2
    (repeatable; values are YAML)."""
    print_config: bool = False
    """Print the resolved, checked config as YAML and exit without training."""
    force: bool = False
    """Resume the run in output_dir even though its dataset, seed, task or model differ."""


class RecipesOptions(Settings):
    """List the shipped training recipes (use one with `finecap train --config NAME`)."""


def run_train(options: TrainOptions) -> int:
    from finecap.distributed import is_primary_process
    from finecap.train.checkpoints import TrainingInterrupted
    from finecap.train.config import config_to_yaml, load_config
    from finecap.train.run import resolve_model, train

    given = {"output_dir": options.output_dir} if options.output_dir else {}
    config = load_config(options.config, options.set, **given)
    if options.print_config:
        config, _ = resolve_model(config, options.init) if options.init else (config, None)
        sys.stdout.write(config_to_yaml(config))
        return 0
    try:
        folder = train(config, init=options.init, force=options.force)
    except TrainingInterrupted as stop:
        print(f"finecap train: {stop}", file=sys.stderr)
        return stop.exit_status
    if is_primary_process():  # the other processes of a DDP run export nothing
        print(f"model saved to {folder}")
    return 0


def run_recipes(options: RecipesOptions) -> int:
    from finecap.config import RECIPES_DIR, list_recipes

    for name in list_recipes():
        first = (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[:1]
        about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:32s} {about}")
    return 0


COMMANDS = {"train": (TrainOptions, run_train), "recipes": (RecipesOptions, run_recipes)}
