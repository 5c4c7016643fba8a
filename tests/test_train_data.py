"""Training texts (`data.learn_from`): an entry's extra texts join the captions the model
learns from, cut to their first sentence and to the vocabulary, while the references that
CIDEr-D and validation read stay the captions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from finecap.data.formats import DatasetFormatError, ImageRecord
from finecap.data.vocab import Vocab
from finecap.scenes import generate_world
from finecap.train.config import DataConfig
from finecap.train.data import (
    CaptionDataModule,
    extra_sentences,
    make_collate,
    sample_captions,
    texts_to_learn,
)

RECORD = ImageRecord(
    7,
    "scene_7.png",
    "train",
    ["a red star", "a star on sand"],
    {
        "descriptions": [
            "a small red plain star on sand.",
            "one object on sand: a small red plain star. it is big and it is near a thing.",
            "a small red plain star and a large blue dotted circle and a tiny green heart on "
            "a long brown sandy beach by the sea.",
        ]
    },
)


def config(**kw) -> DataConfig:
    return DataConfig(dataset="unused.json", max_len=12, **kw)


def test_extra_sentences_are_first_sentences_that_fit() -> None:
    assert extra_sentences(RECORD, config()) == []  # learn_from unset: none
    sentences = extra_sentences(RECORD, config(learn_from="descriptions"))
    assert sentences == [
        ["a", "small", "red", "plain", "star", "on", "sand"],
        ["one", "object", "on", "sand", "a", "small", "red", "plain", "star"],
    ]  # the third's first sentence has 25 words, over max_len 12: left out, not cut
    assert extra_sentences(RECORD, config(learn_from="no_such_key")) == []
    bad = ImageRecord(8, "scene_8.png", "train", ["a star"], {"descriptions": 3})
    with pytest.raises(DatasetFormatError, match=r"scene_8.png: .*'descriptions' must hold a"):
        extra_sentences(bad, config(learn_from="descriptions"))


def test_learn_longest_keeps_the_longest_text_that_fits() -> None:
    longest = extra_sentences(RECORD, config(learn_from="descriptions", learn_longest=True))
    assert longest == [["one", "object", "on", "sand", "a", "small", "red", "plain", "star"]]
    # the 25-word third is still left out; a record with nothing that fits learns nothing
    none_fit = ImageRecord(9, "scene_9.png", "train", ["a star"], {"descriptions": ["x " * 20]})
    assert extra_sentences(none_fit, config(learn_from="descriptions", learn_longest=True)) == []
    with pytest.raises(ValueError, match="learn_longest .* set learn_from"):
        config(learn_longest=True)


def test_texts_to_learn_drop_words_the_vocabulary_lacks() -> None:
    vocab = Vocab(["a", "red", "star", "on", "sand", "small", "object", "one"])  # no "plain"
    texts = texts_to_learn(RECORD, config(learn_from="descriptions"), vocab)
    assert texts == [
        "a red star",
        "a star on sand",
        "a small red star on sand",
        "one object on sand a small red star",
    ]
    assert all(vocab.unk_id not in vocab.encode(t) for t in texts)
    assert texts_to_learn(RECORD, config(), vocab) == ["a red star", "a star on sand"]


def test_sample_captions_draws_from_every_text() -> None:
    rng = random.Random(0)
    drawn = sample_captions([["a", "b", "c"], ["d"]], 2, rng)
    assert len(drawn) == 4 and set(drawn[:2]) <= {"a", "b", "c"} and drawn[2:] == ["d", "d"]
    assert len(set(drawn[:2])) == 2  # enough texts: no text twice


def test_batches_learn_from_descriptions_but_keep_the_references() -> None:
    vocab = Vocab(["a", "red", "star", "on", "sand", "small", "object", "one", "plain"])
    cfg = config(learn_from="descriptions", captions_per_image=4)
    collate = make_collate(lambda images: None, vocab, cfg, random.Random(0))
    batch = collate([(None, RECORD)])
    learned = sorted(vocab.decode(row[1:]) for row in batch.tokens.tolist())
    assert learned == sorted(
        ["a red star", "a star on sand", "a small red plain star on sand",
         "one object on sand a small red plain star"]
    )  # fmt: skip
    assert batch.references == [RECORD.captions]  # what CIDEr-D scores against
    from_descriptions = {
        text: bool(flag)
        for text, flag in zip(
            (vocab.decode(row[1:]) for row in batch.tokens.tolist()), batch.learned, strict=True
        )
    }
    assert from_descriptions == {
        "a red star": False, "a star on sand": False,
        "a small red plain star on sand": True,
        "one object on sand a small red plain star": True,
    }  # fmt: skip


def test_the_vocabulary_of_a_new_model_holds_the_learned_words(tmp_path: Path) -> None:
    world = generate_world(tmp_path / "world", 12, seed=2, image_size=32)
    plain = CaptionDataModule(DataConfig(dataset=world, val_images=0)).build_vocab()
    data = CaptionDataModule(DataConfig(dataset=world, val_images=0, learn_from="descriptions"))
    learned = data.build_vocab()
    assert "plain" not in plain.stoi and "plain" in learned.stoi  # references never say it
    assert set(plain.itos) < set(learned.itos)
    with pytest.raises(DatasetFormatError, match="data.learn_from: no training entry has the key"):
        CaptionDataModule(DataConfig(dataset=world, learn_from="descriptionz"))
