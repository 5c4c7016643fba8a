"""Dataset loaders: every format on a tiny fixture, malformed files, guessing, predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finecap.data.formats import (
    FLICKR8K_SPLIT_FILES,
    CaptionCorpus,
    DatasetFormatError,
    ImageRecord,
    OutsideRootError,
    dataset_files,
    guess_format,
    list_formats,
    load_corpus,
    load_predictions,
    save_predictions,
)
from finecap.io import atomic_write_text


def _sentences(*raws: str) -> list[dict]:
    return [
        {"raw": r, "tokens": r.lower().split(), "imgid": 0, "sentid": i} for i, r in enumerate(raws)
    ]


def _karpathy_coco(tmp_path: Path) -> Path:
    images = [
        {"filepath": "train2014", "filename": "a.jpg", "imgid": 0, "cocoid": 101, "split": "train",
         "sentids": [0, 1], "sentences": _sentences("A cat.", "  A cat on a mat. ")},
        {"filepath": "val2014", "filename": "b.jpg", "imgid": 1, "cocoid": 202, "split": "restval",
         "sentids": [2], "sentences": _sentences("A dog.")},
        {"filepath": "val2014", "filename": "c.jpg", "imgid": 2, "cocoid": 303, "split": "test",
         "sentids": [3], "sentences": _sentences("")},
    ]  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_registry_lists_every_format() -> None:
    assert {"karpathy", "flickr8k", "coco_captions", "pairs"} <= set(list_formats())


def test_karpathy_coco_ids_paths_splits_and_restval(tmp_path: Path) -> None:
    corpus = load_corpus(_karpathy_coco(tmp_path))
    assert corpus.name == "coco" and corpus.image_root == tmp_path
    a, b, c = corpus.images
    assert (a.image_id, a.path, a.split) == (101, "train2014/a.jpg", "train")
    assert a.captions == ["A cat.", "A cat on a mat."]
    assert a.extra == {"imgid": 0}  # cocoid is the id; imgid kept
    assert b.split == "train"  # restval merged
    assert c.captions == [""]  # empty caption kept, no crash
    assert [r.image_id for r in corpus.split("train")] == [101, 202]
    assert corpus.by_id()[303] is c
    assert corpus.image_path(a) == tmp_path / "train2014" / "a.jpg"

    kept = load_corpus(_karpathy_coco(tmp_path), merge_restval=False, image_root="/imgs")
    assert [r.split for r in kept.images] == ["train", "restval", "test"]
    assert kept.image_path(kept.images[0]) == Path("/imgs/train2014/a.jpg")


def test_karpathy_flickr_uses_imgid_and_keeps_unknown_keys(tmp_path: Path) -> None:
    # The scenes world's dataset.json: Karpathy format plus "descriptions" and "scene".
    entry = {"filename": "0.png", "imgid": 7, "split": "val", "sentences": _sentences("red box"),
             "descriptions": {"object": ["box"]}, "scene": {"objects": [1, 2]}}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps({"images": [entry]}))
    corpus = load_corpus(tmp_path)  # a folder holding dataset.json
    (record,) = corpus.images
    assert (record.image_id, record.path, record.split) == (7, "0.png", "val")
    assert record.extra == {"descriptions": {"object": ["box"]}, "scene": {"objects": [1, 2]}}
    assert corpus.name == "dataset"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.pop("sentences"), 'images[1] (cocoid 202): missing key "sentences"'),
        (lambda e: e.update(split="dev"), "images[1] (cocoid 202): unknown split 'dev'"),
        (lambda e: e.update(cocoid="x"), '"cocoid" must be an integer, got str'),
        (lambda e: e["sentences"].append(5), "images[1] (cocoid 202) sentences[1]: expected an"),
        (lambda e: e.update(cocoid=101), "image id 101 is used twice"),
        (
            lambda e: e.update(sentences=[], split="restval"),
            "202 (val2014/b.jpg) is in the restval",
        ),
    ],
)
def test_karpathy_malformed_entries_name_file_and_entry(tmp_path: Path, mutate, message) -> None:
    path = _karpathy_coco(tmp_path)
    data = json.loads(path.read_text())
    mutate(data["images"][1])
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match="dataset_coco.json") as info:
        load_corpus(path, fmt="karpathy")
    assert message in str(info.value)


def test_no_captions_allowed_outside_train(tmp_path: Path) -> None:
    path = _karpathy_coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"][2]["sentences"] = []
    path.write_text(json.dumps(data))
    assert load_corpus(path).images[2].captions == []


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(
        DatasetFormatError, match=r"dataset_flickr30k.json: invalid JSON at line 2 col"
    ):
        load_corpus(path)


def _flickr8k(tmp_path: Path, token_lines: list[str]) -> Path:
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("\n".join(token_lines) + "\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("b.jpg\nc.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("a.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("d.jpg\n")
    return token


FLICKR8K_LINES = [
    "c.jpg#1\tC one .",
    "c.jpg#0\tC zero .",
    "a.jpg#0\tA zero .",
    "b.jpg#0\tB zero .",
    "d.jpg#0\t",
    "d.jpg.1#0\tstray entry listed in no split file",
]


def test_flickr8k_token_file_and_split_files(tmp_path: Path) -> None:
    token = _flickr8k(tmp_path, FLICKR8K_LINES)
    for source in (token, tmp_path):  # the token file or the folder holding it
        corpus = load_corpus(source)
        assert corpus.name == "flickr8k"
        # Ids follow sorted file names: a, b, c, d, d.jpg.1 -> 0..4; the stray one is dropped.
        got = [(r.image_id, r.path, r.split, r.captions) for r in corpus.images]
        assert got == [
            (0, "a.jpg", "val", ["A zero ."]),
            (1, "b.jpg", "train", ["B zero ."]),
            (2, "c.jpg", "train", ["C zero .", "C one ."]),  # ordered by #K
            (3, "d.jpg", "test", [""]),
        ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["a.jpg#0\tok", "b.jpg 0 no tab"],
            'Flickr8k.token.txt line 2: expected "IMAGE#K<TAB>caption"',
        ),
        (["a.jpg#0\tok", "", "a.jpg\tno index"], "Flickr8k.token.txt line 3: expected"),
        (
            ["a.jpg#0\tok", "a.jpg#0\tagain"],
            "Flickr8k.token.txt line 2: caption a.jpg#0 appears twice",
        ),
        (["a.jpg#0\tok"], "image 1 (b.jpg) is in the train split but has no captions"),
    ],
)
def test_flickr8k_malformed(tmp_path: Path, lines: list[str], message: str) -> None:
    with pytest.raises(DatasetFormatError) as info:
        load_corpus(_flickr8k(tmp_path, lines))
    assert message in str(info.value)


def test_flickr8k_missing_split_files(tmp_path: Path) -> None:
    token = _flickr8k(tmp_path, FLICKR8K_LINES)
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DatasetFormatError, match="Flickr_8k.devImages.txt"):
        load_corpus(token)
    with pytest.raises(ValueError, match="carries its own splits"):
        load_corpus(tmp_path / "Flickr8k.token.txt", split="test")


def _coco_captions(tmp_path: Path, **changes) -> Path:
    data = {
        "info": {},
        "images": [{"id": 9, "file_name": "x.jpg", "width": 4}, {"id": 3, "file_name": "y.jpg"}],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "Y one"},
            {"image_id": 9, "id": 2, "caption": "X one\n"},
            {"image_id": 3, "id": 3, "caption": "Y two"},
        ],
    }
    data.update(changes)
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_captions_groups_annotations_and_takes_split_argument(tmp_path: Path) -> None:
    corpus = load_corpus(_coco_captions(tmp_path))
    x, y = corpus.images
    assert (x.image_id, x.path, x.split, x.captions, x.extra) == (
        9,
        "x.jpg",
        "test",
        ["X one"],
        {"width": 4},
    )
    assert y.captions == ["Y one", "Y two"]
    assert {r.split for r in load_corpus(_coco_captions(tmp_path), split="val").images} == {"val"}
    with pytest.raises(DatasetFormatError, match="image 9 .* train split but has no captions"):
        load_corpus(_coco_captions(tmp_path, annotations=[]), split="train")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"annotations": [{"image_id": 4, "caption": "z"}]},
            "annotations[0]: image_id 4 is not in images",
        ),
        (
            {"annotations": [{"image_id": 9, "caption": 5}]},
            'annotations[0]: "caption" must be a string',
        ),
        (
            {"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]},
            "images[1] (id 1): image id 1 appears twice",
        ),
        ({"images": [{"file_name": "a"}]}, 'images[0]: missing key "id"'),
    ],
)
def test_coco_captions_malformed(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(DatasetFormatError, match="captions_val2014.json") as info:
        load_corpus(_coco_captions(tmp_path, **changes))
    assert message in str(info.value)


def test_pairs_jsonl_and_csv_group_by_image(tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    rows = [
        {"image": "img/a.jpg", "caption": "first"},
        {"image": "img/b.jpg", "caption": "other", "split": "test"},
        {"image": "img/a.jpg", "caption": "second", "note": "n"},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    corpus = load_corpus(jsonl)
    a, b = corpus.images
    assert (a.image_id, a.path, a.split, a.captions) == (
        0,
        "img/a.jpg",
        "train",
        ["first", "second"],
    )
    assert a.extra == {"note": [None, "n"]}  # aligned with the captions
    assert (b.image_id, b.split) == (1, "test")
    assert corpus.image_path(a) == tmp_path / "img" / "a.jpg"

    csv_path = tmp_path / "finecapeval.csv"
    csv_path.write_text(
        'image,caption,object\n/abs/a.jpg,"one, with comma",cat\\;mat\n/abs/a.jpg,two,dog\n'
    )
    (record,) = load_corpus(csv_path, split="test").images
    assert record.captions == ["one, with comma", "two"] and record.split == "test"
    assert record.extra == {"object": ["cat\\;mat", "dog"]}
    with pytest.raises(OutsideRootError, match=r"finecapeval.csv: image_id 0: .*is absolute"):
        load_corpus(csv_path).image_path(record)  # absolute: outside the root unless allowed
    allowed = load_corpus(csv_path, allow_outside_root=True)
    assert allowed.image_path(allowed.images[0]) == Path("/abs/a.jpg")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "p.jsonl",
            '{"image": "a", "caption": "x"}\n{"image": "a", "caption": \n',
            "p.jsonl line 2: invalid JSON",
        ),
        ("p.jsonl", '{"image": "a"}\n', 'p.jsonl line 1: "caption" must be a string'),
        ("p.jsonl", '["a", "x"]\n', "p.jsonl line 1: expected an object"),
        (
            "p.jsonl",
            '{"image": "a", "caption": "x"}\n{"image": "a", "caption": "y", "split": "test"}',
            "p.jsonl line 2: a is in split 'test' here",
        ),
        (
            "p.csv",
            "img,text\na,b\n",
            "p.csv line 1: CSV header must name columns image and caption",
        ),
        ("p.csv", "image,caption\na,b\nc\n", 'p.csv line 3: "caption" must be a string'),
        ("p.csv", "image,caption\na,b,c\n", "p.csv line 2: more fields than the header"),
    ],
)
def test_pairs_malformed(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetFormatError) as info:
        load_corpus(path)
    assert message in str(info.value)


def test_guessing_by_content(tmp_path: Path) -> None:
    karpathy = _karpathy_coco(tmp_path)
    renamed = tmp_path / "whatever.json"  # content decides, not the name
    renamed.write_text(karpathy.read_text())
    assert guess_format(renamed) == "karpathy"
    coco = _coco_captions(tmp_path)
    (tmp_path / "images_only.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "a"}]})
    )
    assert guess_format(coco) == "coco_captions"
    assert guess_format(tmp_path / "images_only.json") == "coco_captions"
    (tmp_path / "p.jsonl").write_text("")
    (tmp_path / "p.csv").write_text("image,caption\n")
    assert guess_format(tmp_path / "p.jsonl") == guess_format(tmp_path / "p.csv") == "pairs"
    assert guess_format(_flickr8k(tmp_path, FLICKR8K_LINES)) == "flickr8k"

    (tmp_path / "preds.json").write_text('[{"image_id": 1, "caption": "x"}]')
    with pytest.raises(DatasetFormatError, match="preds.json: cannot tell.*load_predictions"):
        load_corpus(tmp_path / "preds.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_corpus(tmp_path / "nope.json")


def test_predictions_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "preds.json"
    save_predictions(path, {1: "a cat", "img-2": "ünïcode dog"})
    assert load_predictions(path) == {1: "a cat", "img-2": "ünïcode dog"}
    assert json.loads(path.read_text()) == [
        {"image_id": 1, "caption": "a cat"},
        {"image_id": "img-2", "caption": "ünïcode dog"},
    ]
    assert [p.name for p in path.parent.iterdir()] == ["preds.json"]  # no temp file left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"image_id": 1}', "top level: expected a list"),
        ('[{"image_id": 1, "caption": "a"}, 3]', "[1]: expected an object"),
        ('[{"caption": "a"}]', '[0]: missing key "image_id"'),
        ('[{"image_id": 1.5, "caption": "a"}]', '[0]: "image_id" must be an integer or string'),
        (
            '[{"image_id": 1, "caption": ["a"]}]',
            '[0] (image_id 1): "caption" must be a string, got list',
        ),
        ('[{"image_id": 1}]', '[0] (image_id 1): missing key "caption"'),
        (
            '[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]',
            "[1]: duplicate image_id 1 (first at [0])",
        ),
        ('[{"image_id": 1, "caption": "a"}', "invalid JSON at line 1"),
    ],
)
def test_load_predictions_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(DatasetFormatError, match="results.json") as info:
        load_predictions(path)
    assert message in str(info.value)


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_corpus_split_rejects_unknown_names() -> None:
    corpus = CaptionCorpus("c", [ImageRecord(1, "a.jpg", "train", ["x"])])
    assert corpus.split("val") == [] and len(corpus) == 1
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.split("dev")


def _one_image_dataset(folder: Path, filepath: str | None, filename: str) -> Path:
    entry = {"filename": filename, "imgid": 5, "split": "test", "sentences": _sentences("x")}
    if filepath is not None:
        entry["filepath"] = filepath
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"images": [entry]}))
    return folder / "dataset.json"


@pytest.mark.parametrize(
    ("filepath", "filename", "why"),
    [
        (None, "/etc/passwd", "is absolute"),
        ("/etc", "passwd", "is absolute"),
        (None, "../secret.png", "leads out with '..'"),
        ("images", "../../secret.png", "leads out with '..'"),
        ("linked", "secret.png", "goes through a symlink to "),  # a folder linked out
        (None, "link.png", "goes through a symlink to "),  # a file linked out
    ],
)
def test_image_paths_outside_the_root_are_refused(tmp_path: Path, filepath, filename, why):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"private")
    root = tmp_path / "data"
    path = _one_image_dataset(root, filepath, filename)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "link.png").symlink_to(outside / "secret.png")
    corpus = load_corpus(path)  # loading is fine: the path is refused where it is read
    with pytest.raises(OutsideRootError) as info:
        corpus.image_path(corpus.images[0])
    message = str(info.value)
    assert message.startswith(f"{path}: image_id 5: image path ")
    assert why in message and f"outside the image root {root}" in message
    assert "--allow-outside-root" in message
    allowed = load_corpus(path, allow_outside_root=True)
    assert allowed.image_path(allowed.images[0]) == root / (allowed.images[0].path)
    assert issubclass(OutsideRootError, DatasetFormatError)


def test_image_paths_inside_the_root_are_fine(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"x")
    (root / "alias.png").symlink_to(root / "images" / "a.png")  # a link inside the root
    for filepath, filename in [("images", "a.png"), ("images/../images", "a.png"),
                               (None, "alias.png"), ("not/there", "b.png")]:  # fmt: skip
        corpus = load_corpus(_one_image_dataset(root, filepath, filename))
        assert corpus.image_path(corpus.images[0]) == root / corpus.images[0].path
    # --images: the root is the folder given, wherever the dataset file is
    corpus = load_corpus(_one_image_dataset(tmp_path / "d", "images", "a.png"), image_root=root)
    assert corpus.image_path(corpus.images[0]) == root / "images" / "a.png"
    corpus = load_corpus(_one_image_dataset(tmp_path / "d", None, "../a.png"), image_root=root)
    with pytest.raises(OutsideRootError, match="leads out"):
        corpus.image_path(corpus.images[0])


def test_lone_surrogates_are_refused_with_file_and_entry(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text('[{"image_id": 1, "caption": "ok"}, {"image_id": 7, "caption": "a\\ud800"}]')
    with pytest.raises(DatasetFormatError) as info:
        load_predictions(results)
    assert str(info.value) == (
        f'{results}: [1] (image_id 7): "caption" holds a lone surrogate (\\ud800 at '
        "character 1): not UTF-8"
    )
    results.write_text('[{"image_id": "x\\udfff", "caption": "ok"}]')
    with pytest.raises(DatasetFormatError, match=r'\[0\]: "image_id" holds a lone surrogate'):
        load_predictions(results)
    dataset = _one_image_dataset(tmp_path, None, "a.png")
    dataset.write_text(dataset.read_text().replace('"raw": "x"', '"raw": "\\udc80"'))
    with pytest.raises(DatasetFormatError, match=r'\(imgid 5\) sentences\[0\]: "raw" holds a'):
        load_corpus(dataset)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"image": "a.png", "caption": "\\ud800"}\n')
    with pytest.raises(DatasetFormatError, match=r'p.jsonl line 1: "caption" holds a lone'):
        load_corpus(pairs)


def test_dataset_files_are_what_load_corpus_reads(tmp_path: Path) -> None:
    assert dataset_files(tmp_path / "d.json") == [tmp_path / "d.json"]
    assert dataset_files(tmp_path)[0] == tmp_path / "dataset.json"
    token = _flickr8k(tmp_path, ["a.jpg#0\tA dog."])
    assert {p.name for p in dataset_files(token)} == {token.name, *FLICKR8K_SPLIT_FILES.values()}
    assert dataset_files(tmp_path)[1:] == [
        token,
        *(tmp_path / n for n in FLICKR8K_SPLIT_FILES.values()),
    ]
