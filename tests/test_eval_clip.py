"""CLIP loading/embedding, CLIP-S, RefCLIP-S and retrieval against straightforward reference
computations with the Hugging Face model called directly, on a tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from finecap.clip import ClipEmbedder, ClipUnavailableError, load_clip
from finecap.metrics.clipscore import (
    CLIP_S_PREFIX,
    clip_s,
    embed_references,
    harmonic_mean,
    refclip_s,
)
from finecap.metrics.retrieval import ranks_of_truth, retrieval_scores
from helpers.tiny_models import make_tiny_clip

CAPTIONS = [
    "a red dog on the grass",
    "a blue cat sitting on a table",
    "",  # empty captions are embedded, not crashed on
    "a big green square and a small triangle with a man and a woman on the grass in the red",
    "two dogs running",
    "a woman",
]
REFS = [
    ["a dog on grass", "red dog"],
    ["a cat on a table"],
    ["a circle", "a square", "a triangle"],
    ["green square"],
    ["dogs running on the grass", "two dogs"],
    ["a woman", "a person", "someone standing"],
]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def embedder(clip_dir):
    return ClipEmbedder(load_clip(clip_dir), batch_size=4)  # batches of 4: exercises batching


@pytest.fixture(scope="module")
def images():
    rnd = np.random.default_rng(0)
    return [Image.fromarray(rnd.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in CAPTIONS]


@pytest.fixture(scope="module")
def hf(clip_dir):
    model = CLIPModel.from_pretrained(clip_dir).eval()
    return (
        model,
        AutoTokenizer.from_pretrained(clip_dir),
        AutoImageProcessor.from_pretrained(clip_dir),
    )


def _hf_text(hf, text: str) -> torch.Tensor:
    """One text through CLIPModel.forward (no padding, no batching): normalised text_embeds."""
    model, tok, proc = hf
    ids = tok(text, truncation=True, max_length=16, return_tensors="pt")
    dummy = proc(images=Image.new("RGB", (30, 30)), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], pixel_values=dummy).text_embeds[0]


def _hf_image(hf, image) -> torch.Tensor:
    model, tok, proc = hf
    pixels = proc(images=image, return_tensors="pt")["pixel_values"]
    ids = tok("a", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).image_embeds[0]


def test_load_clip_folder(clip_dir):
    bundle = load_clip(clip_dir)
    assert bundle.projection_dim == 16 and bundle.max_text_length == 16
    assert not bundle.model.training


def test_load_clip_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipUnavailableError) as err:
        load_clip("no-such-org/no-such-clip")
    msg = str(err.value)
    assert msg.count(". ") == 0 and "\n" not in msg  # one sentence
    assert '"no-such-org/no-such-clip" are not available offline' in msg
    assert "huggingface-cli download no-such-org/no-such-clip" in msg and "--clip DIR" in msg


def test_load_clip_missing_folder(tmp_path):
    with pytest.raises(ClipUnavailableError, match="does not exist or holds no config.json"):
        load_clip(tmp_path / "nothing")


def test_embeddings_match_hf_forward(embedder, hf, images):
    txt = embedder.embed_texts(CAPTIONS, prefix=CLIP_S_PREFIX)
    img = embedder.embed_images(images)
    assert txt.shape == img.shape == (len(CAPTIONS), 16)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(len(CAPTIONS)))
    for i, caption in enumerate(CAPTIONS):  # caption 3 is longer than 16 tokens: truncated
        torch.testing.assert_close(txt[i], _hf_text(hf, CLIP_S_PREFIX + caption), atol=1e-5, rtol=0)
        torch.testing.assert_close(img[i], _hf_image(hf, images[i]), atol=1e-5, rtol=0)


def test_clip_s_and_refclip_s_match_reference_loop(embedder, hf, images):
    img = embedder.embed_images(images)
    txt = embedder.embed_texts(CAPTIONS, prefix=CLIP_S_PREFIX)
    ref_emb, mask = embed_references(embedder, REFS)
    got = {
        "clip": clip_s(img, txt),
        "hessel": refclip_s(img, txt, ref_emb, mask, variant="hessel"),
        "cho": refclip_s(img, txt, ref_emb, mask, variant="cho"),
    }
    for i, caption in enumerate(CAPTIONS):
        c = _hf_text(hf, CLIP_S_PREFIX + caption)
        v = _hf_image(hf, images[i])
        cs = 2.5 * max(float(c @ v), 0.0)
        cos_refs = [float(c @ _hf_text(hf, CLIP_S_PREFIX + r)) for r in REFS[i]]
        hessel_ref = max(cos_refs)  # Hessel: raw cosine
        cho_ref = max(2.5 * max(x, 0.0) for x in cos_refs)  # Cho: clipped and scaled

        def hm(a, b):
            return 0.0 if a + b == 0 else 2 * a * b / (a + b)

        assert got["clip"][i].item() == pytest.approx(cs, abs=1e-5)
        assert got["hessel"][i].item() == pytest.approx(hm(cs, hessel_ref), abs=1e-5)
        assert got["cho"][i].item() == pytest.approx(hm(cs, cho_ref), abs=1e-5)


def test_refclip_edge_cases():
    img = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    refs = torch.zeros(2, 1, 4)
    mask = torch.tensor([[False], [False]])  # no references: reference term 0 -> RefCLIP-S 0
    assert refclip_s(img, img, refs, mask).tolist() == [0.0, 0.0]
    assert clip_s(img, -img).tolist() == [0.0, 0.0]  # negative cosine clipped at 0
    assert harmonic_mean(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 3.0])).tolist() == [0, 1.5]
    with pytest.raises(ValueError, match="unknown RefCLIP-S variant"):
        refclip_s(img, img, refs, mask, variant="other")


def _cho_retrieval(sims: np.ndarray) -> dict[str, float]:
    """Cho et al.'s eval_clip_retrieval.py compute_retrieval, as fractions."""
    ranks = np.array([np.where(np.argsort(row)[::-1] == i)[0][0] for i, row in enumerate(sims)])
    out = {f"R@{k}": float(np.mean(ranks < k)) for k in (1, 5, 10)}
    out["MedR"] = float(np.floor(np.median(ranks)) + 1)
    return out


def test_retrieval_matches_reference(embedder, hf, images):
    rnd = np.random.default_rng(1)
    many = [Image.fromarray(rnd.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for _ in range(24)]
    words = [
        "dog",
        "cat",
        "red",
        "blue",
        "green",
        "grass",
        "table",
        "man",
        "woman",
        "square",
        "circle",
        "big",
        "small",
    ]
    captions = [" ".join(rnd.choice(words, size=4)) for _ in many]
    got = retrieval_scores(embedder.embed_texts(captions), embedder.embed_images(many))
    # Reference: cosine matrix from the HF model, image i x caption j, one pair at a time.
    t = torch.stack([_hf_text(hf, c) for c in captions]).numpy()
    v = torch.stack([_hf_image(hf, im) for im in many]).numpy()
    sims = v @ t.T  # (images, captions)
    t2i, i2t = _cho_retrieval(sims.T), _cho_retrieval(sims)
    for k in ("R@1", "R@5", "R@10", "MedR"):
        assert got[k] == pytest.approx(t2i[k])
        assert got[f"I2T-{k}"] == pytest.approx(i2t[k])


def test_retrieval_ties_count_against():
    gallery = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0]] * 4)  # one generic query fits image 0 only
    assert ranks_of_truth(queries, gallery).tolist() == [0, 3, 3, 3]
    same = torch.ones(3, 3) / 3**0.5  # image -> text with identical captions: all tie
    assert ranks_of_truth(torch.eye(3), same + 1e-8 * torch.randn(3, 3)).tolist() == [2, 2, 2]


def test_image_file_cache(embedder, images, tmp_path, monkeypatch):
    paths = []
    for i, im in enumerate(images[:3]):
        paths.append(tmp_path / f"im{i}.png")
        im.save(paths[-1])
    cache = tmp_path / "cache.safetensors"
    first = ClipEmbedder(embedder.bundle, cache_file=cache)
    emb = first.embed_image_files(paths + paths[:1])  # duplicates embedded once
    torch.testing.assert_close(emb[:3], embedder.embed_images(images[:3]))
    torch.testing.assert_close(emb[3], emb[0])
    first.save_cache()

    second = ClipEmbedder(embedder.bundle, cache_file=cache)
    calls = []
    monkeypatch.setattr(second, "embed_images", lambda ims: calls.append(len(ims)) or None)
    torch.testing.assert_close(second.embed_image_files(paths), emb[:3])
    assert calls == []  # all from the file cache

    images[3].save(paths[1])  # changed file (new mtime) -> re-embedded
    import os

    os.utime(paths[1], ns=(1, 10**18))
    third = ClipEmbedder(embedder.bundle, cache_file=cache)
    torch.testing.assert_close(
        third.embed_image_files(paths)[1], embedder.embed_images([images[3]])[0]
    )
