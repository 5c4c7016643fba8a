"""Cho et al.'s COCO recipes: the open_clip CLIP-ResNet grid encoder (tiny open_clip-layout
checkpoints, outputs pinned against open_clip's own ModifiedResNet), the transformer's region
encoder, and every cho_coco recipe building its model and running one MLE / SCST step on tiny
random models."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from finecap.captioner import Captioner
from finecap.data.vocab import Vocab
from finecap.hub import WeightsNotFoundError
from finecap.models import (
    EncoderOutput,
    ModelConfig,
    create_encoder,
    decoder_config,
    encoder_config,
)
from finecap.models.open_clip_encoder import CheckpointFormatError
from finecap.train.config import load_config
from finecap.train.data import CaptionBatch, encode_captions
from finecap.train.tasks import create_task
from helpers.tiny_captioners import random_images, tiny_vocab
from helpers.tiny_models import make_tiny_clip
from helpers.tiny_open_clip import TINY_OPEN_CLIP, save_tiny_open_clip, tiny_open_clip_state

CHO_RECIPES = [
    "cho_coco_mle",
    "cho_coco_cider",
    "cho_coco_clip_s",
    "cho_coco_cider_clip_s",
    "cho_coco_clip_s_grammar",
]


def _pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the encoder


def test_open_clip_checkpoint_gives_the_grid_open_clips_modified_resnet_gives(tmp_path) -> None:
    """The pins are open_clip 3.3's `ModifiedResNet` (stem, layer1..4) run on the same tiny
    checkpoint (helpers.tiny_open_clip) and input."""
    folder = save_tiny_open_clip(tmp_path / "tiny-rn")
    encoder = create_encoder(encoder_config("open_clip", pretrained=str(folder))).eval()
    with torch.no_grad():
        out = encoder(_pixels())
        grid = encoder.trunk(_pixels())  # (B, D, h, w)
    assert encoder.feature_dim == 256 and encoder.input_side == 64
    assert out.regions.shape == (2, 4, 256) and out.pooled.shape == (2, 256)
    torch.testing.assert_close(out.regions, grid.flatten(2).transpose(1, 2))
    pins = {
        "sum_c": [133.64565, 138.55106, 132.35449, 137.43604, 133.75053, 138.31638],
        "first": [0.432, 1.72222, 0.0, 0.0, 0.0, 0.28781],
        "last": [2.16202, 0.0, 4.27069, 1.51491, 0.38792, 0.11865],
    }
    got = {
        "sum_c": grid.sum(1).flatten()[:6].tolist(),
        "first": grid[0, :6, 0, 0].tolist(),
        "last": grid[1, -6:, 1, 1].tolist(),
    }
    for key, expected in pins.items():
        assert got[key] == pytest.approx(expected, abs=2e-4), key
    assert grid.abs().mean().item() == pytest.approx(0.5291005, abs=1e-5)


def test_open_clip_itself_when_it_imports(tmp_path) -> None:
    """A tiny random open_clip CLIP built with open_clip's own classes, saved as safetensors +
    its config, loads into the encoder and gives its visual trunk's grid; preprocessing equals
    open_clip's eval transform. open_clip imports torchvision, which PyPI's wheels cannot load
    beside the CPU torch finecap installs: skipped there."""
    try:
        import open_clip
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    except Exception as err:  # noqa: BLE001 (a broken torchvision raises RuntimeError)
        pytest.skip(f"open_clip does not import here ({type(err).__name__})")
    torch.manual_seed(0)
    vision = {k: v for k, v in TINY_OPEN_CLIP["vision_cfg"].items() if k != "layers"}
    model = CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), **vision),
        text_cfg=CLIPTextCfg(**TINY_OPEN_CLIP["text_cfg"]),
    ).eval()
    folder = tmp_path / "open-clip"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "m.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    encoder = create_encoder(encoder_config("open_clip", pretrained=str(folder))).eval()
    v = model.visual
    with torch.no_grad():
        expected = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(_pixels())))))
        torch.testing.assert_close(encoder.trunk(_pixels()), expected)
    image = random_images(1, size=90)[0].resize((90, 50))
    transform = open_clip.image_transform(64, is_train=False)
    torch.testing.assert_close(encoder.preprocess([image])[0], transform(image), atol=1e-5, rtol=0)


def test_weights_files_load_safely_and_bad_ones_are_one_sentence(tmp_path) -> None:
    state = tiny_open_clip_state(seed=1)
    save_file(state, tmp_path / "rn.safetensors")
    torch.save(state, tmp_path / "rn.bin")
    from_file = [
        create_encoder(
            encoder_config(
                "open_clip", pretrained=str(tmp_path / name), open_clip_config=TINY_OPEN_CLIP
            )
        )
        for name in ("rn.safetensors", "rn.bin")
    ]
    expected = {k[len("visual.") :]: v for k, v in state.items() if "attnpool" not in k}
    for encoder in from_file:
        for key, value in encoder.trunk.state_dict().items():
            assert torch.equal(value, expected[key]), key
    torch.save({"weights": Image.new("RGB", (2, 2))}, tmp_path / "pickled.bin")  # not tensors
    pickled = encoder_config(
        "open_clip", pretrained=str(tmp_path / "pickled.bin"), open_clip_config=TINY_OPEN_CLIP
    )
    with pytest.raises(CheckpointFormatError, match="without unpickling"):
        create_encoder(pickled)
    wider = {"vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "width": 16}}
    with pytest.raises(CheckpointFormatError, match="not the weights of this CLIP ResNet"):
        create_encoder(
            encoder_config(
                "open_clip", pretrained=str(tmp_path / "rn.safetensors"), open_clip_config=wider
            )
        )
    vit = {"vision_cfg": {"layers": 12, "width": 768, "patch_size": 32}}
    with pytest.raises(CheckpointFormatError, match="use the `clip` encoder"):
        create_encoder(encoder_config("open_clip", open_clip_config=vit))


def test_preprocessing_follows_the_checkpoint_and_the_settings(tmp_path) -> None:
    folder = save_tiny_open_clip(
        tmp_path / "rn", preprocess_cfg={"mean": [0.5] * 3, "std": [0.5] * 3}
    )
    wide = random_images(1, size=128)[0].resize((128, 64))
    shortest = create_encoder(encoder_config("open_clip", pretrained=str(folder)))
    squash = create_encoder(
        encoder_config("open_clip", pretrained=str(folder), resize_mode="squash")
    )
    # shortest side to 64 (already), then the centre 64 x 64: a squash of that crop
    torch.testing.assert_close(
        shortest.preprocess([wide]), squash.preprocess([wide.crop((32, 0, 96, 64))])
    )
    assert squash.preprocess([Image.new("RGB", (9, 5), "white")]).eq(1.0).all()  # (1 - .5) / .5
    big = create_encoder(encoder_config("open_clip", pretrained=str(folder), image_size=128))
    assert big.preprocess([wide]).shape == (1, 3, 128, 128)
    assert big(big.preprocess([wide])).regions.shape == (1, 16, 256)  # 4 x 4 grid


def test_an_open_clip_tag_offline_is_one_clear_sentence(monkeypatch, tmp_path) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path), raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        create_encoder(encoder_config("open_clip", model="RN50", pretrained="openai"))
    message = str(info.value)
    assert "timm/resnet50_clip.openai" in message and "offline" in message
    assert "huggingface-cli download" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")


def test_a_saved_captioner_rebuilds_its_open_clip_trunk_without_the_source(tmp_path) -> None:
    folder = save_tiny_open_clip(tmp_path / "hub" / "rn")
    config = ModelConfig(
        encoder=encoder_config("open_clip", pretrained=str(folder), resize_mode="squash"),
        decoder=decoder_config(
            "transformer",
            hidden_size=32,
            num_heads=4,
            ffn_size=48,
            num_layers=1,
            encoder_layers=1,
            dropout=0.0,
            max_len=8,
        ),
    )
    torch.manual_seed(0)
    captioner = Captioner.create(config, tiny_vocab())
    captioner.model.eval()
    captioner.save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "hub")
    loaded = Captioner.from_pretrained(tmp_path / "model")
    for key, value in captioner.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    assert loaded.model.encoder.processor == captioner.model.encoder.processor
    images = random_images(2, size=40, seed=1)
    assert [c.text for c in loaded.caption(images, 2)] == [
        c.text for c in captioner.caption(images, 2)
    ]


# --------------------------------------------------------------------------- region encoder


def _transformer(encoder_layers: int, feature_dim: int = 8):  # noqa: ANN202
    from finecap.models import create_decoder

    torch.manual_seed(0)
    config = decoder_config(
        "transformer",
        hidden_size=16,
        num_heads=2,
        ffn_size=24,
        num_layers=2,
        encoder_layers=encoder_layers,
        dropout=0.0,
        max_len=8,
    )
    return create_decoder(config, 20, feature_dim).eval()


def test_region_encoder_layers_are_optional_and_respect_the_mask() -> None:
    plain = _transformer(0)
    assert plain.region_encoder is None
    assert not any(k.startswith("region_encoder") for k in plain.state_dict())  # old models load
    decoder = _transformer(2)
    assert len(decoder.region_encoder.blocks) == 2
    regions = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    tokens = torch.tensor([[Vocab.bos_id, 5, 6, 7], [Vocab.bos_id, 9, 4, 10]])
    with torch.no_grad():
        forced = decoder(EncoderOutput(regions, mask, regions.mean(1)), tokens)
        noisy = regions.clone()
        noisy[1, 3:] = 100.0  # padded regions: changed, and attended by no one
        again = decoder(EncoderOutput(noisy, mask, regions.mean(1)), tokens)
        torch.testing.assert_close(forced.logits, again.logits)
        state = decoder.init_state(EncoderOutput(regions, mask, regions.mean(1)))
        for t in range(tokens.shape[1]):  # the cached steps see the same encoded regions
            out = decoder.step(tokens[:, t], state)
            state = out.state
            torch.testing.assert_close(out.logits, forced.logits[:, t], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the recipes


def test_cho_recipes_carry_chos_settings() -> None:
    """The numbers of configs/phase1/clipRN50_mle.yml and configs/phase2/clipRN50_*.yml."""
    mle = load_config("cho_coco_mle")
    enc, dec = mle.model.encoder.to_dict(), mle.model.decoder.to_dict()
    assert enc | {"name": "open_clip", "model": "RN50", "pretrained": "openai"} == enc
    assert enc | {"image_size": 448, "resize_mode": "squash", "freeze": True} == enc
    sizes = {"encoder_layers": 6, "num_layers": 6, "hidden_size": 512, "ffn_size": 2048}
    assert dec | sizes | {"num_heads": 8, "dropout": 0.1, "max_len": 20} == dec
    assert (mle.data.batch_size, mle.data.max_len, mle.optim.max_epochs) == (200, 16, 25)
    assert mle.optim.lr == pytest.approx(512**-0.5 * 20000**-0.5)  # Noam's peak, at step 20k
    batches = {"cider": 200, "clip_s": 160, "cider_clip_s": 160, "clip_s_grammar": 160}
    for row, batch in batches.items():
        scst = load_config(f"cho_coco_{row}")
        assert (scst.data.batch_size, scst.optim.lr, scst.optim.max_epochs) == (batch, 5e-6, 15)
        assert (scst.scst.samples, scst.scst.baseline, scst.scst.max_len) == (5, "greedy", 20)
        assert scst.optim.min_lr_ratio == 1.0  # constant
    weights = {t.name: t.weight for t in load_config("cho_coco_cider_clip_s").scst.rewards}
    assert weights == {"clip_s": 2.0, "cider": 1.0}
    weights = {t.name: t.weight for t in load_config("cho_coco_clip_s_grammar").scst.rewards}
    assert weights == {"clip_s": 2.0, "grammar": 1.0}


TINY_MODEL = [
    "model.encoder.image_size=64",
    "model.decoder.hidden_size=32",
    "model.decoder.num_heads=4",
    "model.decoder.ffn_size=48",
    "model.decoder.num_layers=1",
    "model.decoder.encoder_layers=1",
    "model.decoder.dropout=0.0",
]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> dict[str, Path]:
    """A tiny open_clip folder, a tiny CLIP, a grammar folder on it and a Karpathy dataset."""
    from finecap.clip import load_clip
    from finecap.clip.grammar import GrammarConfig, GrammarHead, GrammarModel

    root = tmp_path_factory.mktemp("cho")
    clip = make_tiny_clip(root)
    dim = load_clip(clip).model.config.text_config.hidden_size
    grammar = root / "grammar"
    GrammarModel(load_clip(clip), GrammarHead(dim), GrammarConfig(hidden_size=dim)).save_pretrained(
        grammar
    )
    captions = ["a red circle left of a blue square", "a big green triangle", "the small circle"]
    images = [
        {
            "filename": f"img{i}.png",
            "imgid": i,
            "split": "train",
            "sentences": [{"raw": c} for c in captions],
        }
        for i in range(3)
    ]
    (root / "dataset.json").write_text(json.dumps({"images": images}))
    return {
        "open_clip": save_tiny_open_clip(root / "rn"),
        "clip": clip,
        "grammar": grammar,
        "dataset": root / "dataset.json",
    }


def _batch(vocab: Vocab) -> CaptionBatch:
    """Two images, two captions each."""
    images = random_images(2, size=48)
    captions = ["a red circle left of a blue square", "a big green triangle"]
    return CaptionBatch(
        pixels=None,
        tokens=encode_captions(vocab, captions * 2, max_len=8),  # (B*C, T)
        image_ids=[0, 1],
        references=[captions, captions],
        images=images,
    )


@pytest.mark.parametrize("name", CHO_RECIPES)
def test_every_cho_recipe_builds_its_model_and_runs_a_step(name: str, tiny_world) -> None:
    world, vocab = tiny_world, tiny_vocab()
    mle = load_config(
        "cho_coco_mle",
        [
            *TINY_MODEL,
            f"model.encoder.pretrained={world['open_clip']}",
            f"data.dataset={world['dataset']}",
        ],
    )
    torch.manual_seed(0)
    task = create_task(mle, vocab)
    if name != "cho_coco_mle":
        overrides = [f"data.dataset={world['dataset']}", "scst.max_len=8"]
        config = load_config(name)
        for i, term in enumerate(config.scst.rewards):
            if term.name == "clip_s" and term.clip_from != "grammar":
                overrides.append(f"scst.rewards.{i}.clip={world['clip']}")
            if term.name == "grammar":
                overrides.append(f"scst.rewards.{i}.model={world['grammar']}")
        task = create_task(load_config(name, overrides), vocab, task.model)
    batch = _batch(vocab)
    batch.pixels = task.model.encoder.preprocess(batch.images)
    task.train()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached
        loss = task.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    decoder = task.model.decoder
    assert all(p.grad is not None for p in decoder.region_encoder.parameters())
    assert all(p.grad is None for p in task.model.encoder.parameters())  # frozen RN50
