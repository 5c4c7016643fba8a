"""`finecap caption`: bad files reported and the rest captioned, folders, JSON lines, attention
figures, and clear exits for a missing model."""

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
from finecap.captioner import Caption, Captioner
from finecap.cli import main
from finecap.data.images import load_image
from helpers.tiny_captioners import make_talkative, make_tiny_captioner, save_images


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
