"""`finecap caption`: bad files reported and the rest captioned, folders, JSON lines, attention
figures, clear exits for a missing model, n-best lists, seeded sampling, and a dataset split
captioned into a predictions file that `evaluate` reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from finecap.attention_maps import (
    DPI,
    PANEL_INCHES,
    attention_figure,
    figure_names,
    save_attention_figure,
    upsample,
)
from finecap.captioner import DEFAULT_MODEL_DIR, Caption, Captioner
from finecap.cli import main
from finecap.data.formats import load_corpus, load_predictions
from finecap.data.images import load_image
from finecap.decoding import DecodingConfig, SamplingConfig
from finecap.evaluation import EvaluationConfig, evaluate
from finecap.scenes import generate_world
from helpers.tiny_captioners import (
    make_repetitive,
    make_talkative,
    make_tiny_captioner,
    repeats_a_trigram,
    save_images,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    # Always 6 words: a random model would often caption with <eos> alone.
    make_talkative(make_tiny_captioner("transformer", seed=1, max_len=6)).save_pretrained(folder)
    return folder


def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    """One file per kind of failure the loader must report."""
    data = good.read_bytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # zeroed compressed pixels
    files = {
        "corrupt": (folder / "corrupt.png", bytes(corrupt)),
        "empty": (folder / "empty.jpg", b""),
        "non-image": (folder / "notes.png", b"these are my holiday notes\n"),
        "truncated": (folder / "truncated.png", data[: len(data) // 2]),
    }
    for path, content in files.values():
        path.write_bytes(content)
    bomb = folder / "bomb.png"
    Image.new("1", (9000, 5000)).save(bomb)  # 45 MP in a few kB: over the 40 MP limit
    return {kind: path for kind, (path, _) in files.items()} | {"bomb": bomb}


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_bad_files_get_error_lines_and_good_ones_are_captioned(
    model_dir, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    good = save_images("imgs", 3, size=40)
    bad = _bad_files(tmp_path / "imgs", good[0])
    # Paths as the user typed them, odd spellings included: they must come back unchanged.
    given = ["imgs/img0.png", "./imgs/corrupt.png", "imgs/../imgs/img1.png", "imgs/empty.jpg"]
    given += ["imgs/notes.png", "imgs/truncated.png", "imgs/bomb.png", "imgs/img2.png"]
    given += ["imgs/missing.png"]
    rc = main(["caption", *given, "--model", str(model_dir), "--json", "--beam-size", "2"])
    out = capsys.readouterr()
    records = _json_lines(out.out)
    assert rc == 1
    assert [r["image"] for r in records] == given  # one line per file, in order
    by_path = {r["image"]: r for r in records}
    for path in ("imgs/img0.png", "imgs/../imgs/img1.png", "imgs/img2.png"):
        assert set(by_path[path]) == {"image", "caption"} and by_path[path]["caption"]
    for kind, path in bad.items():
        shown = next(g for g in given if Path(g).name == path.name)
        assert set(by_path[shown]) == {"image", "error"}, kind
        assert by_path[shown]["error"].startswith(shown), kind
    assert "empty" in by_path["imgs/empty.jpg"]["error"]
    assert "not an image" in by_path["imgs/notes.png"]["error"]
    assert "truncated" in by_path["imgs/truncated.png"]["error"]
    assert "decompression bomb" in by_path["imgs/bomb.png"]["error"]
    assert "not found" in by_path["imgs/missing.png"]["error"]
    # Batching must not change captions: the library, one image at a time, agrees.
    captioner = Captioner.from_pretrained(model_dir)
    for path in ("imgs/img0.png", "imgs/img2.png"):
        alone = captioner.caption([load_image(path)], beam_size=2)[0].text
        assert by_path[path]["caption"] == alone


def test_plain_output_and_folders(model_dir, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    save_images(folder, 3, size=36)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "readme.txt").write_text("skipped: not an image extension")
    (tmp_path / "empty_folder").mkdir()
    given = [str(folder), str(tmp_path / "empty_folder")]
    rc = main(["caption", *given, "--model", str(model_dir), "--batch-size", "2"])
    out = capsys.readouterr()
    lines = [line.split("\t") for line in out.out.splitlines()]
    expected = [os.path.join(str(folder), f"img{i}.png") for i in range(3)]
    assert [path for path, _ in lines] == expected
    assert all(caption for _, caption in lines)
    assert rc == 1
    assert os.path.join(str(folder), "broken.png") in out.err
    assert "empty_folder: no image files" in out.err


def test_all_good_exits_zero_and_greedy_works(model_dir, tmp_path, capsys) -> None:
    paths = [str(p) for p in save_images(tmp_path, 2)]
    rc = main(["caption", *paths, "--model", str(model_dir), "--beam-size", "1", "--max-len", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 2
    assert all(len(line.split("\t")[1].split()) <= 4 for line in lines)


def test_attention_figures(model_dir, tmp_path, capsys) -> None:
    a = save_images(tmp_path / "a", 2, size=40, seed=1)
    b = save_images(tmp_path / "b", 1, size=40, seed=2)  # b/img0.png: same stem as a/img0.png
    out_dir = tmp_path / "maps"
    given = [str(a[0]), str(a[1]), str(b[0])]
    rc = main(["caption", *given, "--model", str(model_dir), "--json", "--attention", str(out_dir)])
    records = _json_lines(capsys.readouterr().out)
    assert rc == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["img0-2.png", "img0.png", "img1.png"]
    captioner = Captioner.from_pretrained(model_dir)
    for record, name in zip(records, ["img0.png", "img1.png", "img0-2.png"], strict=True):
        image = load_image(record["image"])
        caption = captioner.caption([image], with_attention=True)[0]
        assert caption.text == record["caption"]
        assert caption.attention.shape == (len(caption.words) + 1, 16) and caption.grid == (4, 4)
        figure = attention_figure(image, caption)
        assert len(figure.axes) == max(len(caption.words), 1)  # one panel per word
        with Image.open(out_dir / name) as png:
            assert png.size == figure.canvas.get_width_height()
            columns = min(5, max(len(caption.words), 1))
            assert png.size[0] == round(columns * PANEL_INCHES * DPI)


def test_figure_names_disambiguate_repeated_stems() -> None:
    paths = ["a/cat.jpg", "b/cat.png", "c/Cat.jpg", "cat-2.jpg", "dog.jpg"]
    assert figure_names(paths) == ["cat.png", "cat-2.png", "Cat-3.png", "cat-2-2.png", "dog.png"]


def test_missing_model_folder_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    image = save_images(tmp_path, 1)[0]
    rc = main(["caption", str(image), "--model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "no-such-model" in err and "does not exist" in err


def test_folder_that_is_not_a_model_is_exit_2(tmp_path, capsys) -> None:
    image = save_images(tmp_path, 1)[0]
    rc = main(["caption", str(image), "--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "config.json" in err


def test_attention_figure_panels_and_alignment(tmp_path) -> None:
    image = Image.new("RGB", (80, 40), "white")
    attention = torch.full((4, 4), 1e-3)  # 3 words + <eos> on a 2x2 grid
    attention[1, 0] = attention[2, 3] = 1.0  # "red": top-left cell; "circle": bottom-right
    caption = Caption("a red circle", ["a", "red", "circle"], -1.0, attention, (2, 2))
    figure = attention_figure(image, caption)
    assert [ax.get_title() for ax in figure.axes] == ["a", "red", "circle"]
    heat = upsample(attention[1].numpy(), (2, 2), image.size)  # (height, width)
    assert heat.shape == (40, 80)
    assert heat[:20, :40].mean() > 10 * heat[20:, 40:].mean()
    heat = upsample(attention[2].numpy(), (2, 2), image.size)
    assert heat[20:, 40:].mean() > 10 * heat[:20, :40].mean()
    path = save_attention_figure(image, caption, tmp_path / "maps" / "x.png")
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left behind
    empty = Caption("", [], -1.0, attention[:1], (2, 2))
    assert len(attention_figure(image, empty).axes) == 1


def test_odd_file_names_cannot_forge_plain_lines(model_dir, tmp_path, capsys) -> None:
    """Tabs, newlines, backslashes and non-UTF-8 bytes in file names come out escaped, so every
    plain line is still exactly PATH<TAB>caption (--json needs no escaping)."""
    folder = tmp_path / "odd"
    good = save_images(folder, 1)[0]
    names = {"tab\tx.png": "tab\\tx.png", "new\nline.png": "new\\nline.png"}
    names |= {"back\\slash.png": "back\\\\slash.png", "esc\x1b.png": "esc\\x1b.png"}
    names |= {os.fsdecode(b"byte\xff.png"): "byte\\xff.png", "plain é.png": "plain é.png"}
    for name in names:
        (folder / name).write_bytes(good.read_bytes())
    good.unlink()
    rc = main(["caption", str(folder), "--model", str(model_dir)])
    out = capsys.readouterr().out
    lines = [line.split("\t") for line in out.splitlines()]
    assert rc == 0 and all(len(fields) == 2 and fields[1] for fields in lines)
    shown = [os.path.basename(path) for path, _ in lines]
    assert shown == [names[name] for name in sorted(names)]
    rc = main(["caption", str(folder), "--model", str(model_dir), "--json"])
    records = _json_lines(capsys.readouterr().out)
    assert [os.path.basename(r["image"]) for r in records] == sorted(names)


def test_reader_closing_the_pipe_early_is_quiet(model_dir, tmp_path) -> None:
    """`finecap caption ... | head -1`: no BrokenPipeError traceback, exit 141 (as SIGPIPE)."""
    import subprocess
    import sys

    image = str(save_images(tmp_path, 1)[0])
    command = [sys.executable, "-m", "finecap.cli", "caption", *[image] * 200]
    command += ["--model", str(model_dir), "--batch-size", "1", "--beam-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / "stderr.txt").open("w+") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        first = child.stdout.readline()  # what `head -1` takes before it exits
        child.stdout.close()
        rc = child.wait(timeout=300)
        stderr.seek(0)
        err = stderr.read()
    assert first.startswith(image.encode() + b"\t")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == 141


# --------------------------------------------------------------------------- n-best, sampling


def test_n_best_prints_extra_lines_and_a_json_list(model_dir, tmp_path, capsys) -> None:
    paths = [str(p) for p in save_images(tmp_path, 2, size=40)]
    rc = main(["caption", *paths, "--model", str(model_dir), "--n-best", "3"])
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    assert [path for path, _ in lines] == [paths[0]] * 3 + [paths[1]] * 3  # best first
    captioner = Captioner.from_pretrained(model_dir)
    ranked = captioner(paths, decoding=DecodingConfig(beam_size=3, n_best=3))
    assert [text for _, text in lines] == [c.text for r in ranked for c in [r, *r.alternatives]]
    rc = main(["caption", *paths, "--model", str(model_dir), "--n-best", "4", "--json"])
    records = _json_lines(capsys.readouterr().out)
    assert rc == 0 and all(len(r["captions"]) == 4 for r in records)  # --beam-size grew to 4
    assert all(r["captions"][0] == r["caption"] for r in records)


def test_sampling_flags_are_seeded_and_match_the_api(model_dir, tmp_path, capsys) -> None:
    paths = [str(p) for p in save_images(tmp_path, 3, size=40)]
    flags = ["--sample", "--n-best", "2", "--temperature", "1.5", "--top-k", "8", "--top-p", "0.95"]
    flags += ["--batch-size", "2", "--json", "--model", str(model_dir)]

    def run(seed: int) -> list[list[str]]:
        assert main(["caption", *paths, *flags, "--seed", str(seed)]) == 0
        return [r["captions"] for r in _json_lines(capsys.readouterr().out)]

    first = run(7)
    assert first == run(7) and first != run(8)
    # Batches draw on from one generator: the same as one API call over all the images.
    sampling = SamplingConfig(n=2, temperature=1.5, top_k=8, top_p=0.95)
    captions = Captioner.from_pretrained(model_dir)(paths, sampling=sampling, seed=7, batch_size=2)
    assert first == [[c.text for c in [r, *r.alternatives]] for r in captions]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "2"], "--temperature: only with --sample"),
        (["--top-k", "3", "--seed", "1"], "--top-k, --seed: only with --sample"),
        (["--sample", "--beam-size", "2"], "--beam-size is for beam search"),
        (["--sample", "--block-trigrams", "True"], "--block-trigrams is for beam search"),
        (["--n-best", "4", "--beam-size", "2"], "--n-best 4 is more than --beam-size 2"),
        (["--out", "preds.json"], "--out: only with --dataset"),
        (["--allow-outside-root"], "--allow-outside-root: only with --dataset"),
    ],
)
def test_flags_that_do_not_fit_together_exit_2(model_dir, tmp_path, capsys, flags, message):
    image = str(save_images(tmp_path, 1)[0])
    rc = main(["caption", image, "--model", str(model_dir), *flags])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err.count("\n") == 1 and message in out.err


# --------------------------------------------------------------------------- --dataset, --out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A scenes world of 20 images (2 val, 2 test); returns its dataset.json."""
    return generate_world(tmp_path_factory.mktemp("world"), 20, seed=0, image_size=48)


def test_dataset_split_to_predictions_that_evaluate_reads(model_dir, world, tmp_path, capsys):
    out = tmp_path / "preds.json"
    model = ["--model", str(model_dir)]
    rc = main(["caption", "--dataset", str(world.parent), "--out", str(out), "--json", *model])
    records = _json_lines(capsys.readouterr().out)
    corpus = load_corpus(world)
    test = corpus.split("test")
    assert rc == 0
    assert [r["image_id"] for r in records] == [r.image_id for r in test]
    assert [r["image"] for r in records] == [str(corpus.image_path(r)) for r in test]
    assert load_predictions(out) == {r["image_id"]: r["caption"] for r in records}
    evaluation = evaluate(EvaluationConfig(predictions=[out], dataset=world, metrics=["BLEU-4"]))
    assert 0.0 <= evaluation.result.systems["preds"]["BLEU-4"] <= 1.0
    rc = main(["caption", "--dataset", str(world), "--split", "val", "--out", str(out), *model])
    assert rc == 0 and set(load_predictions(out)) == {r.image_id for r in corpus.split("val")}


def test_given_paths_carry_the_dataset_image_ids(model_dir, world, tmp_path, capsys) -> None:
    record = load_corpus(world).split("test")[0]
    spelled = str(world.parent / "images" / ".." / "images" / Path(record.path).name)
    stranger = str(save_images(tmp_path, 1)[0])
    out = tmp_path / "preds.json"
    flags = ["--dataset", str(world), "--json", "--out", str(out), "--model", str(model_dir)]
    rc = main(["caption", spelled, stranger, *flags])
    captured = capsys.readouterr()
    records = _json_lines(captured.out)
    assert rc == 0
    assert records[0]["image_id"] == record.image_id and "image_id" not in records[1]
    assert load_predictions(out) == {record.image_id: records[0]["caption"]}
    assert "1 of the 2 images are not in" in captured.err


def test_dataset_images_must_stay_inside_the_root(model_dir, world, tmp_path, capsys) -> None:
    data = json.loads(world.read_text())
    entry = next(e for e in data["images"] if e["split"] == "test")
    source = world.parent / entry["filepath"] / entry["filename"]
    (tmp_path / "outside.png").write_bytes(source.read_bytes())
    entry["filepath"], entry["filename"] = "", "../outside.png"  # beside the planted folder
    planted = tmp_path / "planted" / "dataset.json"
    planted.parent.mkdir()
    planted.write_text(json.dumps(data))
    (planted.parent / "images").symlink_to(world.parent / "images")
    out = tmp_path / "preds.json"
    flags = ["--dataset", str(planted), "--out", str(out), "--model", str(model_dir)]
    rc = main(["caption", *flags])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and not out.exists()  # refused before captioning
    assert captured.err.count("\n") == 1 and "--allow-outside-root" in captured.err
    assert main(["caption", *flags, "--allow-outside-root"]) == 0
    assert len(load_predictions(out)) == 2


def test_dataset_inputs_that_do_not_fit_exit_2(model_dir, world, tmp_path, capsys) -> None:
    before = world.read_text()
    for flags, message in [
        (["--out", str(world)], "is an input"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--split", "dev"], "unknown split 'dev'"),
        (["--split", "restval"], "the restval split is empty"),
    ]:
        rc = main(["caption", "--dataset", str(world), "--model", str(model_dir), *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and message in err, flags
    assert world.read_text() == before
    rc = main(["caption", "--dataset", str(tmp_path / "nowhere"), "--model", str(model_dir)])
    assert rc == 2 and "nowhere" in capsys.readouterr().err


def test_the_bundled_model_says_what_it_is(capsys) -> None:
    """Which model captioned, on stderr: the bundled one knows only the scenes world."""
    example = Path(__file__).parents[1] / "examples" / "scene_0.png"
    assert main(["caption", str(example)]) == 0
    err = capsys.readouterr().err
    assert (
        "using the bundled default model (SCST 2 × clip_s + 1 × cider + 30 × contrastive + RL on"
        " ground truth (partial_descriptions), synthetic scenes world only; beam search, 3 beams,"
        " no trigram repeated)" in err
    )
    assert main(["caption", str(example), "--model", "mle"]) == 0
    err = capsys.readouterr().err
    assert (
        "using the bundled mle model (MLE, synthetic scenes world only; beam search, 3 beams)"
        in err
    )
    for folder in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR.parent / "mle_model"):
        card = (folder / "README.md").read_text()
        assert "Synthetic scenes world only — not for photographs" in card


def test_a_models_own_decoding_is_the_default_and_flags_replace_it(
    model_dir, tmp_path, capsys
) -> None:
    own = DecodingConfig(beam_size=2, block_trigrams=True)
    captioner = Captioner.from_pretrained(model_dir)
    captioner.decoding = own
    captioner.save_pretrained(tmp_path / "own")
    images = [str(p) for p in save_images(tmp_path / "imgs", 2, size=40)]
    for flags, decoding, said in [
        ([], own, "beam search, 2 beams, no trigram repeated)"),
        (["--block-trigrams", "False"], own.replace(block_trigrams=False), "beam search, 2 beams)"),
        (["--beam-size", "1"], own.replace(beam_size=1), "greedy, no trigram repeated)"),
    ]:
        assert main(["caption", *images, "--model", str(tmp_path / "own"), *flags]) == 0
        out, err = capsys.readouterr()
        want = [c.text for c in captioner.caption(images, decoding=decoding)]
        assert [line.split("\t")[1] for line in out.splitlines()] == want, flags
        assert said in err, (flags, err)


def test_the_cli_decodes_as_the_model_ships(tmp_path, capsys) -> None:
    """A model that blocks trigrams, and says 6 words at most, is captioned so without flags."""
    captioner = make_repetitive(make_tiny_captioner("lstm", max_len=8))
    captioner.decoding = DecodingConfig(beam_size=3, block_trigrams=True, max_len=6)
    captioner.save_pretrained(tmp_path / "blocks")
    images = [str(p) for p in save_images(tmp_path / "imgs", 3, size=40)]

    def texts(*flags: str) -> list[str]:
        assert main(["caption", *images, "--model", str(tmp_path / "blocks"), *flags]) == 0
        return [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]

    shipped = texts()
    assert not any(repeats_a_trigram(text) for text in shipped), shipped
    assert all(len(text.split()) == 6 for text in shipped)
    assert all(repeats_a_trigram(text) for text in texts("--block-trigrams", "False"))
    assert all(len(text.split()) == 8 for text in texts("--max-len", "8"))
    assert all(len(text.split()) == 6 for text in texts("--sample", "--seed", "0"))


def test_bundled_names_resolve_unless_a_folder_has_that_name(
    model_dir, tmp_path, monkeypatch, capsys
) -> None:
    """`--model mle` is a bundled model by name; a folder `mle` in the working directory wins."""
    import finecap.captioner as captioner_module

    monkeypatch.setitem(captioner_module.BUNDLED_MODELS, "mle", model_dir)
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    assert main(["caption", str(image), "--model", "mle"]) == 0
    assert "using the bundled mle model" in capsys.readouterr().err
    (tmp_path / "mle").mkdir()  # not a captioner folder: it is what --model mle means now
    assert main(["caption", str(image), "--model", "mle"]) == 2
    assert "mle: not a finecap captioner folder" in capsys.readouterr().err
