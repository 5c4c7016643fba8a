"""The feature store on a tiny scenes world: round trip, resume after a kill, parts merged,
foreign stores refused, and what reads it (captions, MLE training, CLIP rewards, evaluate)
gets what the pixels give."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finecap.captioner import Captioner
from finecap.cli import main as cli
from finecap.clip.embed import ClipEmbedder, load_clip
from finecap.config import ConfigError
from finecap.data.formats import load_corpus
from finecap.data.images import load_image
from finecap.decoding import DecodingConfig, decode
from finecap.features import FeatureStore, ForeignStoreError, StoreError
from finecap.features import extract as extract_module
from finecap.features import store as store_module
from finecap.features.extract import ExtractConfig, extract
from finecap.models import create_encoder, encoder_config
from finecap.rewards import RewardBatch, create_reward
from finecap.scenes import generate_world
from finecap.train.config import load_config
from finecap.train.run import train
from helpers.tiny_captioners import make_tiny_captioner
from helpers.tiny_models import make_tiny_clip

N_IMAGES, SHARD = 40, 16  # 3 shards: 16, 16, 8


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("features")
    dataset = generate_world(root / "world", N_IMAGES, seed=1, image_size=48)
    captioner = make_tiny_captioner("transformer", "small_cnn", freeze=True)
    captioner.save_pretrained(root / "captioner")
    clip = make_tiny_clip(root)
    store = root / "store"
    extract(_config(root, store, clip=[str(clip)]), log=lambda m: None)
    return {"root": root, "dataset": dataset, "captioner": root / "captioner", "clip": clip,
            "store": store}  # fmt: skip


def _config(root: Path, out: Path, **changes) -> ExtractConfig:
    settings = dict(model=str(root / "captioner"), dataset=str(root / "world" / "dataset.json"))
    return ExtractConfig(out=str(out), shard_size=SHARD, **{**settings, **changes})


def _images(work: dict) -> tuple[list, list]:
    corpus = load_corpus(work["dataset"])
    return corpus.images, [load_image(corpus.image_path(r)) for r in corpus.images]


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    store = FeatureStore(folder)
    ids = list(store.rows)
    out = {"regions": store.regions(ids), "pooled": store.pooled(ids)}
    out.update({key: store.clip_embeddings(ids, key) for key in store.clips})
    return out


def test_round_trip_every_image_its_features(work: dict) -> None:
    store = FeatureStore(work["store"])
    records, images = _images(work)
    ids = [r.image_id for r in records][::-1]  # any order, across shards
    assert len(store) == N_IMAGES and store.shards == ["00000.safetensors", "00001.safetensors",
                                                       "00002.safetensors"]  # fmt: skip
    encoder = Captioner.from_pretrained(work["captioner"]).model.encoder
    with torch.no_grad():
        expected = encoder.backbone(encoder.preprocess(images[::-1]))  # (N, R, D)
    np.testing.assert_allclose(store.regions(ids), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(store.pooled(ids), expected.mean(1).numpy(), atol=1e-5)
    bundle = load_clip(work["clip"])
    key = store.clip_key(store_module.clip_fingerprint(bundle), "tiny")
    np.testing.assert_allclose(
        store.clip_embeddings(ids, key), ClipEmbedder(bundle).embed_images(images[::-1]), atol=1e-5
    )
    index = json.loads((work["store"] / "index.json").read_text())
    assert index["encoder"]["config"]["name"] == "small_cnn" and index["encoder"]["hash"]
    assert index["images"][str(ids[0])] == list(store.rows[str(ids[0])])
    with pytest.raises(StoreError, match="1 images are not in the feature store"):
        store.regions([ids[0], 10**9])


def test_float16_store_halves_the_regions(work: dict) -> None:
    out = work["root"] / "half"
    extract(_config(work["root"], out, dtype="float16"), log=lambda m: None)
    half, full = _arrays(out), _arrays(work["store"])
    assert half["regions"].dtype == np.float16
    np.testing.assert_allclose(half["regions"], full["regions"], rtol=2e-3, atol=2e-3)
    size = lambda folder: sum(p.stat().st_size for p in (folder / "shards").iterdir())  # noqa: E731
    assert size(out) < 0.6 * size(work["store"])


def test_captions_from_features_equal_captions_from_pixels(work: dict) -> None:
    captioner = Captioner.from_pretrained(work["captioner"])
    records, images = _images(work)
    from_pixels = [c.text for c in captioner(images, beam_size=3)]
    store = FeatureStore(work["store"])
    regions = store_module.torch_rows(store.regions([r.image_id for r in records]))
    model = captioner.model
    with torch.no_grad():
        decoded = decode(
            model.decoder,
            model.encoder.encode_features(regions),
            DecodingConfig(beam_size=3, max_len=captioner.config.decoder.max_len),
        )
    from_store = [captioner.vocab.decode(decoded.tokens[i].tolist()) for i in range(len(records))]
    assert from_store == from_pixels


def test_resume_after_a_kill_keeps_complete_shards(work: dict, monkeypatch) -> None:
    out = work["root"] / "killed"
    real = store_module.write_shard
    written: list[str] = []

    def dies_in_the_second_shard(path: Path, arrays: dict, metadata: dict) -> None:
        if written:  # a kill mid-write: a torn temporary file, no shard
            (path.parent / f".{path.name}.x.tmp").write_bytes(b"torn")
            raise KeyboardInterrupt
        written.append(path.name)
        real(path, arrays, metadata)

    monkeypatch.setattr(extract_module, "write_shard", dies_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(work["root"], out), log=lambda m: None)
    shards = out / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [
        ".00001.safetensors.x.tmp",
        "00000.safetensors",
    ]
    assert not (out / "index.json").exists()
    with pytest.raises(StoreError, match="unfinished"):
        FeatureStore(out)
    first = (shards / "00000.safetensors").stat().st_mtime_ns

    monkeypatch.setattr(extract_module, "write_shard", real)
    lines: list[str] = []
    extract(_config(work["root"], out), log=lines.append)
    assert "2 to do, 1 done" in lines[0]
    assert (shards / "00000.safetensors").stat().st_mtime_ns == first  # kept, not redone
    assert sorted(p.name for p in shards.iterdir()) == [f"0000{k}.safetensors" for k in range(3)]
    fresh = _arrays(_reference_store(work))
    for name, values in _arrays(out).items():
        np.testing.assert_array_equal(values, fresh[name])


def _reference_store(work: dict) -> Path:
    out = work["root"] / "reference"
    if not (out / "index.json").exists():
        extract(_config(work["root"], out), log=lambda m: None)
    return out


def test_parts_merge_into_one_index(work: dict, tmp_path: Path) -> None:
    out = tmp_path / "parts"
    lines: list[str] = []
    extract(_config(work["root"], out, shard="1/2"), log=lines.append)  # shard 1 only
    assert not (out / "index.json").exists() and "still to do" in lines[-1]
    with pytest.raises(StoreError, match=r"2 shards not done yet: \[0, 2\]"):
        extract(_config(work["root"], out, merge=True), log=lines.append)
    extract(_config(work["root"], out, shard="0/2"), log=lines.append)  # the last part merges
    merged, fresh = _arrays(out), _arrays(_reference_store(work))
    for name, values in merged.items():
        np.testing.assert_array_equal(values, fresh[name])
    (out / "index.json").unlink()
    extract(_config(work["root"], out, merge=True), log=lines.append)
    assert len(FeatureStore(out)) == N_IMAGES
    with pytest.raises(StoreError, match="other images, encoder"):  # another plan, same folder
        extract(_config(work["root"], out, dtype="float16"), log=lines.append)


def test_foreign_encoder_and_clip_refused(work: dict, tmp_path: Path) -> None:
    store = FeatureStore(work["store"])
    other = make_tiny_captioner("transformer", "small_cnn", seed=1, freeze=True).model.encoder
    with pytest.raises(ForeignStoreError, match=r"made by encoder small_cnn .* not by mine"):
        store.check_encoder(other, "mine")
    trainable = make_tiny_captioner("transformer", "small_cnn", freeze=False)
    with pytest.raises(StoreError, match="freeze: false"):
        store.check_encoder(trainable.model.encoder)
    trainable.save_pretrained(tmp_path / "trainable")
    assert cli(["features", "extract", "--model", str(tmp_path / "trainable"), "--dataset",
                str(work["dataset"]), "--out", str(tmp_path / "s")]) == 2  # fmt: skip
    other_clip = make_tiny_clip(tmp_path, seed=1)
    with pytest.raises(ForeignStoreError, match="not of CLIP"):
        create_reward("clip_s", clip=str(other_clip), features=str(work["store"]))


def test_clip_reward_from_the_store_equals_from_images(work: dict) -> None:
    records, images = _images(work)
    batch = dict(
        captions=["a red circle", "a big square"] * 4, image_ids=[r.image_id for r in records[:4]]
    )
    stored = create_reward("clip_s", clip=str(work["clip"]), features=str(work["store"]))
    direct = create_reward("clip_s", clip=str(work["clip"]))
    from_store = stored(RewardBatch(**batch))  # no images: read by id
    torch.testing.assert_close(from_store, direct(RewardBatch(**batch, images=images[:4])))


def test_mle_from_the_store_trains_as_from_pixels(work: dict, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"base: scenes_lstm.yaml\noutput_dir: {tmp_path / 'pixels'}\n"
        f"data: {{dataset: {work['dataset']}, batch_size: 8, val_images: 8}}\n"
        "model:\n  encoder: {name: small_cnn, image_size: 48, width: 16, freeze: true}\n"
        "  decoder: {name: lstm, hidden_size: 32, embed_size: 16, attention_size: 16}\n"
        "optim: {max_epochs: 1, warmup_steps: 2}\ntrainer: {threads: 1}\n"
    )
    store = tmp_path / "store"
    assert cli(["features", "extract", "--config", str(recipe), "--out", str(store)]) == 0
    train(load_config(recipe))
    train(load_config(recipe, [f"data.features={store}", f"output_dir={tmp_path / 'stored'}"]))
    rows = [list(csv.DictReader((tmp_path / run / "logs/version_0/metrics.csv").open()))
            for run in ("pixels", "stored")]  # fmt: skip
    xe = [[float(r["train/xe"]) for r in run if r["train/xe"]] for run in rows]
    np.testing.assert_allclose(xe[1], xe[0], rtol=1e-4)
    cider = [[float(r["val/CIDEr"]) for r in run if r["val/CIDEr"]] for run in rows]
    np.testing.assert_allclose(cider[1], cider[0], rtol=1e-4)
    # The trained (unfrozen) encoder of another recipe cannot use this store.
    with pytest.raises(StoreError, match="freeze: false"):
        train(load_config(recipe, [f"data.features={store}", "model.encoder.freeze=false",
                                   f"output_dir={tmp_path / 'bad'}"]))  # fmt: skip


def test_evaluate_reads_clip_embeddings_from_the_store(work: dict, tmp_path: Path, capsys) -> None:
    records = load_corpus(work["dataset"]).split("test")
    preds = tmp_path / "preds.json"
    preds.write_text(
        json.dumps([{"image_id": r.image_id, "caption": r.captions[0]} for r in records])
    )
    scores = []
    for extra in ([], ["--features", str(work["store"]), "--images", str(tmp_path)]):
        out = tmp_path / f"m{len(extra)}.json"
        argv = [
            "evaluate",
            "--predictions",
            str(preds),
            "--dataset",
            str(work["dataset"]),
            "--metrics",
            "clipscore,retrieval",
            "--clip",
            str(work["clip"]),
            "--out",
            str(out),
        ]
        assert cli(argv + extra) == 0  # with --features the image root holds no images
        scores.append(json.loads(out.read_text())["systems"]["preds"])  # fmt: skip
    assert scores[0].keys() >= {"CLIP-S", "R@1"}
    for metric, value in scores[0].items():
        assert scores[1][metric] == pytest.approx(value, abs=1e-6), metric


def test_bad_part_and_missing_store_are_one_line_errors(work: dict, tmp_path: Path, capsys) -> None:
    argv = ["features", "extract", "--model", str(work["captioner"]), "--out", str(tmp_path)]
    assert cli([*argv, "--dataset", str(work["dataset"]), "--shard", "2/2"]) == 2
    assert "expected i/n with 0 <= i < n" in capsys.readouterr().err
    recipe_overrides = [f"data.features={tmp_path / 'none'}", f"data.dataset={work['dataset']}"]
    with pytest.raises(StoreError, match="not a finished feature store"):
        train(load_config("scenes_lstm", [*recipe_overrides, f"output_dir={tmp_path / 'r'}"]))
    with pytest.raises(ConfigError, match="augmentation"):
        load_config("scenes_lstm", [*recipe_overrides, "data.augment.flip=true"])
    later = encoder_config("small_cnn", freeze=True, unfreeze_after_epochs=1, width=16)
    with pytest.raises(StoreError, match="unfreeze_after_epochs"):
        FeatureStore(work["store"]).check_encoder(create_encoder(later))


def test_reproduce_with_features_extracts_once_for_the_clip_rows(tmp_path: Path) -> None:
    from finecap.reproduce import CLIP, FEATURES, QUICK, captioner_config, plan

    steps, paths = plan(tmp_path, QUICK.replace(features=True))
    by_name = {s.name: s for s in steps}
    assert by_name[FEATURES].needs == (CLIP,)
    assert FEATURES in by_name["CLIP-S"].needs and FEATURES not in by_name["CIDEr"].needs
    config = captioner_config("scst_scenes_clip_s", tmp_path / "c", {}, paths, 1)
    assert config.scst.rewards[0].features == str(paths[FEATURES])
    plain_steps, _ = plan(tmp_path, QUICK)
    assert FEATURES not in {s.name for s in plain_steps}
