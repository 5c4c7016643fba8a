"""Chaffin et al. (2022) as their released wtf-rl.py: the contrastive reward's pools against a
plain loop, the discriminator's one update per step, the ground-truth weighting rules,
`finecap discriminator train`, and one SCST step of each contrastive recipe."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.helpers.tiny_captioners import tiny_decoder_config, tiny_encoder_config
from tests.helpers.tiny_models import make_tiny_clip

from finecap.captioner import Captioner
from finecap.clip import ClipEmbedder, load_clip
from finecap.config import ConfigError
from finecap.models import ModelConfig
from finecap.rewards import RewardBatch, TrainingImages, create_reward
from finecap.rewards.clip_rewards import ClipScorer
from finecap.rewards.contrastive import NeighbourIndex, bidirectional_contrastive
from finecap.rewards.discriminator import Discriminator, DiscriminatorReward
from finecap.scenes import generate_world
from finecap.train.config import load_config
from finecap.train.data import CaptionDataModule
from finecap.train.run import train
from finecap.train.scst import (
    GT_WEIGHTINGS,
    SCSTTask,
    clamped_advantage,
    reward_weight,
    training_images,
)
from finecap.train.tasks import create_task

CONFIGS = Path(__file__).parents[1] / "src" / "finecap" / "configs"
CONTRASTIVE_RECIPES = [
    "scst_scenes_contrastive",
    "scst_scenes_contrastive_samples",
    "scst_scenes_contrastive_disc",
    "scst_scenes_contrastive_gt",
    "scst_scenes_contrastive_greedy",
]


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _reference_loop(img, txt, pool, neighbours, tau: float, clamp: float = 16.0) -> torch.Tensor:  # noqa: ANN001
    """The reference's reward caption by caption. img (B, P); txt (B*K, P) grouped per image;
    pool (M, P) texts; neighbours (B*R, P) images. Round k's texts: caption k of every image
    plus the pool; images: the batch then the neighbours."""
    b = len(img)
    k = len(txt) // b
    images = list(img) + list(neighbours)
    out = []
    for i in range(b):
        for s in range(k):
            texts = [txt[j * k + s] for j in range(b)] + list(pool)
            t = texts[i]

            def logit(a: torch.Tensor, v: torch.Tensor) -> float:
                return tau * float(a @ v)

            true = logit(t, img[i])
            others_t = [logit(u, img[i]) for n, u in enumerate(texts) if n != i]
            others_v = [logit(t, v) for n, v in enumerate(images) if n != i]
            r_text = true - math.log(sum(math.exp(x) for x in others_t))
            r_image = true - math.log(sum(math.exp(x) for x in others_v))
            out.append((min(r_text, clamp) + min(r_image, clamp)) / (2 * tau))
    return torch.tensor(out)


@pytest.mark.parametrize(("b", "k", "m", "r", "tau"), [(4, 1, 8, 2, 10.0), (3, 2, 3, 1, 100.0)])
def test_contrastive_with_pool_and_neighbours_matches_loop(
    b: int, k: int, m: int, r: int, tau: float
) -> None:
    img, txt = _unit(b, 8, seed=1), _unit(b * k, 8, seed=2)
    pool, neighbours = _unit(m, 8, seed=3), _unit(b * r, 8, seed=4)
    txt[0] = img[0]  # a perfect match: the clamp at 16 is exercised at tau = 100
    got = bidirectional_contrastive(img, txt, tau, 16.0, pool, neighbours)
    want = _reference_loop(img, txt, pool, neighbours, tau)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_one_image_competes_with_the_pool_and_neighbours() -> None:
    img, txt = _unit(1, 8, seed=1), _unit(1, 8, seed=2)
    pool, neighbours = _unit(2, 8, seed=3), _unit(2, 8, seed=4)
    got = bidirectional_contrastive(img, txt, 10.0, 16.0, pool, neighbours)
    torch.testing.assert_close(got, _reference_loop(img, txt, pool, neighbours, 10.0))
    with pytest.raises(ValueError, match="at least 2"):
        bidirectional_contrastive(img, txt, 10.0, 16.0, pool, None)


def test_neighbour_index_finds_the_ranked_nearest_others() -> None:
    emb = _unit(30, 8, seed=5)
    index = NeighbourIndex(list(range(100, 130)), emb, ranks=[0, 3])
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))
    order = sims.argsort(dim=1, descending=True)
    assert index.neighbours.tolist() == order[:, [0, 3]].tolist()
    got = index.neighbour_embeddings([105, 101])  # (2 * 2, P), grouped per image
    torch.testing.assert_close(got, emb[order[[5, 5, 1, 1], [0, 3, 0, 3]]])
    with pytest.raises(KeyError, match="not in the neighbour index"):
        index.neighbour_embeddings([7])
    with pytest.raises(ValueError, match="at least 5 training images"):
        NeighbourIndex([0, 1, 2], emb[:3], ranks=[3])


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def scorer(clip_folder: Path) -> ClipScorer:
    return ClipScorer(ClipEmbedder(load_clip(clip_folder)))


def _images(n: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [
        Image.fromarray((torch.rand(24, 24, 3, generator=g) * 255).byte().numpy()) for _ in range(n)
    ]


def test_contrastive_reward_pools_ground_truth_greedy_and_neighbours(scorer: ClipScorer) -> None:
    """The reward as SCST calls it: 3 batch images of 10 training images, one beam caption
    per image, the pool of ground-truth and greedy captions, 2 neighbours each (ranks 3, 4)."""
    train_images = _images(10)
    ids = [f"im{i}" for i in range(10)]
    reward = create_reward("contrastive", clip=scorer, neighbours=[3, 4])
    reward.prepare(TrainingImages(ids, lambda i: train_images[i]))
    batch_rows = [2, 7, 4]
    policy = ["a red square", "two cats", "a dog on grass"]
    ground_truth = ["a red square on the grass", "two cats on a table", "a dog running"]
    greedy = ["a square", "a cat", "a dog"]
    pool = [t for i in range(3) for t in (ground_truth[i], greedy[i])]  # grouped per image
    batch = RewardBatch(
        policy,
        image_ids=[ids[i] for i in batch_rows],
        images=[train_images[i] for i in batch_rows],
        pool=pool,
    )
    got = reward(batch)
    emb = scorer.embedder.embed_images(train_images)
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))
    nearest = sims.argsort(dim=1, descending=True)
    neighbours = emb[[int(nearest[i, r]) for i in batch_rows for r in (3, 4)]]
    txt = scorer.embedder.embed_texts(policy + pool)
    want = _reference_loop(emb[batch_rows], txt[:3], txt[3:], neighbours, scorer.logit_scale)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Without the index the neighbours cannot be found: a clear error, not a silent change.
    with pytest.raises(ValueError, match="prepare"):
        create_reward("contrastive", clip=scorer)(batch)


def test_ground_truth_weighting_rules_by_hand() -> None:
    gt = torch.tensor([[0.5, -0.2], [0.1, 0.3]])  # B=2 images, C=2 references
    policy = torch.tensor([[0.0, 0.2], [0.4, 0.4]])  # K=2 policy rewards
    assert reward_weight(gt, policy).tolist() == pytest.approx([0.5, -0.2, 0.1, 0.3])
    assert clamped_advantage(gt, policy).tolist() == pytest.approx([0.4, 0.0, 0.0, 0.0])
    assert set(GT_WEIGHTINGS) == {"reward", "clamp_advantage"}
    assert load_config(CONFIGS / "scst_scenes_contrastive_gt.yaml").scst.gt_weighting == "reward"


def test_pool_per_kind() -> None:
    texts = {
        "policy": ["p0", "p1"],
        "ground_truth": ["g0", "h0", "g1", "h1"],
        "greedy": ["x0", "x1"],
    }
    full = SimpleNamespace(scst=SimpleNamespace(pool=["ground_truth", "greedy"]))
    assert SCSTTask._pool(full, "policy", texts, 2) == ["g0", "h0", "x0", "g1", "h1", "x1"]
    assert SCSTTask._pool(full, "ground_truth", texts, 2) == ["p0", "x0", "p1", "x1"]
    empty = SimpleNamespace(scst=SimpleNamespace(pool=[]))
    assert SCSTTask._pool(empty, "policy", texts, 2) is None
    assert SCSTTask._pool(empty, "ground_truth", texts, 2) is None  # GT against GT only


# ------------------------------------------------------------------ tiny scenes world runs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), n=40, image_size=32)


@pytest.fixture(scope="module")
def mle(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny captioner over the world's vocabulary (what SCST starts from)."""
    data = CaptionDataModule(
        load_config(CONFIGS / "scst_scenes_base.yaml").data.replace(dataset=str(world))
    )
    config = ModelConfig(encoder=tiny_encoder_config(), decoder=tiny_decoder_config(max_len=16))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mle") / "model"
    Captioner.create(config, data.build_vocab()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def discriminator(world: Path, clip_folder: Path, mle: Path, tmp_path_factory) -> Path:  # noqa: ANN001
    from finecap.cli import main

    out = tmp_path_factory.mktemp("disc") / "discriminator"
    argv = ["discriminator", "train", "--dataset", str(world), "--clip", str(clip_folder)]
    argv += ["--out", str(out), "--captioner", str(mle), "--epochs", "2", "--hidden", "16"]
    assert main(argv) == 0
    return out


def test_discriminator_train_writes_a_loadable_discriminator(
    discriminator: Path, world: Path, clip_folder: Path, scorer: ClipScorer, tmp_path: Path
) -> None:
    import json

    saved = json.loads((discriminator / "config.json").read_text())
    assert saved["hidden"] == [16] and saved["trained"]["negatives"] == "captioner"
    assert 0 <= saved["trained"]["eval"]["reference_accuracy"] <= 1
    reward = create_reward("discriminator", clip=scorer, pretrained=str(discriminator))
    model, _ = Discriminator.from_pretrained(discriminator)
    for a, b in zip(model.parameters(), reward.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)
    scores = reward(RewardBatch(["a red circle", "a blue square"], images=_images(2)))
    assert ((scores > 0) & (scores < 1)).all()
    # Without a captioner: corrupted and mismatched references are the generated class.
    from finecap.rewards.discriminator import DiscriminatorTrainConfig, train_discriminator

    config = DiscriminatorTrainConfig(epochs=1, hidden=[8], eval_split="")
    facts = train_discriminator(world, clip_folder, tmp_path / "d", config)
    assert facts["negatives"] == "corrupted_and_mismatched" and facts["eval"] is None
    Discriminator.from_pretrained(tmp_path / "d")


def _recipe(name: str, world: Path, clip: Path, discriminator: Path, out: Path, *extra: str):  # noqa: ANN202
    overrides = [
        f"data.dataset={world}", "data.batch_size=8", "data.val_images=0",
        f"output_dir={out}", "optim.max_epochs=1", "trainer.threads=1", *extra,
    ]  # fmt: skip
    config = load_config(CONFIGS / f"{name}.yaml", overrides)
    for term in config.scst.rewards:
        term.clip = str(clip)
        if term.name == "discriminator":
            term.pretrained = str(discriminator)
    return config


def _one_step(config, mle: Path) -> tuple[SCSTTask, torch.Tensor]:  # noqa: ANN001
    task, batch = _task_and_batch(config, mle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = task.training_step(batch, 0)
    return task, loss


def _task_and_batch(config, mle: Path):  # noqa: ANN001, ANN202
    from finecap.train.run import resolve_model

    config, initial = resolve_model(config, mle)
    data = CaptionDataModule(config.data)
    task = create_task(config, initial.vocab, initial.model)
    encoder = task.model.encoder
    data.vocab, data.preprocess = initial.vocab, encoder.preprocess
    data.cache_side = encoder.input_side
    data.setup("fit")
    task.reward.prepare(training_images(data.train_set))  # what on_fit_start does
    return task, next(iter(data.train_dataloader()))


@pytest.mark.parametrize("name", CONTRASTIVE_RECIPES)
def test_one_scst_step_of_each_contrastive_recipe(
    name: str, world: Path, clip_folder: Path, discriminator: Path, mle: Path, tmp_path: Path
) -> None:
    config = _recipe(name, world, clip_folder, discriminator, tmp_path / "run")
    task, loss = _one_step(config, mle)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in task.model.decoder.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)


def test_exactly_one_discriminator_update_per_step_with_ground_truth(
    world: Path, clip_folder: Path, discriminator: Path, mle: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    terms = f"{{name: contrastive, weight: 0.94, clip: {clip_folder}}}, " + (
        f"{{name: discriminator, weight: 0.06, clip: {clip_folder}}}"
    )
    config = _recipe(
        "scst_scenes_contrastive_gt",
        *(world, clip_folder, discriminator, tmp_path / "run"),
        f"scst.rewards=[{terms}]",
    )
    assert config.scst.gt_weight > 0
    updates: list[RewardBatch] = []
    original = DiscriminatorReward.update

    def counted(self, batch: RewardBatch) -> None:  # noqa: ANN001
        updates.append(batch)
        before = [p.clone() for p in self.discriminator.parameters()]
        original(self, batch)
        assert any(
            not torch.equal(a, p)
            for a, p in zip(before, self.discriminator.parameters(), strict=True)
        )

    steps: list[int] = []
    monkeypatch.setattr(DiscriminatorReward, "update", counted)
    monkeypatch.setattr(
        Discriminator, "update", _counting(Discriminator.update, steps), raising=True
    )
    task, _ = _one_step(config, mle)
    assert len(updates) == 1 and len(steps) == 1
    (batch,) = updates
    assert len(batch.captions) == len(batch.image_ids)  # one beam caption per image: generated
    assert batch.ground_truth is not None and len(batch.ground_truth) == len(batch.image_ids)
    # Scoring references (as RL on ground truth does) leaves the discriminator as it was.
    disc = next(r for _, r in task.reward.terms if isinstance(r, DiscriminatorReward))
    before = [p.clone() for p in disc.discriminator.parameters()]
    disc(RewardBatch(batch.ground_truth, image_ids=batch.image_ids, images=batch.images))
    assert all(
        torch.equal(a, p) for a, p in zip(before, disc.discriminator.parameters(), strict=True)
    )
    assert len(steps) == 1


def _counting(fn, calls: list[int]):  # noqa: ANN001, ANN202
    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_contrastive_disc_recipe_trains_end_to_end(
    world: Path, clip_folder: Path, discriminator: Path, mle: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    """`train` builds the neighbour index when fitting starts (on_fit_start) and exports."""
    config = _recipe(
        "scst_scenes_contrastive_disc", world, clip_folder, discriminator, tmp_path / "run"
    )
    folder = train(config, init=mle)
    assert "32 training images indexed for neighbours [3, 4]" in capsys.readouterr().out
    assert Captioner.from_pretrained(folder).caption(_images(1)[0]).text is not None


def test_rl_on_ground_truth_can_learn_from_the_descriptions_only(
    world: Path, clip_folder: Path, discriminator: Path, mle: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    """`scst.gt_texts: learned`: the references still come in the batch (CIDEr-D reads
    them), but only the `data.learn_from` texts are ground-truth trajectories."""
    import finecap.train.scst as scst

    weights: list[torch.Tensor] = []

    def recorded(logprobs, mask, advantage):  # noqa: ANN001, ANN202
        weights.append(advantage.detach())
        return scst_loss(logprobs, mask, advantage)

    scst_loss = scst.policy_gradient_loss
    monkeypatch.setattr(scst, "policy_gradient_loss", recorded)
    terms = f"scst.rewards=[{{name: contrastive, weight: 1, clip: {clip_folder}}}]"
    learn = ["data.learn_from=descriptions", "scst.gt_weighting=reward", terms]
    gt = {}
    for texts in ("all", "learned"):
        config = _recipe(
            "scst_scenes_default",
            *(world, clip_folder, discriminator, tmp_path / texts),
            *learn,
            f"scst.gt_texts={texts}",
        )
        torch.manual_seed(0)
        task, batch = _task_and_batch(config, mle)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            task.training_step(batch, 0)
        gt[texts] = weights[-1]  # the second call: the ground-truth loss's weights
    learned = batch.learned
    assert learned.any() and not learned.all()  # both kinds in the batch
    assert (gt["all"][~learned] != 0).all()  # every reference weighted by its reward ...
    assert (gt["learned"][~learned] == 0).all()  # ... or not at all
    assert torch.equal(gt["learned"][learned], gt["all"][learned])
    with pytest.raises(ConfigError, match="data.learn_from is not set"):
        _recipe("scst_scenes_default", world, clip_folder, discriminator, tmp_path / "x",
                terms, "scst.gt_texts=learned", "data.learn_from=null",
                "data.learn_longest=false")  # fmt: skip
