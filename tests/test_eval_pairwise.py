"""Human pairwise evaluation: page building, un-blinding tally, and the page driven in headless
Chromium as an annotator would use it (needs Debian `chromium` + `chromium-driver`, pip
`selenium`)."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from PIL import Image

from finecap.cli import main
from finecap.pairwise import CRITERIA, JUDGMENTS_FORMAT, format_tally, make_items, tally


@pytest.fixture()
def two_systems(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    a, b = [], []
    for i in range(6):
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(images / f"COCO_val2014_{i:012d}.jpg")
        a.append({"image_id": i, "caption": f"system a caption {i} </script><!-- &amp;"})
        b.append({"image_id": i, "caption": f"system b caption {i}"})
    (tmp_path / "A.json").write_text(json.dumps(a))
    (tmp_path / "B.json").write_text(json.dumps(b))
    return tmp_path


def test_items_are_seeded_and_blind(two_systems):
    a = {i: f"a{i}" for i in range(6)}
    b = {i: f"b{i}" for i in range(6)}
    paths = {i: p for i, p in enumerate(sorted((two_systems / "images").iterdir()))}
    items = make_items(a, b, paths, n=4, seed=3)
    assert [it.image_id for it in items] == [it.image_id for it in make_items(a, b, paths, 4, 3)]
    assert len(items) == 4 and {it.a_side for it in make_items(a, b, paths, 6, 0)} == {
        "left",
        "right",
    }
    for it in items:
        shown_a = it.left if it.a_side == "left" else it.right
        assert shown_a == f"a{it.image_id}" and it.image_uri.startswith("data:image/jpeg;base64,")


def test_tally_unblinds():
    doc = {
        "format": JUDGMENTS_FORMAT,
        "a": "A",
        "b": "B",
        "items": [
            {"item": 0, "a_side": "left", "choices": dict.fromkeys(CRITERIA, "left")},
            {"item": 1, "a_side": "right", "choices": dict.fromkeys(CRITERIA, "left")},
            {
                "item": 2,
                "a_side": "right",
                "choices": {**dict.fromkeys(CRITERIA), "overall": "tie"},
            },
        ],
    }
    t = tally([doc])
    assert t.counts["overall"] == {"A": 1, "B": 1, "tie": 1}
    assert t.counts["object"] == {"A": 1, "B": 1, "tie": 0}  # unanswered left out
    assert t.percentages()["object"]["A"] == 50.0
    assert "A wins" in format_tally(t)


def test_make_cli_errors(two_systems, capsys):
    out = two_systems / "page.html"
    assert main(["pairwise", "make", "--a", str(two_systems / "A.json"), "--b",
                 str(two_systems / "B.json"), "--out", str(out)]) == 2  # fmt: skip
    assert "--images" in capsys.readouterr().err
    (two_systems / "images" / "COCO_val2014_000000000003.jpg").unlink()
    args = ["pairwise", "make", "--a", str(two_systems / "A.json"), "--b"]
    args += [
        str(two_systems / "B.json"),
        "--images",
        str(two_systems / "images"),
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "1 images not found (image_id 3" in capsys.readouterr().err


def test_cli_help_and_bad_values(two_systems, capsys):
    for command in ("make", "tally"):
        assert main(["pairwise", command, "--help"]) == 0
    assert "--images" in capsys.readouterr().out
    out = two_systems / "page.html"
    args = ["pairwise", "make", "--a", str(two_systems / "A.json"), "--b"]
    args += [str(two_systems / "B.json"), "--images", str(two_systems / "images"), "--out"]
    assert main([*args, str(out), "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"(^|[\s│-])n\b", err, re.M) and "greater than or equal to 1" in err
    assert not out.exists()
    assert main([*args, str(out), "--n", "2"]) == 0 and out.is_file()  # --images without --dataset
    assert main(["pairwise", "tally"]) == 2  # no FILE
    assert re.search(r"judgments", capsys.readouterr().err)
    (two_systems / "bad.json").write_text("{}")
    assert main(["pairwise", "tally", str(two_systems / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a finecap pairwise judgments file" in err


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(_chromium() is None, reason="needs Debian chromium + chromium-driver")
def test_page_in_headless_chromium(two_systems, tmp_path, capsys):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs pip selenium")
    from selenium.webdriver.common.by import By

    page = two_systems / "page.html"
    a = f"modelA={two_systems / 'A.json'}"
    args = ["pairwise", "make", "--a", a, "--b", str(two_systems / "B.json"), "--images"]
    args += [str(two_systems / "images"), "--n", "5", "--seed", "1", "--out", str(page)]
    assert main(args) == 0
    data = json.loads(page.read_text().split("id='pairwise-data'>")[1].split("</script>")[0])

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.get(page.as_uri())
        assert driver.find_element(By.ID, "progress").text == "0 of 5 images done"
        assert "</script><!-- &amp;" in driver.find_element(By.ID, "item-0").text  # escaped
        # Annotator prefers system A on every criterion of every image, except ties on "relation"
        # of the first image; they see only "Caption 1"/"Caption 2", so click by A's hidden side.
        for it in data["items"]:
            for c in CRITERIA:
                choice = "tie" if (it["item"] == 0 and c == "relation") else it["a_side"]
                driver.find_element(By.ID, f"i{it['item']}-{c}-{choice}").click()
        driver.find_element(By.ID, "annotator").send_keys("tester")
        assert driver.find_element(By.ID, "progress").text == "5 of 5 images done"
        driver.find_element(By.ID, "save").click()
        saved = driver.find_element(By.ID, "judgments-json").get_attribute("value")
        for _ in range(50):  # the Blob download lands asynchronously
            if (downloads / "judgments.json").exists():
                break
            time.sleep(0.1)
    finally:
        driver.quit()

    doc = json.loads(saved)
    assert doc["annotator"] == "tester" and doc["a"] == "modelA" and doc["b"] == "B"
    judgments = tmp_path / "judgments-1.json"
    judgments.write_text(saved)
    downloaded = downloads / "judgments.json"  # the Blob download link works too
    assert json.loads(downloaded.read_text()) == doc

    capsys.readouterr()
    assert main(["pairwise", "tally", str(tmp_path / "judgments-*.json")]) == 0
    out = capsys.readouterr().out
    assert "A = modelA, B = B" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert rows["overall"] == ["100.0%", "0.0%", "0.0%", "5"]
    assert rows["relation"] == ["80.0%", "0.0%", "20.0%", "5"]


def _judgments(a="A", b="B", **item_changes) -> dict:
    items = [
        {"item": 0, "image_id": 0, "a_side": "left", "choices": dict.fromkeys(CRITERIA, "left")},
        {"item": 1, "image_id": 1, "a_side": "right", "choices": dict.fromkeys(CRITERIA, "tie")},
    ]
    items[1].update(item_changes)
    return {"format": JUDGMENTS_FORMAT, "a": a, "b": b, "seed": 0, "items": items}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1 col 2"),
        (b"\xff\xfe", "not UTF-8 text"),
        ({**_judgments(), "items": {"0": {}}}, '"items" must be a list'),
        ({**_judgments(), "a": None}, '"a" (a system name) must be a string'),
        ({**_judgments(), "items": [3]}, "items[0]: expected an object"),
        (_judgments(item="1"), "items[1]: \"item\" must be an integer, got '1'"),
        (_judgments(item=0), "items[1] (item 0): item 0 is judged twice in this file"),
        (_judgments(choices=None), 'items[1] (item 1): "choices" must be an object'),
        (_judgments(choices=["left"]), 'items[1] (item 1): "choices" must be an object'),
        (
            _judgments(a_side="up"),
            'items[1] (item 1): "a_side" must be "left" or "right", got \'up\'',
        ),
        (_judgments(choices={"overall": "A"}), "items[1] (item 1): unknown choice 'A' for overall"),
        (_judgments(choices={"colour": "tie"}), "items[1] (item 1): unknown criterion 'colour'"),
    ],
)
def test_tally_malformed_judgments_name_file_and_fault(tmp_path, capsys, content, message):
    path = tmp_path / "judged.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert main(["pairwise", "tally", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"finecap pairwise tally: error: {path}: ") and message in err, err


def test_tally_unreadable_files_and_different_systems(tmp_path, capsys):
    assert main(["pairwise", "tally", str(tmp_path / "none.json")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    assert main(["pairwise", "tally", str(tmp_path)]) == 2
    assert f"{tmp_path}: cannot read it" in capsys.readouterr().err
    (tmp_path / "ab.json").write_text(json.dumps(_judgments()))
    (tmp_path / "ac.json").write_text(json.dumps(_judgments(b="C")))
    assert main(["pairwise", "tally", str(tmp_path / "ab.json"), str(tmp_path / "ac.json")]) == 2
    err = capsys.readouterr().err
    assert "compare different systems" in err and "ab.json: A = A, B = B" in err
    assert "ac.json: A = A, B = C" in err


def test_tally_counts_a_file_given_twice_once(tmp_path, capsys):
    first = tmp_path / "judgments-1.json"
    first.write_text(json.dumps(_judgments()))
    assert main(["pairwise", "tally", str(first)]) == 0
    once = capsys.readouterr().out
    assert "overall" in once and once.splitlines()[2].split()[-1] == "2"  # two items
    copy = tmp_path / "copy.json"  # the same judgments under another name, other layout
    copy.write_text(json.dumps(_judgments(), indent=4))
    other_spelling = str(tmp_path / ".." / tmp_path.name / first.name)
    given = [str(first), other_spelling, str(tmp_path / "judgments-*.json"), str(copy)]
    assert main(["pairwise", "tally", *given]) == 0
    out = capsys.readouterr()
    assert out.out == once
    assert f"{other_spelling}: given twice (also as {first}); counted once" in out.err
    assert f"{copy}: the same judgments as {first}; counted once" in out.err
    second = tmp_path / "judgments-2.json"  # a second annotator: counted
    second.write_text(json.dumps({**_judgments(), "annotator": "someone else"}))
    assert main(["pairwise", "tally", str(tmp_path / "judgments-*.json")]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[-1] == "4"


def test_make_refuses_images_outside_the_root(two_systems, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = two_systems / "images" / "COCO_val2014_000000000002.jpg"
    secret = outside / "secret.jpg"
    linked.rename(secret)
    linked.symlink_to(secret)
    out = two_systems / "page.html"
    args = ["pairwise", "make", "--a", str(two_systems / "A.json"), "--b"]
    args += [str(two_systems / "B.json"), "--images", str(two_systems / "images")]
    args += ["--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "COCO_val2014_000000000002.jpg (image_id 2)" in err
    assert "goes through a symlink to" in err and "--allow-outside-root" in err
    assert not out.exists()
    assert main([*args, "--allow-outside-root"]) == 0 and out.is_file()
    out.unlink()
    capsys.readouterr()

    entries = [{"filename": f"COCO_val2014_{i:012d}.jpg", "filepath": "images", "imgid": i,
                "split": "test", "sentences": [{"raw": "x"}]} for i in range(6)]  # fmt: skip
    entries[4]["filepath"] = str(outside)  # absolute
    (two_systems / "dataset.json").write_text(json.dumps({"images": entries}))
    args = ["pairwise", "make", "--a", str(two_systems / "A.json"), "--b"]
    args += [str(two_systems / "B.json"), "--dataset", str(two_systems / "dataset.json")]
    args += ["--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{two_systems / 'dataset.json'}: image_id " in err and "--allow-outside-root" in err
    assert not out.exists()


def test_make_refuses_an_out_that_is_an_input(two_systems, capsys):
    a = two_systems / "A.json"
    before = a.read_bytes()
    args = ["pairwise", "make", "--a", str(a), "--b", str(two_systems / "B.json")]
    args += ["--images", str(two_systems / "images")]
    assert main([*args, "--out", str(a)]) == 2
    assert f"--out {a}: is an input" in capsys.readouterr().err and a.read_bytes() == before
    assert main([*args, "--out", str(two_systems)]) == 2
    assert "is a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- the ground-truth oracle

ORACLE_SCENES = {  # image_id -> (background, objects (shape, colour, size, pattern), relations)
    1: ("grass", [("star", "red", "large", "striped"), ("circle", "blue", "small", "plain")],
        [[0, "left of", 1]]),
    2: ("sand", [("square", "red", "large", "plain"), ("circle", "yellow", "small", "dotted")],
        [[0, "left of", 1], [0, "next to", 1]]),
    3: ("snow", [("heart", "pink", "small", "plain"), ("heart", "purple", "large", "striped"),
                 ("hexagon", "black", "large", "dotted")], [[0, "left of", 1], [1, "above", 2]]),
    4: ("grass", [("circle", "purple", "small", "plain")], []),
}  # fmt: skip
# (image_id, A's side, left caption, right caption); A = mle, B = scst.
ORACLE_ITEMS = [
    (1, "left", "a red star", "a red star left of a blue circle on the grass"),
    (2, "right", "a green box on the snow", "a red box"),
    (3, "left", "three hearts in the snow", "two hearts and a hexagn"),
    (4, "right", "a purple object in the grass", "a purple ball in the grass"),
]


def _scene_dict(image_id: int) -> dict:
    background, objects, relations = ORACLE_SCENES[image_id]
    keys = ("shape", "color", "size", "pattern")
    objects = [{**dict(zip(keys, o, strict=True)), "bbox": [0, 0, 9, 9]} for o in objects]
    return {"background": background, "objects": objects, "relations": relations}


def _scene_dataset(path):
    entries = [
        {"filename": f"{i}.png", "filepath": "images", "imgid": i, "split": "test",
         "sentences": [{"raw": "x"}], "scene": _scene_dict(i)}
        for i in ORACLE_SCENES
    ]  # fmt: skip
    path.write_text(json.dumps({"images": entries}))


def test_oracle_choices_by_criterion():
    from finecap.scenes.oracle import CRITERION_KINDS, oracle_choices
    from finecap.scenes.world import Scene

    assert set(CRITERION_KINDS) == set(CRITERIA)
    scene = Scene.from_dict(_scene_dict(2))
    # left: box right, green wrong, snow wrong (net -1); right: box and red right (net 2)
    assert oracle_choices("a green box on the snow", "a red box", scene) == {
        "overall": "right",
        "background": "right",
        "object": "tie",
        "attribute": "right",
        "relation": "tie",
    }


def test_oracle_judge_and_tally_by_hand(tmp_path, capsys):
    from finecap.pairwise import PairItem, load_judgments, write_page

    items = [PairItem(k, i, None, left, right, side)
             for k, (i, side, left, right) in enumerate(ORACLE_ITEMS)]  # fmt: skip
    write_page(tmp_path / "page.html", items, "mle", "scst", 0)
    _scene_dataset(tmp_path / "dataset.json")
    out = tmp_path / "oracle.json"
    args = ["pairwise", "judge", "--page", str(tmp_path / "page.html")]
    args += ["--dataset", str(tmp_path / "dataset.json"), "--out", str(out)]
    assert main(args) == 2 and "--oracle" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--oracle"]) == 0
    doc = load_judgments(out)  # the format a person's judgments have
    assert [it["a_side"] for it in doc["items"]] == [side for _, side, _, _ in ORACLE_ITEMS]
    # Worked by hand, (correct - wrong) per caption:
    # 1: B (right) wins everything: 2 objects, 2 colours, the relation, the background.
    # 2: A (right) wins overall, background (0 vs -1 for "snow"), attribute (red vs green);
    #    both name the box (object tie), no relation.
    # 3: A (left) "three hearts in the snow": object 2 - 1 = 1, background 1; B "two hearts
    #    and a hexagn": object 3. B wins overall (3 vs 2) and object, A the background.
    # 4: A (right) names the ball: wins overall (3 vs 2) and object; purple and grass tie.
    t = tally([doc])
    assert t.counts == {
        "overall": {"A": 2, "B": 2, "tie": 0},
        "background": {"A": 2, "B": 1, "tie": 1},
        "object": {"A": 1, "B": 2, "tie": 1},
        "attribute": {"A": 1, "B": 1, "tie": 2},
        "relation": {"A": 0, "B": 1, "tie": 3},
    }
    assert main(["pairwise", "tally", str(out)]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["relation"] == ["0.0%", "25.0%", "75.0%", "4"]


def test_oracle_judge_errors(tmp_path, capsys):
    from finecap.pairwise import PairItem, write_page

    _scene_dataset(tmp_path / "dataset.json")
    write_page(tmp_path / "page.html", [PairItem(0, 9, None, "a", "b", "left")], "a", "b", 0)
    args = ["pairwise", "judge", "--oracle", "--dataset", str(tmp_path / "dataset.json")]
    args += ["--out", str(tmp_path / "out.json"), "--page"]
    assert main([*args, str(tmp_path / "page.html")]) == 2
    assert "no ground-truth scene (image_id 9" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "dataset.json")]) == 2
    assert "not a page of `finecap pairwise make`" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
