"""Multi-process training on Lightning's DDP, two CPU processes (gloo), on a tiny scenes world:
`finecap train` with `trainer.devices: 2, strategy: ddp` as a user runs it (Lightning starts
the second process by re-running the command), MLE then SCST from its model.

Checked: steps per epoch halve against one process with the same per-process batch; only the
primary process writes (one summary, one logs/version_0, one export); validation CIDEr-D is
over the whole split (recomputed here from the exported model on each process's share); SCST
with a contrastive reward whose batch is gathered across the processes runs to the end; and,
in one process, that gathered reward equals the reward of one batch of both processes' images.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finecap.captioner import Captioner
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.decoding import decode
from finecap.rewards import RewardBatch, create_reward
from finecap.rewards import contrastive as contrastive_module
from finecap.scenes import generate_world
from finecap.train.checkpoints import checkpoint_position
from finecap.train.config import load_config
from finecap.train.run import train
from finecap.train.tasks import validation_cider
from helpers.tiny_models import make_tiny_clip

TINY = [
    "model.encoder.image_size=48",
    "model.encoder.width=16",
    "model.decoder.hidden_size=32",
    "model.decoder.embed_size=16",
    "model.decoder.attention_size=16",
    "data.batch_size=8",
    "data.val_images=8",
    "optim.warmup_steps=2",
    "optim.max_epochs=1",
    "trainer.threads=1",
]
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("ddp_world"), 40, seed=1, image_size=48)


def finecap_train(recipe: str, out: Path, overrides: list[str], init: Path | None = None) -> str:
    """Run `finecap train` in a fresh process (as a user would); its output, both ranks'."""
    argv = [sys.executable, "-m", "finecap.cli", "train", "--config", recipe]
    argv += ["--output-dir", str(out), *[a for o in overrides for a in ("--set", o)]]
    argv += ["--init", str(init)] if init else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def metrics(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()))


@pytest.fixture(scope="module")
def mle_run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp") / "mle"
    return out, finecap_train("scenes_lstm", out, [f"data.dataset={world}", *TINY, *DDP])


def test_ddp_mle_halves_the_steps_and_writes_once(world: Path, mle_run, tmp_path: Path) -> None:
    out, output = mle_run
    train_images = len(load_corpus(world).split("train"))
    steps, _ = checkpoint_position(out / "checkpoints" / "last.ckpt")
    assert steps == math.ceil(train_images / 2 / 8)  # each process: its half, batches of 8
    single = tmp_path / "single"
    train(load_config("scenes_lstm", [f"data.dataset={world}", f"output_dir={single}", *TINY]))
    single_steps, _ = checkpoint_position(single / "checkpoints" / "last.ckpt")
    assert single_steps == math.ceil(train_images / 8) == 2 * steps
    # Only the primary process wrote: one summary, one export, one log folder.
    assert output.count("finecap train: task mle") == 1 and output.count("model saved to") == 1
    assert "on each of 2 processes (16 images a step)" in output
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["version_0"]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoints", "config.yaml", "logs", "model", "run.json"
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_ddp_validation_cider_is_over_the_whole_split(world: Path, mle_run) -> None:
    out, _ = mle_run
    logged = [float(r["val/CIDEr"]) for r in metrics(out) if r["val/CIDEr"]]
    config = load_config(out / "config.yaml")
    captioner = Captioner.from_pretrained(out / "model")
    corpus = load_corpus(world)
    records = corpus.split("val")[: config.data.val_images]
    predictions = {}
    for rank in range(2):  # each process's share, as Lightning's DistributedSampler deals it
        share = records[rank::2]
        pixels = captioner.model.encoder.preprocess(
            [load_image(corpus.image_path(r)) for r in share]
        )
        with torch.no_grad():
            decoded = decode(
                captioner.model.decoder, captioner.model.encode(pixels), config.decoding
            )
        predictions |= {r.image_id: captioner.vocab.decode(decoded.tokens[i].tolist())
                        for i, r in enumerate(share)}  # fmt: skip
    references = {r.image_id: r.captions for r in records}
    assert logged[-1] == pytest.approx(validation_cider(references, predictions), abs=1e-6)
    first = {r.image_id for r in records[0::2]}
    one_share = validation_cider(
        {i: references[i] for i in first}, {i: predictions[i] for i in first}
    )
    assert abs(one_share - logged[-1]) > 1e-6  # not one process's shard


def test_ddp_scst_with_a_reward_gathered_across_processes(world: Path, mle_run, tmp_path: Path):
    mle, _ = mle_run
    clip = make_tiny_clip(tmp_path)
    rewards = (
        f"[{{name: cider}}, {{name: contrastive, weight: 0.5, clip: {clip}, neighbours: [1]}}]"
    )
    out = tmp_path / "scst"
    scst = [f"data.dataset={world}", "data.batch_size=8", "data.val_images=4", "trainer.threads=1",
            "optim.max_epochs=1", "scst.samples=2", f"scst.rewards={rewards}", *DDP]  # fmt: skip
    output = finecap_train("scst_scenes_cider", out, scst, init=mle / "model")
    train_images = len(load_corpus(world).split("train"))
    steps, _ = checkpoint_position(out / "checkpoints" / "last.ckpt")
    assert steps == math.ceil(train_images / 2 / 8)
    assert output.count("finecap train: task scst") == 1 and output.count("model saved to") == 1
    rows = metrics(out)
    assert any(r.get("train/reward") for r in rows) and any(r["val/CIDEr"] for r in rows)
    assert (out / "model" / "model.safetensors").is_file()


def test_gathered_contrastive_reward_equals_one_batch_of_all_images(tmp_path: Path, monkeypatch):
    clip = make_tiny_clip(tmp_path)
    reward = create_reward("contrastive", clip=str(clip), neighbours=[])
    captions = ["a red circle", "a blue square", "a big dog", "the cat", "a man", "green grass"]
    pool = ["a photo", "a dog on grass", "a woman", "red"]
    embeddings = torch.nn.functional.normalize(
        torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )

    def batch(rows: slice, pool_rows: slice) -> RewardBatch:  # K = 1 caption per image
        return RewardBatch(captions[rows], image_embeddings=embeddings[rows], pool=pool[pool_rows])

    whole = reward(RewardBatch(captions[:4], image_embeddings=embeddings, pool=pool))
    # Process 1 of 2 holds images 2..3; process 0's images 0..1 arrive by the gather.
    theirs = reward._parts(batch(slice(0, 2), slice(0, 2)))
    monkeypatch.setattr(contrastive_module, "world_size", lambda: 2)
    monkeypatch.setattr(contrastive_module, "rank", lambda: 1)
    monkeypatch.setattr(contrastive_module, "gather_objects", lambda mine: [theirs, mine])
    mine = reward(batch(slice(2, 4), slice(2, 4)))
    torch.testing.assert_close(mine, whole[2:])
    alone = create_reward("contrastive", clip=str(clip), neighbours=[], across_processes=False)
    assert not torch.allclose(alone(batch(slice(2, 4), slice(2, 4))), whole[2:])
