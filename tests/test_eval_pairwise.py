"""Human pairwise evaluation: the sample, the blind page and its key, un-blinding tally
(sign test, Fleiss' kappa, per annotator), and the page driven in headless Chromium as an
annotator would use it (needs Debian `chromium` + `chromium-driver`, pip `selenium`)."""

from __future__ import annotations

import json
import re
import time

import pytest
from PIL import Image

from finecap.cli import main
from finecap.pairwise import (
    CRITERIA,
    JUDGMENTS_FORMAT,
    PairItem,
    Sample,
    make_sample,
    read_key,
    read_page,
    write_study,
)
from finecap.pairwise_tally import fleiss_kappa, format_tally, sign_test, tally
from helpers.browser import headless_chrome, needs_chromium


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


def _make(folder, *extra: str) -> list[str]:
    """`finecap pairwise make` of the two systems, named sysalpha and sysbeta."""
    return ["pairwise", "make", "--a", f"sysalpha={folder / 'A.json'}", "--b",
            f"sysbeta={folder / 'B.json'}", *extra]  # fmt: skip


def _rows(out: str) -> dict[str, list[str]]:
    """The criterion rows of `format_tally`'s table: criterion -> its cells."""
    rows = [line.split() for line in out.splitlines()]
    return {row[0]: row[1:] for row in rows if row and row[0] in CRITERIA}


def test_sample_is_seeded_and_sets_identical_pairs_apart(two_systems):
    a = {i: f"a{i}" for i in range(6)}
    b = {i: f"b{i}" for i in range(6)}
    b[2] = " A2 "  # the same caption up to case and spacing
    paths = {i: p for i, p in enumerate(sorted((two_systems / "images").iterdir()))}
    sample = make_sample(a, b, paths, n=6, seed=3)
    assert sample == make_sample(a, b, paths, 6, 3)
    assert sample.identical == {2: "a2"} and len(sample.items) == 5
    assert [it.item for it in sample.items] == [1, 2, 3, 4, 5]
    assert {it.a_side for it in sample.items} == {"left", "right"}
    for it in sample.items:
        shown_a = it.left if it.a_side == "left" else it.right
        assert shown_a == f"a{it.image_id}" and it.image_uri.startswith("data:image/jpeg;base64,")
    text_only = make_sample(a, b, None, n=6, seed=3)
    assert [it.image_uri for it in text_only.items] == [None] * 5


def test_page_is_blind_and_the_key_beside_it(two_systems, capsys):
    b = json.loads((two_systems / "B.json").read_text())
    b[4]["caption"] = "System A caption 4 </script><!-- &amp;"  # = A's, up to case
    (two_systems / "B.json").write_text(json.dumps(b))
    page, key = two_systems / "pairwise.html", two_systems / "pairwise.key.json"
    assert (
        main(_make(two_systems, "--images", str(two_systems / "images"), "--out", str(page))) == 0
    )
    out = capsys.readouterr().out
    assert "5 images (+ 1 identical pairs, ties), A = sysalpha, B = sysbeta" in out
    assert f"key (keep it from the annotators; tally needs it): {key}" in out
    text = page.read_text()
    for secret in ("sysalpha", "sysbeta", "a_side", "A.json", "B.json"):
        assert secret not in text
    assert "1 more sampled images got the same caption from both systems" in text
    data = read_page(page)
    assert data["key"] == "pairwise.key.json" and data["identical"] == 1
    assert 4 not in [it["image_id"] for it in data["items"]] and len(data["items"]) == 5
    assert text.count("<img src='data:image/jpeg;base64,") == 5
    k = json.loads(key.read_text())
    assert (k["a"], k["b"], k["page_id"]) == ("sysalpha", "sysbeta", data["page_id"])
    assert k["identical"] == [{"image_id": 4, "caption": "system a caption 4 </script><!-- &amp;"}]
    for shown, keyed in zip(data["items"], k["items"], strict=True):  # un-blinds each item
        a_caption = shown["left"] if keyed["a_side"] == "left" else shown["right"]
        assert keyed["item"] == shown["item"] and a_caption.startswith("system a caption")

    # Made again the same: the same page and key; another sample may not overwrite the key.
    before = key.read_bytes()
    assert (
        main(_make(two_systems, "--images", str(two_systems / "images"), "--out", str(page))) == 0
    )
    assert key.read_bytes() == before
    args = _make(two_systems, "--images", str(two_systems / "images"), "--out", str(page))
    assert main([*args, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert f"{key}: exists and is not this page's key" in err and key.read_bytes() == before


def test_text_only_page_without_images(two_systems, capsys):
    page = two_systems / "page.html"
    key = two_systems / "k.json"
    assert main(_make(two_systems, "--out", str(page), "--n", "3", "--key", str(key))) == 0
    assert "text only (no --images or --dataset)" in capsys.readouterr().out
    text = page.read_text()
    assert "<img" not in text and "Text only: the images are not on this page" in text
    for it in read_page(page)["items"]:
        assert f"image <code>{it['image_id']}</code>" in text
    assert read_key(key).page_id == read_page(page)["page_id"]


def _study(folder, a_sides: list[str], identical: int = 0) -> tuple:
    """A text-only page of len(a_sides) items (numbered from 1) and its key, in `folder`."""
    items = [PairItem(k + 1, 10 + k, None, f"left {k}", f"right {k}", side)
             for k, side in enumerate(a_sides)]  # fmt: skip
    same = {100 + k: f"same {k}" for k in range(identical)}
    page, key = folder / "pairwise.html", folder / "pairwise.key.json"
    write_study(page, key, Sample(items, same, seed=0), "mle", "scst")
    return page, key


def _answers(page, annotator: str, choices: dict[int, dict]) -> dict:
    """A judgments document of the page, as its Save button writes it."""
    data = read_page(page)
    items = [{"item": it["item"], "choices": {c: choices.get(it["item"], {}).get(c)
              for c in CRITERIA}} for it in data["items"]]  # fmt: skip
    return {"format": JUDGMENTS_FORMAT, "page_id": data["page_id"], "key": data["key"],
            "annotator": annotator, "saved": "2024-01-01T00:00:00Z", "items": items}  # fmt: skip


def test_tally_unblinds_with_the_key_by_hand(tmp_path, capsys):
    page, key = _study(tmp_path, ["left", "right", "left", "right"], identical=1)
    choices = {
        1: dict.fromkeys(CRITERIA, "left"),  # A is left: A
        2: dict.fromkeys(CRITERIA, "left"),  # A is right: B
        3: dict.fromkeys(CRITERIA, "tie"),
        4: {**dict.fromkeys(CRITERIA, "right"), "relation": None},  # A; relation unanswered
    }
    judged = tmp_path / "judgments-ann.json"
    judged.write_text(json.dumps(_answers(page, "ann", choices)))
    t = tally(read_key(key), {str(judged): json.loads(judged.read_text())})
    # + the identical pair: a tie on every criterion.
    assert t.counts["overall"] == {"A": 2, "B": 1, "tie": 2}
    assert t.counts["relation"] == {"A": 1, "B": 1, "tie": 2}  # unanswered: left out
    assert (t.sign["overall"].wins, t.sign["overall"].losses) == (2, 1)
    assert t.sign["overall"].p_value == 1.0
    assert t.agreement["overall"].kappa is None  # one annotator
    (row,) = t.annotators
    assert (row.annotator, row.unfinished, row.counts) == ("ann", [4], t.counts)
    assert main(["pairwise", "tally", str(judged)]) == 0  # the key beside the judgments
    out = capsys.readouterr().out
    assert out.startswith("A = mle, B = scst: 4 items judged by 1 annotator; 1 sampled")
    assert _rows(out)["overall"] == ["40.0%", "20.0%", "40.0%", "5", "2:1", "1", "-"]
    assert _rows(out)["relation"] == ["25.0%", "25.0%", "50.0%", "4", "1:1", "1", "-"]
    assert "kappa: needs two or more annotators" in out
    assert "unfinished, ann: item 4" in out
    assert re.search(r"^ann +3 +1 +2:1:2 .*judgments-ann\.json$", out, re.M)
    assert format_tally(t) + "\n" == out


def _vote(a_side: str, vote: str) -> str:
    """The side an annotator clicks to vote A, B or tie."""
    return {"A": a_side, "B": "right" if a_side == "left" else "left", "tie": "tie"}[vote]


def test_tally_three_annotators_kappa_sign_and_rows(tmp_path, capsys):
    sides = ["left", "right", "left", "right"]
    page, key = _study(tmp_path, sides, identical=1)
    votes = {"ann": "AABA", "bob": "ABB.", "cid": "A==B"}  # per item 1..4; "=" tie, "." none
    files = []
    for name, v in votes.items():
        choices = {k + 1: dict.fromkeys(CRITERIA, _vote(sides[k], v[k].replace("=", "tie")))
                   for k in range(4) if v[k] != "."}  # fmt: skip
        files.append(tmp_path / f"judgments-{name}.json")
        files[-1].write_text(json.dumps(_answers(page, name, choices)))
    docs = {str(f): json.loads(f.read_text()) for f in files}
    t = tally(read_key(key), docs)
    # Items 1-3 answered by all three: A/B/tie counts [3,0,0], [1,1,1], [0,2,1].
    # P = (1 + 0 + 1/3) / 3 = 4/9; shares 4/9, 3/9, 2/9: Pe = 29/81; kappa = (36-29)/(81-29).
    agreement = t.agreement["overall"]
    assert agreement.items == [1, 2, 3] and agreement.left_out == [4]
    assert agreement.kappa == pytest.approx(7 / 52)
    # Item 1 to A (3:0), item 3 to B (2:1 with a tie), items 2 and 4 split: dropped.
    assert (t.sign["overall"].wins, t.sign["overall"].losses) == (1, 1)
    # Pooled: A 3+1+1, B 1+2+1, tie 0+0+2 and the identical pair once per annotator.
    assert t.counts["overall"] == {"A": 5, "B": 4, "tie": 5}
    assert [(a.annotator, a.unfinished) for a in t.annotators] == [
        ("ann", []),
        ("bob", [4]),
        ("cid", []),
    ]
    assert main(["pairwise", "tally", str(tmp_path / "judgments-*.json")]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["overall"][-1] == "0.135"
    assert "kappa: Fleiss' over the 3 items all 3 annotators answered (not item 4)" in out
    for name, finished, unfinished in [("ann", 4, 0), ("bob", 3, 1), ("cid", 4, 0)]:
        assert re.search(rf"^{name} +{finished} +{unfinished} ", out, re.M)
    assert "unfinished, bob: item 4" in out


def test_fleiss_kappa_worked_example():
    # Wikipedia's worked example (14 raters, 10 subjects, 5 categories): P = 0.378,
    # Pe = 0.213, kappa = 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([[2, 0], [0, 2]]) == 1.0  # perfect agreement
    assert fleiss_kappa([[2, 0], [2, 0]]) is None and fleiss_kappa([]) is None
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0], [1, 0]])


def test_sign_test_matches_scipy():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    assert sign_test(0, 6) == 2 / 64 and sign_test(0, 0) is None
    for wins, losses in [(7, 2), (5, 5), (12, 3), (1, 0), (30, 18)]:
        assert sign_test(wins, losses) == pytest.approx(binomtest(wins, wins + losses).pvalue)


def test_tally_refuses_another_pages_judgments_and_a_bad_key(tmp_path, capsys):
    page, key = _study(tmp_path, ["left", "right"])
    doc = _answers(page, "ann", {1: dict.fromkeys(CRITERIA, "tie")})
    judged = tmp_path / "judgments.json"
    judged.write_text(json.dumps({**doc, "page_id": "0123456789abcdef"}))
    assert main(["pairwise", "tally", str(judged)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{judged}: judges page 0123456789abcdef, but {key}" in err
    judged.write_text(json.dumps({**doc, "items": [{"item": 7, "choices": {}}]}))
    assert main(["pairwise", "tally", str(judged)]) == 2
    assert "item 7 is not on the page of" in capsys.readouterr().err
    judged.write_text(json.dumps(doc))
    missing = tmp_path / "nokey.json"
    assert main(["pairwise", "tally", str(judged), "--key", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{missing}: no such file" in err
    assert main(["pairwise", "tally", str(judged), "--key", str(judged)]) == 2
    err = capsys.readouterr().err
    assert f"{judged}: not a finecap pairwise key" in err and "; it is a judgments file" in err
    elsewhere = tmp_path / "sent"
    elsewhere.mkdir()
    (elsewhere / "j.json").write_text(json.dumps(doc))
    assert main(["pairwise", "tally", str(elsewhere / "j.json")]) == 2
    err = capsys.readouterr().err
    assert "pairwise.key.json (the key" in err and "pass --key FILE" in err
    assert main(["pairwise", "tally", str(elsewhere / "j.json"), "--key", str(key)]) == 0
    (elsewhere / "j.json").write_text(json.dumps({**doc, "key": None}))
    assert main(["pairwise", "tally", str(elsewhere / "j.json")]) == 2
    assert "the judgments name no key: pass --key FILE" in capsys.readouterr().err


def test_tally_counts_a_file_given_twice_once(tmp_path, capsys):
    page, _ = _study(tmp_path, ["left", "right"])
    doc = _answers(
        page, "", {1: dict.fromkeys(CRITERIA, "left"), 2: dict.fromkeys(CRITERIA, "tie")}
    )
    first = tmp_path / "judgments-1.json"
    first.write_text(json.dumps(doc))
    assert main(["pairwise", "tally", str(first)]) == 0
    once = capsys.readouterr().out
    assert _rows(once)["overall"][3] == "2"  # two items
    copy = tmp_path / "copy.json"  # the same answers under another name, saved later
    copy.write_text(json.dumps({**doc, "saved": "2024-02-02T00:00:00Z"}, indent=4))
    other_spelling = str(tmp_path / ".." / tmp_path.name / first.name)
    given = [str(first), other_spelling, str(tmp_path / "judgments-*.json"), str(copy)]
    assert main(["pairwise", "tally", *given]) == 0
    out = capsys.readouterr()
    assert out.out == once
    assert f"{other_spelling}: given twice (also as {first}); counted once" in out.err
    assert f"{copy}: the same judgments as {first}; counted once" in out.err
    second = tmp_path / "judgments-2.json"  # a second annotator: counted
    second.write_text(json.dumps({**doc, "annotator": "someone else"}))
    assert main(["pairwise", "tally", str(tmp_path / "judgments-*.json")]) == 0
    assert _rows(capsys.readouterr().out)["overall"][3] == "4"
    third = tmp_path / "judgments-3.json"  # the same annotator, other answers: refused
    third.write_text(json.dumps({**doc, "annotator": "someone else", "items": doc["items"][:1]}))
    assert main(["pairwise", "tally", str(tmp_path / "judgments-*.json")]) == 2
    err = capsys.readouterr().err
    assert f"{third} and {second} are both by annotator 'someone else'" in err


def test_make_cli_errors(two_systems, capsys):
    (two_systems / "images" / "COCO_val2014_000000000003.jpg").unlink()
    args = _make(two_systems, "--images", str(two_systems / "images"))
    assert main([*args, "--out", str(two_systems / "page.html")]) == 2
    err = capsys.readouterr().err
    assert "1 images not found (image_id 3" in err and "text only" in err
    same = json.loads((two_systems / "A.json").read_text())
    (two_systems / "B.json").write_text(json.dumps(same))
    assert main(_make(two_systems, "--out", str(two_systems / "page.html"))) == 2
    assert "all 6 sampled images have the same caption" in capsys.readouterr().err


def test_cli_help_and_bad_values(two_systems, capsys, monkeypatch):
    from finecap.commands.pairwise import COMMANDS

    for command, (options, _) in COMMANDS.items():
        assert main(["pairwise", command, "--help"]) == 0
        help_text = capsys.readouterr().out
        for name, spec in options.model_fields.items():  # tyro's help is the field docstring
            assert spec.description and spec.description.split()[0] in help_text, name
            assert name == "judgments" or f"--{name.replace('_', '-')}" in help_text
    args = _make(two_systems, "--images", str(two_systems / "images"))
    out = two_systems / "page.html"
    assert main([*args, "--out", str(out), "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"(^|[\s│-])n\b", err, re.M) and "greater than or equal to 1" in err
    assert not out.exists()
    monkeypatch.chdir(two_systems)  # --out defaults to pairwise.html here
    assert main([*args, "--n", "2"]) == 0
    assert (two_systems / "pairwise.html").is_file()
    assert (two_systems / "pairwise.key.json").is_file()
    assert main(["pairwise", "tally"]) == 2  # no FILE
    assert re.search(r"judgments", capsys.readouterr().err)
    (two_systems / "bad.json").write_text("{}")
    assert main(["pairwise", "tally", str(two_systems / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a finecap pairwise judgments file" in err
    old = {"format": "finecap-pairwise-judgments/1", "a": "A", "b": "B", "items": []}
    (two_systems / "old.json").write_text(json.dumps(old))
    assert main(["pairwise", "tally", str(two_systems / "old.json")]) == 2
    assert "; format 'finecap-pairwise-judgments/1': remake" in capsys.readouterr().err


_WARNS = """const e = new Event('beforeunload', {cancelable: true});
window.dispatchEvent(e); return e.defaultPrevented;"""


@needs_chromium
def test_page_in_headless_chromium(two_systems, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    page = two_systems / "page.html"
    args = _make(two_systems, "--images", str(two_systems / "images"), "--n", "5", "--seed", "1")
    assert main([*args, "--out", str(page)]) == 0
    key = json.loads((two_systems / "page.key.json").read_text())
    a_side = {it["item"]: it["a_side"] for it in key["items"]}
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = headless_chrome(tmp_path, downloads)

    def checked() -> set[str]:
        return {e.get_attribute("id") for e in driver.find_elements(By.CSS_SELECTOR, ":checked")}

    try:
        driver.get(page.as_uri())
        assert driver.find_element(By.ID, "progress").text == "0 of 5 images done"
        assert "</script><!-- &amp;" in driver.find_element(By.ID, "item-1").text  # escaped
        assert not driver.execute_script(_WARNS)  # nothing to lose yet
        # The annotator prefers system A on every criterion of every image, except a tie on
        # "relation" of the first; they see only "Caption 1"/"Caption 2", so click by A's side.
        wanted = {f"i{item}-{c}-{'tie' if (item, c) == (1, 'relation') else side}"
                  for item, side in a_side.items() for c in CRITERIA}  # fmt: skip
        first_half = sorted(i for i in wanted if int(i[1:].split("-")[0]) <= 2)
        for element_id in first_half:
            driver.find_element(By.ID, element_id).click()
        driver.find_element(By.ID, "save").click()  # no annotator yet: nothing is saved
        assert driver.find_element(By.ID, "status").text == "Type your name or ID first."
        driver.find_element(By.ID, "annotator").send_keys("tester")
        assert driver.execute_script(_WARNS)  # answers not saved to a file: warn
        driver.refresh()  # answers are kept in localStorage and restored
        assert checked() == set(first_half)
        assert driver.find_element(By.ID, "annotator").get_attribute("value") == "tester"
        assert driver.find_element(By.ID, "progress").text == "2 of 5 images done"
        assert driver.execute_script(_WARNS)  # still unsaved
        for element_id in sorted(wanted - set(first_half)):
            driver.find_element(By.ID, element_id).click()
        assert driver.find_element(By.ID, "progress").text == "5 of 5 images done"
        driver.find_element(By.ID, "save").click()
        assert not driver.execute_script(_WARNS)  # saved
        saved = driver.find_element(By.ID, "judgments-json").get_attribute("value")
        for _ in range(50):  # the Blob download lands asynchronously
            if (downloads / "judgments-tester.json").exists():
                break
            time.sleep(0.1)
    finally:
        driver.quit()

    doc = json.loads(saved)
    assert doc["annotator"] == "tester" and doc["page_id"] == read_page(page)["page_id"]
    assert set(doc["items"][0]) == {"item", "choices"}  # nothing that un-blinds
    assert json.loads((downloads / "judgments-tester.json").read_text()) == doc
    judgments = two_systems / "judgments-1.json"  # beside the page and its key
    judgments.write_text(saved)
    capsys.readouterr()
    assert main(["pairwise", "tally", str(two_systems / "judgments-*.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A = sysalpha, B = sysbeta: 5 items judged by 1 annotator")
    assert _rows(out)["overall"][:5] == ["100.0%", "0.0%", "0.0%", "5", "5:0"]
    assert _rows(out)["relation"][:5] == ["80.0%", "0.0%", "20.0%", "5", "4:0"]


def _judgments(**item_changes) -> dict:
    items = [
        {"item": 1, "choices": dict.fromkeys(CRITERIA, "left")},
        {"item": 2, "choices": dict.fromkeys(CRITERIA, "tie")},
    ]
    items[1].update(item_changes)
    return {"format": JUDGMENTS_FORMAT, "page_id": "p", "key": "k.json", "items": items}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1 col 2"),
        (b"\xff\xfe", "not UTF-8 text"),
        ({**_judgments(), "items": {"0": {}}}, '"items" must be a list'),
        ({**_judgments(), "page_id": None}, '"page_id" (the page judged) must be a string'),
        ({**_judgments(), "items": [3]}, "items[0]: expected an object"),
        (_judgments(item="1"), "items[1]: \"item\" must be an integer, got '1'"),
        (_judgments(item=1), "items[1] (item 1): item 1 is judged twice in this file"),
        (_judgments(choices=None), 'items[1] (item 2): "choices" must be an object'),
        (_judgments(choices=["left"]), 'items[1] (item 2): "choices" must be an object'),
        (_judgments(choices={"overall": "A"}), "items[1] (item 2): unknown choice 'A' for overall"),
        (_judgments(choices={"colour": "tie"}), "items[1] (item 2): unknown criterion 'colour'"),
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


def test_tally_unreadable_files(tmp_path, capsys):
    assert main(["pairwise", "tally", str(tmp_path / "none.json")]) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    assert main(["pairwise", "tally", str(tmp_path)]) == 2
    assert f"{tmp_path}: cannot read it" in capsys.readouterr().err


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
    page = two_systems / "page.html"
    assert main([*args, "--out", str(page), "--key", str(a)]) == 2
    assert f"--key {a}: is an input" in capsys.readouterr().err and a.read_bytes() == before
    assert main([*args, "--out", str(page), "--key", str(page)]) == 2
    assert f"--key {page}: is an input ({page})" in capsys.readouterr().err
    assert not page.exists()


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


def _oracle_page(folder):
    items = [PairItem(k + 1, i, None, left, right, side)
             for k, (i, side, left, right) in enumerate(ORACLE_ITEMS)]  # fmt: skip
    page, key = folder / "page.html", folder / "page.key.json"
    write_study(page, key, Sample(items, {}, seed=0), "mle", "scst")
    return page, key


def test_oracle_judge_and_tally_by_hand(tmp_path, capsys, monkeypatch):
    from finecap.pairwise import load_judgments

    page, key = _oracle_page(tmp_path)
    _scene_dataset(tmp_path / "dataset.json")
    out = tmp_path / "oracle.json"
    args = ["pairwise", "judge", "--page", str(page), "--dataset", str(tmp_path / "dataset.json")]
    assert main([*args, "--out", str(out)]) == 2
    assert "--oracle" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--out", str(out), "--oracle"]) == 0  # reads the key beside the page
    assert "4 items, A = mle, B = scst, oracle" in capsys.readouterr().out
    doc = load_judgments(out)  # the format a person's judgments have: no key in it
    assert [set(it) for it in doc["items"]] == [{"item", "choices"}] * 4
    assert doc["page_id"] == read_key(key).page_id and doc["key"] == "page.key.json"
    # Worked by hand, (correct - wrong) per caption:
    # 1: B (right) wins everything: 2 objects, 2 colours, the relation, the background.
    # 2: A (right) wins overall, background (0 vs -1 for "snow"), attribute (red vs green);
    #    both name the box (object tie), no relation.
    # 3: A (left) "three hearts in the snow": object 2 - 1 = 1, background 1; B "two hearts
    #    and a hexagn": object 3. B wins overall (3 vs 2) and object, A the background.
    # 4: A (right) names the ball: wins overall (3 vs 2) and object; purple and grass tie.
    t = tally(read_key(key), {str(out): doc})
    assert t.counts == {
        "overall": {"A": 2, "B": 2, "tie": 0},
        "background": {"A": 2, "B": 1, "tie": 1},
        "object": {"A": 1, "B": 2, "tie": 1},
        "attribute": {"A": 1, "B": 1, "tie": 2},
        "relation": {"A": 0, "B": 1, "tie": 3},
    }
    assert main(["pairwise", "tally", str(out)]) == 0
    assert _rows(capsys.readouterr().out)["relation"][:4] == ["0.0%", "25.0%", "75.0%", "4"]
    monkeypatch.chdir(tmp_path)  # --out defaults to judgments.json
    assert main([*args, "--oracle"]) == 0 and load_judgments("judgments.json") == doc


def test_oracle_tally_of_whole_splits():
    from finecap.scenes.oracle import oracle_tally
    from finecap.scenes.world import Scene

    scenes = [Scene.from_dict(_scene_dict(i)) for i in (1, 2)]
    t = oracle_tally(
        ("mle", ["a red star", "a red box"]), ("scst", ["a red star", "a box"]), scenes
    )
    assert t.counts["overall"] == {"A": 1, "B": 0, "tie": 1}  # the same caption ties
    assert t.percentages()["attribute"] == {"A": 50.0, "B": 0.0, "tie": 50.0}


def test_oracle_judge_errors(tmp_path, capsys):
    _scene_dataset(tmp_path / "dataset.json")
    page, key = tmp_path / "page.html", tmp_path / "page.key.json"
    write_study(page, key, Sample([PairItem(1, 9, None, "a", "b", "left")], {}, 0), "a", "b")
    args = ["pairwise", "judge", "--oracle", "--dataset", str(tmp_path / "dataset.json")]
    args += ["--out", str(tmp_path / "out.json"), "--page"]
    assert main([*args, str(page)]) == 2
    assert "no ground-truth scene (image_id 9" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "dataset.json")]) == 2
    assert "not a page of `finecap pairwise make`" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    _, other_key = _oracle_page(tmp_path / "other")
    assert main([*args, str(page), "--key", str(other_key)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{other_key}: the key of page" in err
    key.unlink()
    assert main([*args, str(page)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{key}: no such file" in err
    assert not (tmp_path / "out.json").exists()
