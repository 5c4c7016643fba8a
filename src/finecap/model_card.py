"""Model cards: the README.md of every exported captioner folder (after Mitchell et al. 2019,
"Model Cards for Model Reporting", and the Hugging Face hub's habit).

A card says what the model was trained on, how, what was measured, and what it is for. A
model trained on the scenes world says plainly that it knows only that synthetic world: it
names shapes on textured backgrounds, and a photograph gets a confident, wrong scene caption.
Numbers measured later (`scripts/measure_default_model.py`) go under "Measured" by
`add_measurements`, so the card and the folder's config.json never disagree on what was run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finecap.decoding import DecodingConfig

CARD_FILE = "README.md"
SCENES_WARNING = (
    "**Synthetic scenes world only — not for photographs.** This model was trained on "
    "finecap's procedural scenes world (1-4 coloured shapes on a textured background). It "
    "has never seen a photograph: given one, it still answers with a shape and a colour."
)
MEASURED = "## Measured"


def training_facts(config: Any, corpus: Any, n_train: int, vocab_size: int) -> dict:
    """The JSON facts a card is written from (stored under "finecap" in config.json too):
    no machine paths, only names and counts."""
    scst = config.scst
    rewards = [{"name": t.name, "weight": t.weight} for t in scst.rewards] if scst else []
    return {
        "dataset": {
            "name": corpus.name,
            "file": Path(str(config.data.dataset)).name,
            "train_images": n_train,
            "synthetic_scenes": corpus.name == "scenes",
        },
        "vocab_size": vocab_size,
        "recipe": {
            "task": config.task,
            "encoder": config.model.encoder.name,
            "decoder": config.model.decoder.name,
            "rewards": rewards,
            "baseline": scst.baseline if scst else None,
            **ground_truth_facts(scst),
            **({"learn_from": config.data.learn_from} if config.data.learn_from else {}),
            **({"learn_longest": True} if config.data.learn_longest else {}),
            "max_epochs": config.optim.max_epochs,
            "seed": config.seed,
        },
    }


def ground_truth_facts(scst: Any) -> dict:
    """Chaffin et al.'s RL on ground-truth captions, when the run used it: its weight and rule."""
    if scst is None or not scst.gt_weight:
        return {}
    return {
        "gt_weight": scst.gt_weight,
        "gt_weighting": scst.gt_weighting,
        "gt_texts": scst.gt_texts,
    }


def _rewards_text(rewards: list[Mapping]) -> str:
    return " + ".join(f"{r['weight']:g} × {r['name']}" for r in rewards)


def render_card(
    facts: Mapping[str, Any], title: str | None = None, decoding: DecodingConfig | None = None
) -> str:
    """The card's Markdown from `training_facts(...)` plus what export adds (epochs, best
    validation CIDEr-D), and the model's own `decoding` if it has one."""
    recipe, data = facts.get("recipe", {}), facts.get("dataset", {})
    task = recipe.get("task", "?")
    how = "maximum likelihood (teacher forcing)" if task == "mle" else task
    if task == "scst":
        how = f"self-critical RL (SCST), reward {_rewards_text(recipe.get('rewards', []))}"
        how += f", baseline {recipe.get('baseline')}"
        if recipe.get("gt_weight"):
            how += (
                f"; plus {recipe['gt_weight']:g} × RL on the ground-truth captions "
                f"(Chaffin et al., weighted by {recipe.get('gt_weighting')})"
            )
            if recipe.get("gt_texts") == "learned":
                how += f", the ground truth being the dataset's `{recipe.get('learn_from')}`"
                how += " (the longest that fits)" if recipe.get("learn_longest") else ""
    if recipe.get("learn_from") and recipe.get("gt_texts") != "learned":
        how += f"; the dataset's `{recipe['learn_from']}` learned beside the captions"
    lines = [f"# {title or 'finecap captioner'}", ""]
    if data.get("synthetic_scenes"):
        lines += [SCENES_WARNING, ""]
    lines += [
        "## Training",
        "",
        f"- data: `{data.get('file', '?')}` ({data.get('name', '?')}), "
        f"{data.get('train_images', '?')} training images; vocabulary {facts.get('vocab_size')}",
        f"- model: {recipe.get('encoder', '?')} encoder, {recipe.get('decoder', '?')} decoder",
        f"- objective: {how}",
        f"- epochs: {facts.get('epochs', '?')} of {recipe.get('max_epochs', '?')}"
        + (f" ({facts['steps']} optimiser steps)" if facts.get("steps") else "")
        + ", "
        f"seed {recipe.get('seed', '?')}; weights selected by "
        f"{'validation CIDEr-D' if facts.get('selected') == 'val_cider' else 'the last epoch'}",
        "",
        MEASURED,
        "",
    ]
    if facts.get("best_val_cider") is not None:
        cider = facts["best_val_cider"]
        lines.append(f"- validation CIDEr-D (greedy, during training): {cider:.3f}")
    else:
        lines.append("- nothing measured yet")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from finecap.captioner import Captioner",
        "",
        'captioner = Captioner.from_pretrained("THIS_FOLDER")',
        'print(captioner("image.png").text)',
        "```",
        "",
        "Or `finecap caption --model THIS_FOLDER IMAGES...`. Intended for research on "
        "fine-grained captioning"
        + (" in the scenes world." if data.get("synthetic_scenes") else ".")
        + " Files: `model.safetensors` (weights), `config.json` (architecture and these facts), "
        "`vocab.json`.",
        "",
    ]
    if decoding is not None:
        lines += [
            f"It decodes by default with {decoding.describe()}, at most {decoding.max_len} "
            "words (its own `decoding` settings); settings a caller gives replace it.",
            "",
        ]
    return "\n".join(lines)


def add_measurements(card: str, rows: list[str]) -> str:
    """The card with its "Measured" section replaced by `rows` (Markdown lines)."""
    head, _, tail = card.partition(MEASURED)
    rest = tail.split("\n## ", 1)
    after = "\n## " + rest[1] if len(rest) > 1 else "\n"
    return head + MEASURED + "\n\n" + "\n".join(rows) + "\n" + after


def describe(facts: Mapping[str, Any]) -> str:
    """One line naming what a model is, for `finecap caption`'s stderr."""
    recipe, data = facts.get("recipe") or {}, facts.get("dataset") or {}
    task = recipe.get("task") or facts.get("task") or "?"
    what = task.upper() if task == "mle" else f"SCST {_rewards_text(recipe.get('rewards', []))}"
    if recipe.get("gt_weight"):
        what += " + RL on ground truth"
        if recipe.get("gt_texts") == "learned":
            what += f" ({recipe.get('learn_from')})"
    if task not in ("mle", "scst"):  # e.g. "pretrained blip": a Hugging Face captioner as is
        what = task
    if data.get("synthetic_scenes"):
        what += ", synthetic scenes world only"
    return what
