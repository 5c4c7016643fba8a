"""MLE training end to end on a tiny scenes world: train -> resume -> export -> caption."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from finecap.captioner import Captioner
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.decoding import DecodingConfig
from finecap.scenes import generate_world
from finecap.train.config import load_config
from finecap.train.run import resolve_model, train
from finecap.train.tasks import MLETask
from helpers.tiny_captioners import make_tiny_captioner

CONFIGS = sorted((Path(__file__).parents[1] / "src" / "finecap" / "configs").glob("*.yaml"))

TINY = [
    "model.encoder.width=16",
    "model.decoder.hidden_size=32",
    "model.decoder.embed_size=16",
    "model.decoder.attention_size=16",
    "data.batch_size=8",
    "data.val_images=8",
    "optim.warmup_steps=2",
    "trainer.threads=1",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), 40, seed=1, image_size=48)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_recipe_loads(path: Path) -> None:
    config = load_config(path)
    assert config.data.dataset
    assert config.optim.max_epochs > 0


def test_the_card_says_when_a_run_learned_from_the_ground_truth_too(world: Path) -> None:
    """RL on the ground-truth captions changes what a model learned from: its facts, its card
    and its one-line description say so; a run without it says nothing of it."""
    from finecap.model_card import describe, render_card, training_facts

    names = [p.stem for p in CONFIGS]
    recipe = CONFIGS[names.index("scst_scenes_default")]
    # An SCST recipe takes its model from --init; training fills it in before the card.
    model = load_config(CONFIGS[names.index("scenes_transformer")]).model
    corpus = load_corpus(world)
    config = load_config(recipe, [f"data.dataset={world}"]).model_copy(update={"model": model})
    facts = training_facts(config, corpus, 40, 100)
    assert facts["recipe"]["gt_weight"] == 4.0
    assert facts["recipe"]["gt_weighting"] == "clamp_advantage"
    assert facts["recipe"]["gt_texts"] == "learned"
    assert facts["recipe"]["learn_from"] == "partial_descriptions"
    assert facts["recipe"]["learn_longest"] is True
    card = render_card(facts, decoding=config.model_decoding)
    assert "decodes by default with beam search, 3 beams, no trigram repeated" in card
    assert "plus 4 × RL on the ground-truth captions (Chaffin et al., weighted by" in card
    assert (
        "clamp_advantage), the ground truth being the dataset's `partial_descriptions` "
        "(the longest that fits)" in card
    )
    assert describe(facts).startswith(
        "SCST 2 × clip_s + 1 × cider + 30 × contrastive + RL on ground truth (partial_descriptions)"
    )
    plain = load_config(recipe, [f"data.dataset={world}", "scst.gt_weight=0"])
    plain = plain.model_copy(update={"model": model})
    plain_facts = training_facts(plain, corpus, 40, 100)
    assert "gt_weight" not in plain_facts["recipe"]
    assert "ground-truth" not in render_card(plain_facts)
    assert "ground truth" not in describe(plain_facts)


def test_a_recipes_model_decoding_keeps_the_defaults_and_the_init_models_own(
    tmp_path: Path,
) -> None:
    lstm = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    partial = load_config(lstm, ["model_decoding={block_trigrams: true}"]).model_decoding
    assert partial.as_decoding() == DecodingConfig(beam_size=3, block_trigrams=True)
    with pytest.raises(ValueError, match=r"model_decoding\.n_best.*caller's choice"):
        load_config(lstm, ["model_decoding={beam_size: 3, n_best: 2}"])
    # Fine-tuning keeps the --init model's decoding unless the recipe gives one.
    own = DecodingConfig(beam_size=2, block_trigrams=True)
    tiny = make_tiny_captioner("lstm", max_len=8)
    tiny.decoding = own
    tiny.save_pretrained(tmp_path / "init")
    scst = CONFIGS[[p.stem for p in CONFIGS].index("scst_scenes_cider")]
    lengths = ["data.max_len=8", "decoding.max_len=8", "scst.max_len=8"]
    config, _ = resolve_model(load_config(scst, lengths), tmp_path / "init")
    assert config.model_decoding.as_decoding() == own
    given = load_config(scst, [*lengths, "model_decoding={beam_size: 4}"])
    config, _ = resolve_model(given, tmp_path / "init")
    assert config.model_decoding.as_decoding() == DecodingConfig(beam_size=4)
    # The card's line on a model's own decoding is a paragraph of its own.
    from finecap.model_card import render_card

    card = render_card({}, decoding=own)
    assert "\n\nIt decodes by default with beam search, 2 beams, no trigram repeated" in card
    assert "decodes by default" not in render_card({})


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: x.json}\noptim: {learning_rate: 0.1}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: optim.learning_rate: unknown key"):
        load_config(bad)


def test_train_resume_export(world: Path, tmp_path: Path) -> None:
    recipe = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    out = tmp_path / "run"
    overrides = [f"data.dataset={world}", f"output_dir={out}", "model.encoder.image_size=48"] + TINY
    model_dir = train(load_config(recipe, [*overrides, "optim.max_epochs=1"]))
    assert (out / "checkpoints" / "last.ckpt").is_file()
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["finecap"]["best_val_cider"] is not None
    # No model_decoding: 3 beams, which neither config.json nor the card spells out.
    assert "decoding" not in meta
    assert "decodes by default" not in (model_dir / "README.md").read_text()
    # The model card says what it was trained on, how, and what was measured.
    facts = meta["finecap"]
    assert facts["dataset"]["synthetic_scenes"] and facts["recipe"]["task"] == "mle"
    assert facts["dataset"]["train_images"] == len(load_corpus(world).split("train"))
    card = (model_dir / "README.md").read_text()
    assert "Synthetic scenes world only — not for photographs" in card
    assert f"{facts['dataset']['train_images']} training images" in card
    assert f"validation CIDEr-D (greedy, during training): {facts['best_val_cider']:.3f}" in card

    # A second run with more epochs resumes from last.ckpt: it trains epoch 1 only.
    train(load_config(recipe, [*overrides, "optim.max_epochs=2"]))
    rows = list(csv.DictReader((out / "logs" / "version_1" / "metrics.csv").open()))
    assert rows and {row["epoch"] for row in rows} == {"1"}

    captioner = Captioner.from_pretrained(model_dir)
    image = load_image(world.parent / "images" / "scene_000000.png")
    [caption] = captioner.caption([image], beam_size=2)
    assert isinstance(caption.text, str)


def test_select_last_exports_the_last_epoch_and_still_validates(
    world: Path, tmp_path: Path
) -> None:
    recipe = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    out = tmp_path / "run"
    overrides = [f"data.dataset={world}", f"output_dir={out}", "model.encoder.image_size=48"]
    own = "model_decoding={beam_size: 2, block_trigrams: true}"  # the export's own decoding
    config = load_config(
        recipe, [*overrides, *TINY, "optim.max_epochs=2", "trainer.select=last", own]
    )
    model_dir = train(config)
    meta = json.loads((model_dir / "config.json").read_text())
    assert Captioner.from_pretrained(model_dir).decoding == config.model_decoding.as_decoding()
    assert "beam search, 2 beams, no trigram repeated" in (model_dir / "README.md").read_text()
    assert "best_val_cider" not in meta["finecap"]  # nothing was picked by a score
    assert meta["finecap"]["selected"] == "last" and meta["finecap"]["epochs"] == 2
    rows = list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows if r.get("val/CIDEr")] == ["0", "1"]  # still logged
    last = Captioner.from_pretrained(model_dir).model.state_dict()
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in last.items():
        assert torch.equal(value, state[f"model.{key}"]), key


def test_unknown_checkpoint_selection_is_refused() -> None:
    recipe = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    with pytest.raises(ValueError, match="trainer.select: Input should be 'val_cider' or 'last'"):
        load_config(recipe, ["trainer.select=best_bleu"])


def _tiny(world: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.dataset={world}",
        f"output_dir={out}",
        "model.encoder.image_size=48",
        *TINY,
        *extra,
    ]


def test_run_prints_its_summary_and_epochs_and_logs_both_ways(
    world: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    recipe = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    out = tmp_path / "run"
    loggers = "trainer.logger=[csv, tensorboard]"
    config = load_config(recipe, _tiny(world, out, "optim.max_epochs=2", loggers))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_dir = train(config)
    stdout, stderr = capfd.readouterr()

    captioner = Captioner.from_pretrained(model_dir)
    model = captioner.model
    assert f"vocab       {len(captioner.vocab)} words" in stdout
    for label, part in [("model", model), ("encoder", model.encoder), ("decoder", model.decoder)]:
        n = sum(p.numel() for p in part.parameters())
        assert re.search(rf"^ +{label} .*\b{n:,} parameters \({n:,} trainable\)", stdout, re.M)
    corpus = load_corpus(world)
    n_train, n_val = len(corpus.split("train")), min(8, len(corpus.split("val")))
    assert f"{n_train} train images, {n_val} val images" in stdout
    assert "4 per epoch, 8 optimiser steps (2 epochs" in stdout  # 32 images / 8 per batch
    assert f"{out / 'logs' / 'version_0'}: metrics.csv, TensorBoard events" in stdout
    assert "Epoch 1/2" in stdout and "Epoch 2/2" in stdout and "Epoch 0" not in stdout
    assert stdout.index("finecap train: task mle") < stdout.index("Epoch 1/2")

    noise = [str(w.message) for w in caught] + [stderr]
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], noise
    assert not any(re.search("LeafSpec|litlogger|GPU available|logging interval", n) for n in noise)
    logs = out / "logs" / "version_0"
    assert (logs / "metrics.csv").is_file() and list(logs.glob("events.out.tfevents.*"))


def test_max_steps_ends_training_and_the_schedule_and_resumes(
    world: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    recipe = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    for steps in (3, 6):  # 4 steps per epoch: both end mid-epoch; the second resumes the first
        config = load_config(recipe, _tiny(world, out, f"optim.max_steps={steps}"))
        train(config)
        state = torch.load(last, weights_only=True)
        assert state["global_step"] == steps
        [lr, _] = state["lr_schedulers"][0]["_last_lr"]  # decoder, encoder groups
        assert lr == pytest.approx(config.optim.lr * config.optim.min_lr_ratio)
        assert json.loads((out / "run.json").read_text())["finished"] == {"max_steps": steps}
    stdout, stderr = capfd.readouterr()
    assert "mid-epoch, at step 3: a fresh shuffle feeds the epoch's last 1 step" in stdout
    assert "resuming from a checkpoint" not in stderr  # Lightning's advice, to developers
    rows = list(csv.DictReader((out / "logs" / "version_1" / "metrics.csv").open()))
    assert [r["step"] for r in rows if r["val/CIDEr"]] == ["3", "5"]  # epoch end, then step 6


def test_batch_limits_are_honoured(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = CONFIGS[[p.stem for p in CONFIGS].index("scenes_lstm")]
    out = tmp_path / "run"
    validated: list[int] = []
    step = MLETask.validation_step
    monkeypatch.setattr(
        MLETask, "validation_step", lambda self, b, i: validated.append(i) or step(self, b, i)
    )
    limits = ["data.batch_size=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]
    train(load_config(recipe, _tiny(world, out, "optim.max_epochs=2", *limits)))
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert validated == [0, 0]  # one of the two validation batches (4 images), each epoch
