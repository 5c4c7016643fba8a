"""Rewards: the interface, CLIP-S == the evaluation suite's CLIP-S, the contrastive formula,
the discriminator, weighting and the registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tests.helpers.tiny_models import make_tiny_clip

from finecap.clip import ClipEmbedder, load_clip
from finecap.metrics import clipscore
from finecap.rewards import (
    Reward,
    RewardBatch,
    WeightedReward,
    create_reward,
    list_rewards,
    register_reward,
    rewards_from_config,
)
from finecap.rewards.clip_rewards import ClipScorer
from finecap.rewards.contrastive import bidirectional_contrastive
from finecap.rewards.discriminator import Discriminator

CAPTIONS = [
    "a red square on the grass",
    "a dog",
    "two cats sitting on a table",
    "a blue circle",
    "a man running",
    "a big green triangle",
]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> ClipScorer:
    folder = make_tiny_clip(tmp_path_factory.mktemp("clip"))
    return ClipScorer(ClipEmbedder(load_clip(folder)))


def _images(n: int) -> list[Image.Image]:
    colors = ["red", "blue", "green", "yellow", "purple", "white"]
    return [Image.new("RGB", (40, 40), colors[i % len(colors)]) for i in range(n)]


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_registry_lists_every_builtin_reward() -> None:
    assert {"cider", "clip_s", "refclip_s", "grammar", "contrastive", "discriminator"} <= set(
        list_rewards()
    )
    with pytest.raises(KeyError, match="unknown reward"):
        create_reward("no-such-reward")


def test_batch_layout_and_validation() -> None:
    batch = RewardBatch(captions=list("abcdef"), references=[["x"], ["y"], ["z"]])
    assert (batch.num_images, batch.samples_per_image) == (3, 2)
    assert batch.image_index().tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="captions for"):
        RewardBatch(captions=list("abcd"), references=[["x"], ["y"], ["z"]])
    with pytest.raises(ValueError, match="disagree"):
        RewardBatch(captions=list("ab"), references=[["x"]], image_ids=[1, 2])


def test_clip_s_reward_equals_evaluation_clip_s(scorer: ClipScorer) -> None:
    images = _images(3)
    batch = RewardBatch(captions=CAPTIONS, images=images, image_ids=[10, 11, 12])
    reward = create_reward("clip_s", clip=scorer)(batch)  # (6,)
    # What `finecap evaluate` computes: the same embedder, prefix and pure function.
    embedder = scorer.embedder
    img = embedder.embed_images([images[i] for i in batch.image_index()])
    txt = embedder.embed_texts(CAPTIONS, prefix=clipscore.CLIP_S_PREFIX)
    expected = clipscore.clip_s(img, txt, w=clipscore.CLIP_S_WEIGHT)
    assert reward.shape == (6,)
    torch.testing.assert_close(reward, expected)
    # Direct formula, once more: 2.5 * max(cos, 0).
    cos = (img * txt).sum(-1)
    torch.testing.assert_close(reward, 2.5 * cos.clamp(min=0))


def test_clip_reward_caches_images_by_id(scorer: ClipScorer) -> None:
    reward = create_reward("clip_s", clip=scorer)
    first = reward(RewardBatch(captions=CAPTIONS[:2], images=_images(2), image_ids=["a", "b"]))
    # Same ids, no images: served from the cache.
    again = reward(RewardBatch(captions=CAPTIONS[:2], image_ids=["a", "b"]))
    torch.testing.assert_close(first, again)
    # Precomputed embeddings are used as given.
    emb = scorer.embedder.embed_images(_images(2))
    given = reward(RewardBatch(captions=CAPTIONS[:2], image_embeddings=emb))
    torch.testing.assert_close(first, given)


def test_refclip_s_reward_matches_metric(scorer: ClipScorer) -> None:
    images = _images(2)
    refs = [["a red square", "a square on grass"], ["a dog running"]]
    batch = RewardBatch(captions=CAPTIONS[:4], images=images, references=refs)
    for variant in ("hessel", "cho"):
        got = create_reward("refclip_s", clip=scorer, variant=variant)(batch)
        embedder = scorer.embedder
        idx = batch.image_index()
        img = embedder.embed_images(images)[idx]
        txt = embedder.embed_texts(CAPTIONS[:4], prefix=clipscore.CLIP_S_PREFIX)
        ref, mask = clipscore.embed_references(embedder, refs)
        expected = clipscore.refclip_s(img, txt, ref[idx], mask[idx], variant=variant)
        torch.testing.assert_close(got, expected)


def _contrastive_loop(img: torch.Tensor, txt: torch.Tensor, tau: float) -> torch.Tensor:
    """The formula written out caption by caption (see finecap.rewards.contrastive)."""
    b = len(img)
    k = len(txt) // b
    out = []
    for i in range(b):
        for s in range(k):
            t = txt[i * k + s]
            logit = lambda cap, v: tau * float(cap @ img[v])  # noqa: E731
            true = logit(t, i)
            others_t = [logit(txt[j * k + s], i) for j in range(b) if j != i]
            others_v = [logit(t, j) for j in range(b) if j != i]
            r_text = true - math.log(sum(math.exp(x) for x in others_t))
            r_image = true - math.log(sum(math.exp(x) for x in others_v))
            out.append((min(r_text, 16) + min(r_image, 16)) / (2 * tau))
    return torch.tensor(out)


@pytest.mark.parametrize(("b", "k", "tau"), [(4, 1, 10.0), (3, 5, 20.0), (5, 2, 100.0)])
def test_contrastive_matches_loop(b: int, k: int, tau: float) -> None:
    img, txt = _unit(b, 8, seed=1), _unit(b * k, 8, seed=2)
    txt[0] = img[0]  # one perfect match, so the clamp at 16 is exercised at tau = 100
    got = bidirectional_contrastive(img, txt, tau)
    torch.testing.assert_close(got, _contrastive_loop(img, txt, tau), atol=1e-5, rtol=1e-5)


def test_contrastive_clamps_and_needs_two_images() -> None:
    img = torch.eye(2)
    txt = torch.eye(2)  # perfect captions: every difference is tau * 1
    assert torch.allclose(bidirectional_contrastive(img, txt, tau=100.0), torch.full((2,), 0.16))
    with pytest.raises(ValueError, match="at least 2"):
        bidirectional_contrastive(img[:1], txt[:1], tau=10.0)


def test_contrastive_reward_uses_clip_scale(scorer: ClipScorer) -> None:
    images = _images(3)
    batch = RewardBatch(captions=CAPTIONS, images=images)
    reward = create_reward("contrastive", clip=scorer, neighbours=[])  # the batch images only
    img = scorer.embedder.embed_images(images)
    txt = scorer.embedder.embed_texts(CAPTIONS)
    expected = _contrastive_loop(img, txt, scorer.logit_scale)
    torch.testing.assert_close(reward(batch), expected, atol=1e-5, rtol=1e-5)


def test_discriminator_learns_to_separate() -> None:
    torch.manual_seed(0)
    disc = Discriminator(dim=8, hidden=(32,), lr=1e-2)
    shift = torch.zeros(8)
    shift[0] = 1.5
    img = _unit(64, 8, seed=3)
    ref = F.normalize(img + shift, dim=-1)  # references: near their image, shifted one way
    losses = []
    for _step in range(100):
        gen = F.normalize(img.repeat_interleave(2, 0) - shift + 0.3 * torch.randn(128, 8), dim=-1)
        losses.append(disc.update(img, ref, gen))
    assert losses[-1] < 0.2 < losses[0]
    gen = F.normalize(img - shift, dim=-1)
    assert disc.prob(img, ref).mean() > 0.9 and disc.prob(img, gen).mean() < 0.1
    # The update works even when the caller scores rewards under no_grad.
    with torch.no_grad():
        disc.update(img, ref, gen)


def test_discriminator_reward_scores_only_and_updates_on_request(scorer: ClipScorer) -> None:
    reward = create_reward("discriminator", clip=scorer, hidden=(16,))
    batch = RewardBatch(captions=CAPTIONS, images=_images(3), references=[["a"], ["b"], ["c"]])
    before = [p.clone() for p in reward.discriminator.parameters()]
    scores = reward(batch)
    assert scores.shape == (6,) and ((scores > 0) & (scores < 1)).all()
    unchanged = zip(before, reward.discriminator.parameters(), strict=True)
    assert reward.last_loss is None and all(torch.equal(a, p) for a, p in unchanged)
    reward.update(batch)  # the one online step: captions generated, references human
    assert reward.last_loss is not None
    assert any(
        not torch.equal(a, p)
        for a, p in zip(before, reward.discriminator.parameters(), strict=True)
    )


class _Length(Reward):
    name = "length"

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        return torch.tensor([float(len(c.split())) for c in batch.captions])


def test_weighted_reward_and_registration(scorer: ClipScorer) -> None:
    @register_reward("test_length")
    def _make() -> Reward:
        return _Length()

    length = create_reward("test_length")
    clip_s = create_reward("clip_s", clip=scorer)
    total = WeightedReward([(2.0, clip_s), (0.5, length)])
    batch = RewardBatch(captions=CAPTIONS, images=_images(3), image_ids=[1, 2, 3])
    parts = total.components(batch)
    assert set(parts) == {"clip_s", "length"}
    torch.testing.assert_close(total(batch), 2.0 * parts["clip_s"] + 0.5 * parts["length"])
    with pytest.raises(ValueError, match="duplicate"):
        WeightedReward([(1.0, length), (1.0, _Length())])


def test_rewards_from_config_shares_one_clip(tmp_path) -> None:
    folder = str(make_tiny_clip(tmp_path))
    total = rewards_from_config(
        [
            {"name": "clip_s", "weight": 1.0, "clip": folder},
            {"name": "contrastive", "weight": 0.5, "clip": folder, "neighbours": []},
        ]
    )
    (w1, r1), (w2, r2) = total.terms
    assert (w1, w2) == (1.0, 0.5) and r1.scorer is r2.scorer
    assert total(RewardBatch(captions=CAPTIONS, images=_images(3))).shape == (6,)


def test_cider_reward_wraps_cider_d_with_train_df() -> None:
    from finecap.metrics.cider import CiderD
    from finecap.metrics.tokenizer import ptb_tokenize, tokenize_captions

    refs = {
        1: ["A red circle on the grass.", "a red circle"],
        2: ["A blue square on sand.", "a small blue square"],
        3: ["Two green stars in the sky.", "green stars"],
    }
    reward = create_reward("cider", references=refs)
    batch = RewardBatch(
        captions=["a red circle on grass", "a blue square", "green stars in the sky", "sand"],
        image_ids=[1, 3],
    )
    got = reward(batch)
    direct = CiderD(tokenize_captions(refs), append_eos=True).score(
        [1, 1, 3, 3], [ptb_tokenize(c) for c in batch.captions]
    )
    torch.testing.assert_close(got, torch.tensor(direct, dtype=torch.float32))
    assert got[0] > got[1] and got[2] > got[3]
    with pytest.raises(ValueError, match="exactly one"):
        create_reward("cider")


def test_cider_reward_caches_its_scorer_by_dataset(tmp_path, monkeypatch) -> None:
    """The second reward on the same dataset file loads the saved scorer (no tokenizing) and
    scores exactly as the first; a changed file or a torn cache builds it again."""
    import json

    import finecap.rewards.cider as cider_module
    from finecap.rewards.cider import CiderConfig, CiderReward, scorer_cache_path

    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path / "cache"))
    images = [
        {"imgid": i, "filename": f"{i}.png", "split": "train",
         "sentences": [{"raw": text} for text in texts]}
        for i, texts in enumerate([
            ["A red circle on the grass.", "a red circle"],
            ["A blue square on sand.", "a small blue square"],
            ["Two green stars in the sky.", "green stars"],
        ])
    ]  # fmt: skip
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"images": images}))
    cfg = CiderConfig(dataset=str(dataset))
    batch = RewardBatch(
        captions=["a red circle", "blue sand", "green stars", "sky"], image_ids=[0, 2]
    )
    first = CiderReward(cfg)(batch)
    path = scorer_cache_path(cfg)
    assert path is not None and path.is_file()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cached scorer should have been loaded")

    monkeypatch.setattr(cider_module, "load_references", no_tokenizing)
    assert torch.equal(CiderReward(cfg)(batch), first)
    monkeypatch.undo()
    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path / "cache"))

    path.write_bytes(path.read_bytes()[:100])  # torn: rebuilt with a warning, then replaced
    with pytest.warns(UserWarning, match="rebuilding the cached scorer"):
        assert torch.equal(CiderReward(cfg)(batch), first)
    assert CiderReward(cfg)(batch).equal(first)
    images[0]["sentences"].append({"raw": "a circle"})
    dataset.write_text(json.dumps({"images": images}))
    assert scorer_cache_path(cfg) != path
    assert not CiderReward(cfg)(batch).equal(first)
    saved = sorted((tmp_path / "cache" / "cider").iterdir())
    dataset.write_text(json.dumps({"images": images[:2]}))
    CiderReward(CiderConfig(dataset=str(dataset), cache=False))  # cache off: nothing written
    assert sorted((tmp_path / "cache" / "cider").iterdir()) == saved
