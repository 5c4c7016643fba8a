"""Scenes CLIP: the BPE tokenizer, EOS pooling, and train -> save -> load through the same
`load_clip` path as a Hugging Face checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPTokenizer

from finecap.cli import main as cli_main
from finecap.cli import parse
from finecap.clip import ClipEmbedder, load_clip
from finecap.clip.probe import probe_clip
from finecap.clip.train import (
    ClipTrainConfig,
    ScenesClipConfig,
    build_scenes_clip,
    clip_loss,
    encode_texts,
    save_tokenizer,
    text_gap_loss,
    train_bpe_tokenizer,
    train_clip,
)
from finecap.scenes import generate_world

TEXTS = [
    "a small red dotted circle and a large blue plain square on grass.",
    "the red circle is left of the blue square.",
    "an image of a circle",
] * 20
TINY = ScenesClipConfig(tower="vit", image_size=48, hidden=32, layers=1, heads=2)


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return train_bpe_tokenizer(TEXTS, vocab_size=800, max_length=16)


def test_tokenizer_handles_unknown_words_pads_and_truncates(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer(["zebra xylophone!", "a red circle"], padding=True)["input_ids"]
    assert ids[0][0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids[0]
    assert len(ids[0]) == len(ids[1])  # padded
    # Unseen words fall back to byte symbols and decode back: nothing is unknown.
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "zebra xylophone !"
    # Whole words seen in training are single tokens.
    assert len(tokenizer("circle")["input_ids"]) == 3
    long = tokenizer(["circle " * 40], truncation=True)["input_ids"][0]
    assert len(long) == 16 and long[-1] == tokenizer.eos_token_id  # EOS survives truncation


def test_tokenizer_round_trips_through_auto_and_vocab_files(
    tokenizer: CLIPTokenizer, tmp_path: Path
) -> None:
    save_tokenizer(tokenizer, tmp_path / "full")
    again = AutoTokenizer.from_pretrained(tmp_path / "full")
    text = ["a red circle, left of a zebra."]
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    # OpenAI-style vocab.json + merges.txt alone rebuild the same tokenizer.
    (tmp_path / "files").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "full" / name, tmp_path / "files" / name)
    from_files = CLIPTokenizer(
        vocab=str(tmp_path / "files" / "vocab.json"), merges=str(tmp_path / "files" / "merges.txt")
    )
    assert from_files(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_text_pooling_is_at_the_eos_token(tokenizer: CLIPTokenizer) -> None:
    torch.manual_seed(0)
    model = build_scenes_clip(TINY, tokenizer).eval()
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id != 2
    enc = tokenizer(["a red circle", "the blue square is left of the circle"], padding=True,
                    return_tensors="pt")  # fmt: skip
    out = model.text_model(**enc)
    for i, ids in enumerate(enc["input_ids"].tolist()):
        eos = ids.index(tokenizer.eos_token_id)  # first EOS; padding repeats it after
        torch.testing.assert_close(out.pooler_output[i], out.last_hidden_state[i, eos])


def test_clip_loss_prefers_aligned_pairs() -> None:
    img = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(2.0)
    aligned = clip_loss(img, img, scale)
    shuffled = clip_loss(img, img.roll(1, dims=0), scale)
    assert aligned < shuffled


def test_text_gap_loss_pays_only_for_texts_too_close_to_their_negative() -> None:
    txt = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1).requires_grad_()
    tied = text_gap_loss(txt, txt.detach(), max_cos=0.9)
    assert tied.item() == pytest.approx(0.1, abs=1e-5)  # cos 1: 1 - 0.9
    tied.backward()
    assert txt.grad.abs().sum() > 0  # the text tower is pushed to part them
    opposite = text_gap_loss(txt.detach(), -txt.detach(), max_cos=0.9)
    assert opposite.item() == 0.0


def test_fact_target_says_where_each_colour_lies() -> None:
    from finecap.clip.dense import IGNORE, FactTarget, bag_labels, position_labels
    from finecap.scenes.world import Scene, SceneObject

    def scene(red_x: int, blue_x: int) -> Scene:
        objects = [
            SceneObject("circle", "red", "small", "plain", (red_x, 40, red_x + 10, 50)),
            SceneObject("square", "blue", "small", "plain", (blue_x, 40, blue_x + 10, 50)),
        ]
        return Scene("grass", objects, [], 96)

    def labels(*scenes: Scene | None) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.stack([bag_labels(s) for s in scenes]),
            torch.stack([position_labels(s, 96) for s in scenes]),
        )

    target = FactTarget(32, position_weight=3.0)
    left, right = target.targets(*labels(scene(10, 70), scene(70, 10)))
    assert torch.allclose(left.norm(), torch.tensor(1.0))
    assert (left * right).sum() < 0.9  # the same objects, swapped places: a different target
    bag, position = labels(scene(10, 70), None)
    assert bag[1, 0] == IGNORE
    img = target.targets(bag[:1], position[:1])
    assert target.loss(torch.cat([img, -img]), bag, position).item() == pytest.approx(0, abs=1e-6)
    assert target.loss(img, *labels(None)).isnan()  # no scene: nothing to pull toward


def img_of(model, pixels: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The image embeddings (B, P) of a training step."""
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return F.normalize(model.visual_projection(pooled), dim=-1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), n=40, seed=1, image_size=48)


def test_train_saves_hf_clip_that_load_clip_reads(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip"
    cfg = ClipTrainConfig(epochs=2, batch_size=16, hard_negative_prob=0.5, short_prob=0.3)
    result = train_clip(world, out, TINY, cfg)
    saved = json.loads((out / "clip_eval.json").read_text())
    assert saved["retrieval"] == result["retrieval"]
    # The attribute-binding probe of the held-out scenes comes with it, as `clip probe` does.
    probed = probe_clip(str(out), world)
    assert saved["probe"] == {"kinds": probed["kinds"], "short_kinds": probed["short_kinds"]}
    for query in ("description", "reference"):
        assert {"R@1", "R@5", "R@10", "MedR"} <= set(saved["retrieval"][query])
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
            "preprocessor_config.json"} <= {p.name for p in out.iterdir()}  # fmt: skip
    bundle = load_clip(out)  # the same path as openai/clip-vit-base-patch32
    assert bundle.projection_dim == TINY.projection_dim
    embedder = ClipEmbedder(bundle)
    texts = ["a red circle on grass.", "A photo depicts an unseen zebra"]
    emb = embedder.embed_texts(texts)
    torch.testing.assert_close(emb, encode_texts(bundle.model, bundle.tokenizer, texts))
    from PIL import Image

    assert embedder.embed_images([Image.new("RGB", (48, 48), "red")]).shape == (1, 128)


def test_training_is_seeded(world: Path, tmp_path: Path) -> None:
    cfg = ClipTrainConfig(epochs=1, batch_size=16, seed=5)
    a = train_clip(world, tmp_path / "a", TINY, cfg)
    b = train_clip(world, tmp_path / "b", TINY, cfg)
    assert a["retrieval"] == b["retrieval"]
    wa = load_clip(tmp_path / "a").model.state_dict()
    wb = load_clip(tmp_path / "b").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_train(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = ["clip", "train", "--dataset", str(world), "--out", str(out), "--epochs", "1",
            "--batch-size", "16", "--hidden", "32", "--layers", "1", "--patch-size", "16",
            "--tower", "vit", "--image-size", "48"]  # fmt: skip
    assert cli_main(args) == 0
    assert "R@1" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["patch_size"] == 16
    assert config["vision_config"]["image_size"] == 48
    assert config["text_config"]["hidden_size"] == 32
    assert (
        config["text_config"]["num_hidden_layers"] == config["vision_config"]["num_hidden_layers"]
    )


def test_cli_train_help_and_bad_value(tmp_path: Path, capsys) -> None:
    assert cli_main(["clip", "train", "--help"]) == 0
    assert "--hidden" in capsys.readouterr().out
    args = ["clip", "train", "--dataset", "d.json", "--out", str(tmp_path), "--epochs", "0"]
    assert cli_main(args) == 2
    assert re.search(r"epochs", capsys.readouterr().err)
    assert not any(tmp_path.iterdir())  # refused before any work


def test_arch_checks_heads_divide_hidden() -> None:
    with pytest.raises(ValueError, match=r"heads \(3\) must divide hidden \(32\)"):
        ScenesClipConfig(hidden=32, heads=3)


def test_cli_flags_reach_the_configs() -> None:
    _, options, _ = parse(["clip", "train", "--dataset", "d.json", "--out", "o", "--init", "m",
                           "--epochs", "3", "--batch-size", "8", "--lr", "2e-4",
                           "--weight-decay", "0", "--description-prob", "0.5", "--seed", "4",
                           "--eval-split", "val", "--threads", "2", "--image-size", "64",
                           "--patch-size", "16", "--hidden", "64", "--layers", "2"])  # fmt: skip
    assert (options.dataset, options.out, options.init) == ("d.json", "o", "m")
    assert options.arch == ScenesClipConfig(image_size=64, patch_size=16, hidden=64, layers=2)
    train = options.train
    assert (train.epochs, train.batch_size, train.lr, train.weight_decay) == (3, 8, 2e-4, 0)
    assert (train.description_prob, train.seed, train.eval_split) == (0.5, 4, "val")
    assert train.trainer.threads == 2
    _, options, _ = parse(["clip", "train", "--dataset", "d.json", "--out", "o", "--init", "m"])
    assert options.train.learning_rate(fine_tuning=True) == 1e-5  # no --lr: the fine-tuning one


TINY_CONV = ScenesClipConfig(
    tower="resnet", image_size=48, hidden=32, layers=1, heads=2, conv_stem_width=8,
    conv_widths=[8, 16], conv_depths=[1, 1],
)  # fmt: skip


def test_resnet_tower_trains_with_dense_supervision_and_loads(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv"
    cfg = ClipTrainConfig(epochs=1, batch_size=16, dense_weight=1.0, hard_negative_prob=0.5)
    result = train_clip(world, out, TINY_CONV, cfg)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "finecap_conv_clip"
    assert config["vision_config"]["model_type"] == "resnet"
    assert config["vision_config"]["hidden_sizes"] == [8, 16]
    bundle = load_clip(out)  # the same loader as a CLIPModel
    assert type(bundle.model).__name__ == "ConvClipModel"
    assert bundle.projection_dim == TINY_CONV.projection_dim
    assert bundle.max_text_length == TINY_CONV.max_text_length
    embedder = ClipEmbedder(bundle)
    from PIL import Image

    emb = embedder.embed_images([Image.new("RGB", (48, 48), "red")])
    assert emb.shape == (1, 128)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    probed = probe_clip(str(out), world)
    assert result["probe"]["kinds"] == probed["kinds"]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_gated_clip_trains_with_bag_position_relation_and_pair_terms(
    world: Path, tmp_path: Path
) -> None:
    from torch.utils.data import default_collate

    from finecap.clip.conv_clip import GatedPool
    from finecap.clip.data import ImageTextPairs, RecordPixels
    from finecap.clip.train import ClipTask, build_image_processor, vision_grid
    from finecap.data.formats import load_corpus

    arch = TINY_CONV.model_copy(update={"conv_pool": "gated"})
    cfg = ClipTrainConfig(
        epochs=1, batch_size=16, dense_weight=1.0, bag_weight=1.0, pair_weight=1.0,
        position_weight=1.0, relation_weight=1.0, hard_negative_prob=1.0, description_prob=1.0,
        text_gap_weight=1.0, fact_weight=1.0,
    )  # fmt: skip
    # One step by hand (no trainer: its logging is skipped): the heads and the gate learn.
    corpus = load_corpus(world)
    records = corpus.split("train")[:8]
    tokenizer = train_bpe_tokenizer(TEXTS, 800, 16)
    model = build_scenes_clip(arch, tokenizer)
    pixels = RecordPixels(corpus, records, build_image_processor(arch.image_size))
    data = ImageTextPairs(pixels, records, cfg, vision_grid(model.config.vision_config))
    batch = default_collate([data[i] for i in range(len(records))])
    task = ClipTask(model, tokenizer, cfg, 1e-3)
    loss = task.training_step(batch, 0)
    terms = {"bag_weight": 0.0, "pair_weight": 0.0, "position_weight": 0.0, "relation_weight": 0.0}
    terms |= {"text_gap_weight": 0.0, "fact_weight": 0.0}
    plain = ClipTask(model, tokenizer, cfg.replace(**terms), 1e-3)
    assert loss > plain.training_step(batch, 0) + 0.1  # the terms count (each > 0)
    no_position = ClipTask(model, tokenizer, cfg.replace(position_weight=0.0), 1e-3)
    no_position.bag, no_position.dense = task.bag, task.dense  # only the position term differs
    assert loss > no_position.training_step(batch, 0)
    loss.backward()
    assert task.bag.head.weight.grad.abs().sum() > 0
    assert task.position.head.weight.grad.abs().sum() > 0
    assert task.relation.where.grad.abs().sum() > 0
    assert model.vision_model.pooler.gate.weight.grad.abs().sum() > 0
    # The fact target reaches the image side only: it is a fixed target, not a head.
    model.zero_grad()
    facts = task.facts.loss(img_of(model, batch[0]), batch[3]["bag"], batch[3]["position"])
    facts.backward()
    assert model.visual_projection.weight.grad.abs().sum() > 0
    assert model.text_projection.weight.grad is None or not model.text_projection.weight.grad.any()
    # The relation term alone reaches both towers (the head is shared by image and text).
    model.zero_grad()
    only = ClipTask(model, tokenizer, cfg, 1e-3)
    only.relation = task.relation
    img = img_of(model, batch[0])
    texts = encode_texts(model, tokenizer, list(batch[1]))
    has_negative = torch.tensor([bool(t) for t in batch[2]])
    negatives = encode_texts(model, tokenizer, [t for t in batch[2] if t])
    only._relation_loss(img, texts, negatives, has_negative, batch[3]).backward()
    assert model.text_projection.weight.grad.abs().sum() > 0
    assert model.visual_projection.weight.grad.abs().sum() > 0
    # End to end: trained, saved, loaded with its gate.
    result = train_clip(world, tmp_path / "gated", arch, cfg)
    assert isinstance(load_clip(tmp_path / "gated").model.vision_model.pooler, GatedPool)
    assert result["train"]["pair_weight"] == 1.0 and "shape" in result["probe"]["kinds"]


def test_resnet_grid_and_patch_tokens() -> None:
    from finecap.clip.train import patch_tokens, vision_grid

    model = build_scenes_clip(TINY_CONV, train_bpe_tokenizer(TEXTS, 800, 16))
    grid = vision_grid(model.config.vision_config)  # 48 / (4 * 2) = 6
    pooled = model.vision_model(pixel_values=torch.randn(2, 3, 48, 48)).pooler_output
    assert pooled.shape == (2, 16)  # flattened, as the dual encoder's projection needs
    hidden = model.vision_model(pixel_values=torch.randn(2, 3, 48, 48)).last_hidden_state
    assert grid == 6 and hidden.shape == (2, 16, 6, 6)
    tokens = patch_tokens(hidden)  # (B, N, H), row-major like the dense labels
    assert tokens.shape == (2, 36, 16)
    torch.testing.assert_close(tokens[:, 1 * 6 + 4], hidden[:, :, 1, 4])
    maxed = build_scenes_clip(TINY_CONV.model_copy(update={"conv_pool": "max"}),
                              train_bpe_tokenizer(TEXTS, 800, 16)).eval()  # fmt: skip
    out = maxed.vision_model(pixel_values=torch.randn(2, 3, 48, 48))
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.amax(dim=(2, 3)))
    vit = build_scenes_clip(TINY, train_bpe_tokenizer(TEXTS, 800, 16))
    assert vision_grid(vit.config.vision_config) == 48 // 12


def assert_pool_round_trips(model, pool_class: type, folder: Path) -> None:  # noqa: ANN001
    """Saved and reloaded by load_clip's loader, `model` keeps its pool and its outputs."""
    from transformers import AutoModel

    model.save_pretrained(folder)
    loaded = AutoModel.from_pretrained(folder).eval()
    assert isinstance(loaded.vision_model.pooler, pool_class)
    pixels = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(
        loaded.vision_model(pixel_values=pixels).pooler_output,
        model.eval().vision_model(pixel_values=pixels).pooler_output,
    )


def test_attention_pool_sees_where_things_are_and_round_trips(tmp_path: Path) -> None:
    from finecap.clip.conv_clip import AttentionPool

    arch = TINY_CONV.model_copy(update={"conv_pool": "attention", "conv_pool_heads": 4})
    model = build_scenes_clip(arch, train_bpe_tokenizer(TEXTS, 800, 16)).eval()
    pool = model.vision_model.pooler
    assert isinstance(pool, AttentionPool) and pool.attention.num_heads == 4
    grid = torch.randn(2, 16, 6, 6)
    pooled = pool(grid)
    assert pooled.shape == (2, 16)
    # The same cells elsewhere: an average cannot tell, the attention pool can.
    moved = grid.flatten(2)[:, :, torch.randperm(36)].view_as(grid)
    torch.testing.assert_close(moved.mean((2, 3)), grid.mean((2, 3)))
    assert (pool(moved) - pooled).abs().max() > 1e-3
    assert_pool_round_trips(model, AttentionPool, tmp_path)
    with pytest.raises(ValueError, match=r"conv_pool_heads \(3\) must divide.*\(16\)"):
        ScenesClipConfig(
            **{**TINY_CONV.model_dump(), "conv_pool": "attention", "conv_pool_heads": 3}
        )


def test_gated_pool_averages_the_cells_its_gate_opens_and_round_trips(tmp_path: Path) -> None:
    from finecap.clip.conv_clip import GatedPool
    from finecap.clip.dense import objectness_loss

    arch = TINY_CONV.model_copy(update={"conv_pool": "gated"})
    model = build_scenes_clip(arch, train_bpe_tokenizer(TEXTS, 800, 16)).eval()
    pool = model.vision_model.pooler
    assert isinstance(pool, GatedPool)
    # A gate that opens on channel 0 only: the pooled vector is the mean of the open cells.
    with torch.no_grad():
        pool.gate.weight.zero_()
        pool.gate.weight[0, 0] = 100.0
        pool.gate.bias.fill_(-50.0)
    grid = torch.zeros(1, 16, 6, 6)
    grid[0, 0, 1, 2] = grid[0, 0, 4, 4] = 1.0  # two "object" cells
    grid[0, 3, 1, 2], grid[0, 3, 4, 4] = 2.0, 4.0
    grid[0, 5] = 7.0  # a background channel everywhere
    pooled = pool(grid)[0]
    assert pooled[3].item() == pytest.approx(3.0, abs=1e-3)  # (2 + 4) / 2, not 6 / 36
    assert pooled[5].item() == pytest.approx(7.0, abs=1e-3)
    labels = torch.zeros(1, 36, 4, dtype=torch.long)
    labels[0, [1 * 6 + 2, 4 * 6 + 4], 0] = 3  # objects under exactly those cells
    assert objectness_loss(pool.gate_logits(grid), labels) < 1e-6
    assert objectness_loss(pool.gate_logits(-grid), labels) > 1.0
    assert_pool_round_trips(model, GatedPool, tmp_path)


def test_gated_pool_with_coordinates_sees_where_things_are_and_round_trips(tmp_path: Path) -> None:
    from finecap.clip.conv_clip import GatedPool

    arch = TINY_CONV.model_copy(update={"conv_pool": "gated", "conv_coords": True})
    model = build_scenes_clip(arch, train_bpe_tokenizer(TEXTS, 800, 16)).eval()
    pool = model.vision_model.pooler
    assert pool.coords is not None
    # The same cells elsewhere: the plain gated pool cannot tell, with coordinates it can.
    grid = torch.randn(2, 16, 6, 6)
    moved = grid.flatten(2)[:, :, torch.randperm(36)].view_as(grid)
    plain = GatedPool(16)
    plain.gate = pool.gate
    torch.testing.assert_close(plain(moved), plain(grid))
    assert (pool(moved) - pool(grid)).abs().max() > 1e-3
    assert_pool_round_trips(model, GatedPool, tmp_path)
    # A model saved before the option existed (no pool_coords in its config) loads without it.
    from transformers import AutoModel

    config = json.loads((tmp_path / "config.json").read_text())
    del config["pool_coords"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert AutoModel.from_pretrained(tmp_path).vision_model.pooler.coords is None
    with pytest.raises(ValueError, match=r"conv_coords needs conv_pool gated"):
        ScenesClipConfig(**{**TINY_CONV.model_dump(), "conv_coords": True})


def test_resnet_arch_checks_strides() -> None:
    with pytest.raises(ValueError, match=r"total stride \(16:.*image_size \(40\)"):
        ScenesClipConfig(tower="resnet", image_size=40, conv_widths=[8, 16, 32],
                         conv_depths=[1, 1, 1])  # fmt: skip
    with pytest.raises(ValueError, match=r"conv_depths"):
        ScenesClipConfig(tower="resnet", conv_widths=[8, 16], conv_depths=[1])


def test_load_clip_refuses_a_model_that_is_not_a_dual_encoder(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from finecap.clip.embed import ClipUnavailableError

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8, vocab_size=20)).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(ClipUnavailableError, match="BertModel, not a CLIP-style"):
        load_clip(tmp_path)
