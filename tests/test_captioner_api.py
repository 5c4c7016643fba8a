"""The Python API in the habits of Hugging Face pipelines: `captioner(images)` on paths, PIL
images and lists, one loading path shared with `finecap caption`, n-best lists, seeded
sampling, `.to(device)` and a short `repr`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finecap.captioner import Caption, Captioner
from finecap.cli import main
from finecap.config import ConfigError
from finecap.data.images import load_image
from finecap.decoding import DecodingConfig, ModelDecodingConfig, SamplingConfig
from helpers.tiny_captioners import (
    make_repetitive,
    make_talkative,
    make_tiny_captioner,
    random_images,
    repeats_a_trigram,
    save_images,
)

SAMPLING = SamplingConfig(n=3, temperature=1.5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    # Always 6 words: a random model would often caption with <eos> alone.
    make_talkative(make_tiny_captioner("transformer", seed=1, max_len=6)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def captioner(model_dir) -> Captioner:
    return Captioner.from_pretrained(model_dir)


@pytest.fixture
def paths(tmp_path) -> list[Path]:
    return save_images(tmp_path / "imgs", 3, size=40)


def _same(a: Caption, b: Caption) -> bool:
    # The score as well as the text: a tiny random model writes similar words for any image.
    return a.text == b.text and a.score == pytest.approx(b.score, abs=1e-5)


def test_a_path_a_pil_image_and_a_list(captioner, paths) -> None:
    expected = captioner.caption([load_image(p) for p in paths])
    assert isinstance(expected, list) and len(expected) == 3
    one = captioner(str(paths[0]))  # one input: one Caption, not a list
    assert isinstance(one, Caption) and _same(one, expected[0])
    assert _same(captioner(paths[1]), expected[1])  # a Path
    assert _same(captioner.caption(Image.open(paths[2])), expected[2])  # a PIL image
    mixed = captioner([str(paths[0]), Image.open(paths[1]), paths[2]], batch_size=2)
    assert all(_same(got, want) for got, want in zip(mixed, expected, strict=True))
    assert captioner([]) == []
    with pytest.raises(TypeError, match="a path or a PIL image"):
        captioner([42])


def test_an_unreadable_path_is_the_loaders_error(captioner, tmp_path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        captioner(tmp_path / "notes.png")


def test_a_transparent_png_captions_alike_through_api_and_cli(
    model_dir, captioner, tmp_path, capsys
) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    pixels[:, :20, 3] = 0  # the left half transparent, random colours hidden under it
    pixels[:, 20:, 3] = 255
    path = tmp_path / "logo.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    rc = main(["caption", str(path), "--model", str(model_dir), "--json"])
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    from_file, from_pil = captioner(path), captioner(Image.open(path))
    assert from_pil.text == from_file.text == record["caption"]
    assert _same(from_pil, from_file)
    # Composited on white, not PIL's convert("RGB"), which shows the hidden colours.
    assert not _same(captioner(Image.open(path).convert("RGB")), from_file)


def test_n_best_gives_ranked_alternatives(captioner, paths) -> None:
    decoding = DecodingConfig(beam_size=4, n_best=3)
    captions = captioner(paths, decoding=decoding, with_attention=True)
    plain = captioner(paths, beam_size=4)
    for caption, best in zip(captions, plain, strict=True):
        assert len(caption.alternatives) == 2 and _same(caption, best)
        scores = [c.score for c in [caption, *caption.alternatives]]
        assert scores == sorted(scores, reverse=True)
        for each in [caption, *caption.alternatives]:
            assert each.attention.shape == (len(each.words) + 1, 16)
        assert all(each.alternatives == [] for each in caption.alternatives)  # a flat list


def test_beam_size_beside_decoding_overrides_it(captioner, paths) -> None:
    got = captioner(paths, beam_size=1, decoding=DecodingConfig(beam_size=4, max_len=4))
    want = captioner(paths, decoding=DecodingConfig(beam_size=1, max_len=4))
    assert all(_same(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="n_best"):  # 3 best of 2 beams
        captioner(paths, beam_size=2, decoding=DecodingConfig(beam_size=4, n_best=3))


def test_a_models_own_decoding_is_saved_used_and_overridable(model_dir, paths, tmp_path) -> None:
    assert "decoding" not in json.loads((model_dir / "config.json").read_text())  # 3 beams
    own = DecodingConfig(beam_size=2, block_trigrams=True, length_penalty=0.5, max_len=6)
    captioner = Captioner.from_pretrained(model_dir)
    captioner.decoding = own
    captioner.save_pretrained(tmp_path / "own")
    loaded = Captioner.from_pretrained(tmp_path / "own")
    assert loaded.decoding == own
    got, want = loaded(paths), loaded(paths, decoding=own)
    assert all(_same(a, b) for a, b in zip(got, want, strict=True))
    # beam_size= replaces the beams only; decoding= replaces everything.
    got = loaded(paths, beam_size=3)
    want = loaded(paths, decoding=own.replace(beam_size=3))
    assert all(_same(a, b) for a, b in zip(got, want, strict=True))
    plain = DecodingConfig(beam_size=3)
    got, want = loaded(paths, decoding=plain), Captioner.from_pretrained(model_dir)(paths)
    assert all(_same(a, b) for a, b in zip(got, want, strict=True))
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    config["decoding"]["beam_size"] = 0
    (tmp_path / "own" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: decoding.*beam_size"):
        Captioner.from_pretrained(tmp_path / "own")


def test_a_partial_decoding_section_keeps_the_defaults_it_leaves_out(
    model_dir, tmp_path, paths
) -> None:
    folder = tmp_path / "own"
    Captioner.from_pretrained(model_dir).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for section, want in [
        ({}, DecodingConfig(beam_size=3, max_len=6)),  # 20 words, capped at the decoder's 6
        ({"block_trigrams": True}, DecodingConfig(beam_size=3, max_len=6, block_trigrams=True)),
        ({"beam_size": 1, "max_len": 4}, DecodingConfig(beam_size=1, max_len=4)),
    ]:
        (folder / "config.json").write_text(json.dumps(config | {"decoding": section}))
        assert Captioner.from_pretrained(folder).decoding == want, section
    # How many captions to return is the caller's choice, not the model's.
    (folder / "config.json").write_text(json.dumps(config | {"decoding": {"n_best": 2}}))
    with pytest.raises(ConfigError, match=r"config\.json: decoding.*n_best"):
        Captioner.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config | {"decoding": [3]}))
    with pytest.raises(ConfigError, match=r"config\.json: decoding: a mapping"):
        Captioner.from_pretrained(folder)
    captioner = Captioner.from_pretrained(model_dir)
    with pytest.raises(ConfigError, match="n_best"):
        captioner.decoding = DecodingConfig(beam_size=3, n_best=2)
    # Written back with what it changes only; a max_len over the decoder's is capped at it.
    captioner.decoding = {"max_len": 10}  # the decoder's max_len is 6
    assert captioner.decoding == DecodingConfig(beam_size=3, max_len=6)
    assert captioner.own_decoding() == {}
    captioner.decoding = ModelDecodingConfig(block_trigrams=True)
    captioner.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["decoding"] == {"block_trigrams": True}
    # A model's decoding is a decoding a caller may pass, too.
    assert captioner(paths, decoding=ModelDecodingConfig(block_trigrams=True))[0].text


def test_samples_are_as_long_as_the_models_captions_unless_told(captioner, paths) -> None:
    own = Captioner(captioner.model, captioner.vocab, decoding={"max_len": 4})  # talkative
    assert {len(c.words) for c in own(paths, sampling=SamplingConfig(n=2), seed=0)} == {4}
    longer = own(paths, sampling=SamplingConfig(n=2, max_len=6), seed=0)
    assert {len(c.words) for c in longer} == {6}


def test_a_model_that_blocks_trigrams_never_repeats_one(tmp_path) -> None:
    captioner = make_repetitive(make_tiny_captioner("lstm", max_len=8))
    images = random_images(3)
    assert all(repeats_a_trigram(c.text) for c in captioner(images))  # "red red red red ..."
    captioner.decoding = DecodingConfig(beam_size=3, block_trigrams=True)
    captioner.save_pretrained(tmp_path / "blocks")
    captions = Captioner.from_pretrained(tmp_path / "blocks")(images)
    assert not any(repeats_a_trigram(c.text) for c in captions), [c.text for c in captions]
    assert all(len(c.words) == 8 for c in captions)  # still talkative: only repeats are gone


def test_sampling_is_reproducible_with_a_seed_and_differs_across_seeds(captioner, paths) -> None:
    def texts(captions: list[Caption]) -> list[list[str]]:
        return [[c.text for c in [caption, *caption.alternatives]] for caption in captions]

    first = captioner.caption(paths, sampling=SAMPLING, seed=0)
    assert texts(first) == texts(captioner.caption(paths, sampling=SAMPLING, seed=0))
    assert texts(first) != texts(captioner.caption(paths, sampling=SAMPLING, seed=1))
    for caption in first:  # n samples per image, ranked by the model's log-probability
        ranked = [caption, *caption.alternatives]
        assert len(ranked) == 3 and [c.score for c in ranked] == sorted(
            (c.score for c in ranked), reverse=True
        )
    # A generator carried across calls draws what one call with its seed draws.
    generator = torch.Generator().manual_seed(0)
    parts = [captioner(paths[:2], sampling=SAMPLING, generator=generator)]
    parts.append(captioner(paths[2:], sampling=SAMPLING, generator=generator))
    whole = captioner(paths, sampling=SAMPLING, seed=0, batch_size=2)
    assert texts(parts[0] + parts[1]) == texts(whole)


def test_sampling_keeps_attention_and_top_k_one_is_greedy(captioner, paths) -> None:
    sampled = captioner(paths, sampling=SamplingConfig(n=2, top_k=1), seed=3, with_attention=True)
    greedy = captioner(paths, beam_size=1)
    for caption, best in zip(sampled, greedy, strict=True):
        assert caption.text == caption.alternatives[0].text == best.text
        assert caption.attention.shape == (len(caption.words) + 1, 16)


def test_conflicting_decoding_arguments_are_refused(captioner, paths) -> None:
    with pytest.raises(ValueError, match="sampling= cannot be combined"):
        captioner(paths, beam_size=2, sampling=SAMPLING)
    with pytest.raises(ValueError, match="sampling= cannot be combined"):
        captioner(paths, decoding=DecodingConfig(), sampling=SAMPLING)
    with pytest.raises(ValueError, match="only apply with sampling"):
        captioner(paths, seed=0)
    with pytest.raises(ValueError, match="not both"):
        captioner(paths, sampling=SAMPLING, seed=0, generator=torch.Generator())


def test_to_moves_the_model_and_returns_the_captioner(model_dir, paths) -> None:
    captioner = Captioner.from_pretrained(model_dir)
    assert captioner.to("cpu") is captioner and captioner.device == torch.device("cpu")
    if not torch.cuda.is_available():
        return
    expected = captioner(paths)
    on_gpu = captioner.to("cuda")
    assert on_gpu.device.type == "cuda"
    got = on_gpu(paths, with_attention=True)
    assert [c.text for c in got] == [c.text for c in expected]
    assert captioner(paths, sampling=SAMPLING, seed=0)  # the generator lives on the GPU too


def test_caption_repr_is_short() -> None:
    caption = Caption("a red circle", ["a", "red", "circle"], -1.23456, torch.rand(4, 16), (4, 4))
    assert repr(caption) == "Caption('a red circle', score=-1.235, attention=(4, 16))"
    caption.alternatives = [Caption("a circle", ["a", "circle"], -2.0)]
    assert repr(caption).endswith("attention=(4, 16), alternatives=1)")
    assert repr(caption.alternatives[0]) == "Caption('a circle', score=-2.000, attention=None)"
