"""SCST: the loss against hand computations for each baseline, and a short run that learns."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import pytest
import torch

from finecap.captioner import Captioner
from finecap.data.images import load_image
from finecap.decoding import SamplingConfig, sample
from finecap.rewards import Reward, RewardBatch, RewardConfig, register_reward
from finecap.scenes import generate_world
from finecap.train.config import load_config
from finecap.train.run import train
from finecap.train.scst import (
    _BASELINES,
    greedy_reward,
    mean_of_others,
    no_baseline,
    policy_gradient_loss,
)
from finecap.train.tasks import check_finite

CONFIGS = Path(__file__).parents[1] / "src" / "finecap" / "configs"
TARGET = "red"


class SaysRedConfig(RewardConfig):
    name: Literal["test_says_red"] = "test_says_red"


@register_reward("test_says_red", config=SaysRedConfig)
class SaysRed(Reward):
    """1 per occurrence of the word "red" (a reward a tiny model can learn in a few steps)."""

    name = "test_says_red"

    def __init__(self, config: SaysRedConfig) -> None:
        self.config = config

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return torch.tensor([float(c.split().count(TARGET)) for c in batch.captions])


def test_baselines_by_hand() -> None:
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # B=2 images, K=3 samples
    assert mean_of_others(rewards, None, 3).tolist() == [4.0, 3.5, 1.5, 1.5, 1.5, 0.0]
    greedy = torch.tensor([5.0, -1.0])
    assert greedy_reward(rewards, greedy, 3).tolist() == [5.0, 5.0, 5.0, -1.0, -1.0, -1.0]
    assert no_baseline(rewards, None, 3).tolist() == [0.0] * 6
    assert set(_BASELINES.names()) == {"greedy", "mean", "none"}


def test_policy_gradient_loss_by_hand() -> None:
    # Two captions: "w1 w2 <eos>" and "w1 <eos> <pad>" (mask stops after the first <eos>).
    logprobs = torch.tensor([[-0.5, -1.0, -0.25], [-2.0, -0.1, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantage = torch.tensor([2.0, -1.0])
    expected = -((-0.5 - 1.0 - 0.25) * 2.0 + (-2.0 - 0.1) * -1.0) / 5
    loss = policy_gradient_loss(logprobs, mask, advantage)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    loss.backward()
    assert logprobs.grad[1, 2] == 0.0  # padding gets no gradient
    assert math.isclose(logprobs.grad[0, 0].item(), -2.0 / 5, rel_tol=1e-6)


def test_non_finite_values_stop_with_a_message() -> None:
    with pytest.raises(FloatingPointError, match="non-finite reward"):
        check_finite("reward", torch.tensor([1.0, float("nan")]))


def _mean_reward(model_dir: Path, world: Path) -> float:
    captioner = Captioner.from_pretrained(model_dir)
    image = load_image(world.parent / "images" / "scene_000000.png")
    enc = captioner.model.encode(captioner.model.encoder.preprocess([image] * 8))
    torch.manual_seed(0)
    with torch.no_grad():
        decoded = sample(captioner.model.decoder, enc, SamplingConfig(n=8, max_len=10))
    captions = [captioner.vocab.decode(row) for row in decoded.tokens.tolist()]
    return sum(c.split().count(TARGET) for c in captions) / len(captions)


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_short_scst_run_raises_the_mean_reward(tmp_path: Path, baseline: str) -> None:
    world = generate_world(tmp_path / "world", 24, seed=3, image_size=48)
    tiny = [
        f"data.dataset={world}", "model.encoder.image_size=48", "model.encoder.width=16",
        "model.decoder.hidden_size=32", "model.decoder.embed_size=16",
        "model.decoder.attention_size=16", "data.batch_size=8", "data.val_images=4",
        "optim.warmup_steps=1", "trainer.threads=1",
    ]  # fmt: skip
    mle_overrides = [*tiny, "optim.max_epochs=3", f"output_dir={tmp_path / 'mle'}"]
    mle = train(load_config(CONFIGS / "scenes_lstm.yaml", mle_overrides))
    scst = load_config(
        CONFIGS / "scst_scenes_cider.yaml",
        # No validation images: the last model is exported, not the best-CIDEr one.
        [*tiny, "optim.max_epochs=15", "optim.lr=0.01", f"output_dir={tmp_path / 'scst'}",
         "data.val_images=0",
         f"scst.baseline={baseline}", "scst.rewards=[{name: test_says_red, weight: 1.0}]"],
    )  # fmt: skip
    tuned = train(scst, init=mle)
    assert _mean_reward(tuned, world) > _mean_reward(mle, world) + 0.5


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("scst_*.yaml")), ids=lambda p: p.stem)
def test_every_scst_recipe_names_known_rewards(path: Path) -> None:
    from finecap.rewards import list_rewards

    config = load_config(path)
    assert config.task == "scst"
    for term in config.scst.rewards:
        assert term.name in list_rewards()
