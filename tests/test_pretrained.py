"""Pretrained Hugging Face captioners (ViT-GPT2 VisionEncoderDecoder, BLIP) behind finecap's
Captioner and decoding core, on tiny random models saved with `save_pretrained`:
- finecap's greedy and beam captions equal the model's own generate() token for token;
- the decoder contract (teacher forcing = steps, grouped state = repeated images);
- loading from a folder or hub name (offline: one sentence), saving in Hugging Face's layout;
- `finecap caption --model` on them, and SCST: a step raises the reward on a fixed batch, and
  `finecap train --init HF_FOLDER` exports a model `finecap caption --model` loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
import torch

from finecap.captioner import Captioner
from finecap.cli import main
from finecap.data.vocab import Vocab
from finecap.decoding import DecodingConfig, SamplingConfig, decode, sample
from finecap.errors import UserError
from finecap.hub import WeightsNotFoundError
from finecap.models.pretrained import (
    PretrainedCaptionModel,
    PretrainedModelConfig,
    UnsupportedCaptionerError,
    is_pretrained_source,
)
from finecap.rewards import Reward, RewardBatch, RewardConfig, register_reward
from finecap.scenes import generate_world
from finecap.train.config import TrainConfig, load_config
from finecap.train.data import CaptionBatch, encode_captions
from finecap.train.run import train
from finecap.train.tasks import create_task
from helpers.tiny_captioners import make_tiny_captioner, random_images, save_images
from helpers.tiny_pretrained import CAPTIONS, TINY_PRETRAINED

BACKENDS = sorted(TINY_PRETRAINED)
CONFIGS = Path(__file__).parents[1] / "src" / "finecap" / "configs"
TARGETS = {"red", "blue", "green", "yellow"}


class SaysColoursConfig(RewardConfig):
    name: Literal["test_says_colours"] = "test_says_colours"


@register_reward("test_says_colours", config=SaysColoursConfig)
class SaysColours(Reward):
    """Colour names said (as substrings: a tiny random BPE model glues its pieces) per word
    of the caption: a reward one policy-gradient step moves."""

    name = "test_says_colours"

    def __init__(self, config: SaysColoursConfig) -> None:
        self.config = config

    def __call__(self, batch: RewardBatch) -> torch.Tensor:
        shares = [sum(map(c.count, TARGETS)) / max(1, len(c.split())) for c in batch.captions]
        return torch.tensor(shares)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    return {name: save(root / name) for name, save in TINY_PRETRAINED.items()}


def _model(folders: dict[str, Path], name: str) -> PretrainedCaptionModel:
    return Captioner.from_pretrained(folders[name]).model


def _until_end(ids: list[int], end: int) -> list[int]:
    return ids[: ids.index(end) + 1] if end in ids else ids


def _as_model_ids(model: PretrainedCaptionModel, tokens: torch.Tensor) -> list[list[int]]:
    """finecap's captions (N, T) as the model's ids, <pad> dropped."""
    rows = [[t for t in row if t != Vocab.pad_id] for row in tokens.tolist()]
    return [model.decoder.to_model[torch.tensor(row, dtype=torch.long)].tolist() for row in rows]


@pytest.mark.parametrize("name", BACKENDS)
def test_greedy_and_beam_captions_equal_generate(folders: dict[str, Path], name: str) -> None:
    """Same max_new_tokens, beams, no length penalty: token for token, n-best lists included,
    with finecap's `finished_beams="aside"` and `at_max_len="stop"` (generate()'s semantics)."""
    model = _model(folders, name)
    end, new_tokens = model.decoder.specials.end, 10
    pixels = model.encoder.preprocess(random_images(8, size=40, seed=1))
    lengths = set()
    with torch.no_grad():
        enc = model.encode(pixels)
        for beams in (1, 2, 4):
            hf = model.hf.generate(
                pixel_values=pixels,
                max_new_tokens=new_tokens,
                num_beams=beams,
                num_return_sequences=beams,
                length_penalty=0.0,
                do_sample=False,
            )[:, 1:]  # without the start token
            config = DecodingConfig(
                beam_size=beams,
                n_best=beams,
                max_len=new_tokens,
                length_penalty=0.0,
                finished_beams="aside",
                at_max_len="stop",
            )
            ours = _as_model_ids(model, decode(model.decoder, enc, config).tokens)
            theirs = [_until_end(row, end) for row in hf.tolist()]
            assert ours == theirs, f"{beams} beams"
            lengths |= {len(row) for row in theirs}
    # Both ways a caption ends were exercised: its end token early, and the length limit.
    assert min(lengths) < new_tokens and new_tokens in lengths


@pytest.mark.parametrize("name", BACKENDS)
def test_default_greedy_says_what_generate_says(folders: dict[str, Path], name: str) -> None:
    """finecap's default `at_max_len="eos"` ends a caption at the limit with its own <eos>:
    the words are generate()'s."""
    captioner = Captioner.from_pretrained(folders[name])
    model = captioner.model
    images = random_images(6, size=40, seed=2)
    pixels = model.encoder.preprocess(images)
    with torch.no_grad():
        hf = model.hf.generate(pixel_values=pixels, max_new_tokens=8, do_sample=False)[:, 1:]
    texts = [captioner.vocab.tokenizer.decode(row, skip_special_tokens=True).strip() for row in hf]
    ours = captioner(images, beam_size=1, decoding=DecodingConfig(max_len=8))
    assert [c.text for c in ours] == texts


@pytest.mark.parametrize("name", BACKENDS)
def test_decoder_contract(folders: dict[str, Path], name: str) -> None:
    """Teacher forcing equals step-by-step decoding; 3 sequences per image sharing its state
    equal the image repeated 3 times."""
    model = _model(folders, name)
    vocab = model.vocab
    words = [vocab.encode(c, 6) for c in CAPTIONS[:2]]
    tokens = torch.tensor([[Vocab.bos_id, *w[:5]] for w in words] * 3)  # (6, 6): 3 per image
    with torch.no_grad():
        enc = model.encode(model.encoder.preprocess(random_images(2, size=40)))
        forced = model.decoder(enc, tokens).logits
        grouped = model.decoder.init_state(enc, group=3)
        repeated = model.decoder.init_state(enc.repeat_interleave(3))
        for t in range(tokens.shape[1]):
            a, b = (
                model.decoder.step(tokens[:, t], grouped),
                model.decoder.step(tokens[:, t], repeated),
            )
            grouped, repeated = a.state, b.state
            finite = forced[:, t].isfinite()
            torch.testing.assert_close(a.logits[finite], forced[:, t][finite], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    # The specials are never generated, and the model's end token is finecap's <eos> only.
    blocked = [Vocab.pad_id, Vocab.bos_id, Vocab.unk_id, 4 + model.decoder.specials.end]
    assert torch.isinf(forced[..., blocked]).all() and forced[..., Vocab.eos_id].isfinite().all()


@pytest.mark.parametrize("name", BACKENDS)
def test_vocab_adapter(folders: dict[str, Path], name: str) -> None:
    vocab = _model(folders, name).vocab
    ids = vocab.encode("a red circle on the grass")
    assert (
        ids
        and min(ids) >= 4
        and vocab.decode([*ids, Vocab.eos_id, *ids]) == "a red circle on the grass"
    )
    assert vocab.encode("a red circle on the grass", max_len=2) == ids[:2]
    assert len(vocab) == len(vocab.itos) == 4 + vocab.vocab_size
    assert vocab.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]


def test_beam_aside_on_finecap_decoders() -> None:
    """The set-aside beam search runs on finecap's own decoders too: n-best best first, each
    caption ending with <eos> (at_max_len eos) within max_len + 1 tokens, attention kept."""
    model = make_tiny_captioner("transformer", seed=3, max_len=6).model
    with torch.no_grad():
        enc = model.encode(model.encoder.preprocess(random_images(3)))
        config = DecodingConfig(beam_size=4, n_best=3, max_len=5, finished_beams="aside")
        out = decode(model.decoder, enc, config, keep_attention=True)
    assert out.tokens.shape[0] == 9 and out.tokens.shape[1] <= 6
    assert out.attention.shape[:2] == out.tokens.shape
    scores = out.scores.view(3, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for row in out.tokens.tolist():
        assert Vocab.eos_id in row
    torch.testing.assert_close(out.scores, out.logprobs.sum(1))


@pytest.mark.parametrize("name", BACKENDS)
def test_folder_roundtrip_in_hugging_face_layout(folders, name: str, tmp_path: Path) -> None:
    from transformers import AutoConfig

    captioner = Captioner.from_pretrained(folders[name])
    assert (
        is_pretrained_source(folders[name])
        and captioner.config.architecture == captioner.model.hf.config.model_type
    )
    images = random_images(3, size=40, seed=4)
    before = [c.text for c in captioner(images, beam_size=2)]
    out = tmp_path / "saved"
    captioner.save_pretrained(out, {"task": "scst", "note": "kept"}, card="# card\n")
    assert AutoConfig.from_pretrained(out).model_type == captioner.config.architecture
    assert json.loads((out / "finecap.json").read_text())["finecap"]["note"] == "kept"
    again = Captioner.from_pretrained(out)
    assert [c.text for c in again(images, beam_size=2)] == before
    assert again.info["note"] == "kept" and again.decoding == DecodingConfig(beam_size=3)
    with pytest.raises(UserError, match="no attention weights"):
        again(images[0], with_attention=True)
    # A model's own decoding is kept in finecap.json (Hugging Face's config.json is theirs).
    again.decoding = DecodingConfig(beam_size=2, block_trigrams=True)
    again.save_pretrained(out)
    assert json.loads((out / "finecap.json").read_text())["decoding"] == {
        "beam_size": 2,
        "block_trigrams": True,
    }
    assert Captioner.from_pretrained(out).decoding == again.decoding


def test_offline_hub_name_costs_one_sentence(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    name = "nlpconnect/vit-gpt2-image-captioning"
    with pytest.raises(WeightsNotFoundError) as err:
        Captioner.from_pretrained(name)
    message = str(err.value)
    assert "\n" not in message and name in message and "download" in message
    image = save_images(tmp_path / "images", 1)[0]
    assert main(["caption", str(image), "--model", name]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not available offline" in lines[0]


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(UnsupportedCaptionerError, match="'clip'.*blip and vision-encoder-decoder"):
        Captioner.from_pretrained(tmp_path)


def test_caption_cli_and_dataset_predictions(folders, tmp_path: Path, capsys) -> None:
    world = generate_world(tmp_path / "world", 8, seed=1, image_size=48, val=2, test=3)
    out = tmp_path / "preds.json"
    flags = ["--dataset", str(world), "--split", "test", "--out", str(out), "--max-len", "5"]
    assert main(["caption", "--model", str(folders["vit-gpt2"]), *flags]) == 0
    predictions = json.loads(out.read_text())
    assert predictions and all(set(p) == {"image_id", "caption"} for p in predictions)
    assert "pretrained vision-encoder-decoder" in capsys.readouterr().err


def _fixed_batch(model: PretrainedCaptionModel, n: int = 4) -> CaptionBatch:
    images = random_images(n, size=40, seed=5)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]
    return CaptionBatch(
        model.encoder.preprocess(images),
        encode_captions(model.vocab, captions, 8),
        list(range(n)),
        [[c] for c in captions],
        images,
    )


def _mean_reward(task, batch: CaptionBatch) -> float:  # noqa: ANN001
    """The mean reward of 64 samples per image, the same random draws each time (eval mode)."""
    generator = torch.Generator().manual_seed(0)
    task.model.eval()
    with torch.no_grad():
        enc = task.model.encode(batch.pixels)
        decoded = sample(task.model.decoder, enc, SamplingConfig(n=64, max_len=8), generator)
    texts = [task.vocab.decode(row) for row in decoded.tokens.tolist()]
    task.model.train()
    return float(task.reward(RewardBatch(texts, [[]] * len(texts), list(range(len(texts))))).mean())


@pytest.mark.parametrize("name", BACKENDS)
def test_one_scst_step_raises_the_reward(folders, name: str) -> None:
    torch.manual_seed(0)
    model = _model(folders, name)
    config = TrainConfig.load(
        {
            "task": "scst",
            "data": {"dataset": "unused.json", "max_len": 8},
            "model": model.config.to_dict(),
            "decoding": {"max_len": 8},
            "scst": {"samples": 8, "max_len": 8, "rewards": [{"name": "test_says_colours"}]},
        }
    )
    assert isinstance(config.model, PretrainedModelConfig)
    task = create_task(config, model.vocab, model)
    batch = _fixed_batch(model)
    before = _mean_reward(task, batch)
    optimizer = torch.optim.Adam(task.model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match="self.log"):
        loss = task.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert _mean_reward(task, batch) > 1.5 * before > 0  # measured: 0.06 -> 0.21, 0.17 -> 0.61


def test_scst_with_init_exports_what_caption_loads(folders, tmp_path: Path) -> None:
    """`finecap train --config scst_... --init HF_FOLDER`: the Hugging Face model is the policy,
    the run exports it in Hugging Face's layout, and `finecap caption --model` loads that."""
    world = generate_world(tmp_path / "world", 12, seed=3, image_size=48)
    overrides = [
        f"data.dataset={world}", f"output_dir={tmp_path / 'run'}", "data.batch_size=4",
        "data.val_images=0", "data.max_len=6", "decoding.max_len=6", "scst.max_len=6",
        "scst.samples=2", "optim.max_epochs=1", "optim.warmup_steps=1", "trainer.threads=1",
        "model.encoder.freeze=true",
    ]  # fmt: skip
    config = load_config(CONFIGS / "scst_scenes_cider.yaml", overrides)
    exported = train(config, init=folders["blip"])
    assert (exported / "config.json").is_file() and (exported / "finecap.json").is_file()
    facts = json.loads((exported / "finecap.json").read_text())["finecap"]
    assert facts["task"] == "scst" and facts["recipe"]["decoder"] == "blip_text_model"
    recorded = (tmp_path / "run" / "config.yaml").read_text()
    assert "source:" in recorded and "freeze: true" in recorded  # the recipe's say was kept
    image = next((world.parent / "images").iterdir())
    assert main(["caption", str(image), "--model", str(exported), "--beam-size", "2"]) == 0
