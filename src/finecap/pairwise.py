"""Human pairwise evaluation (Cho et al. 2022, Table 4): which of two captions is better?

A study is three kinds of file:

- the page (`finecap.pairwise_page`), HTML for annotators: per item the two captions in a
  seeded random left/right order, five criteria, ties allowed. It names neither system.
- the key (`PAGE.key.json` beside it; keep it from annotators): the systems' names, the side
  system A is shown on per item, and the sampled images both systems captioned the same
  (equal up to case and spacing), which are left off the page and counted as ties.
- judgments, one file per annotator, saved from the page: the page's id, the annotator, and
  per item its number (from 1) and choices: criterion -> "left" | "right" | "tie" | null.

`make_sample` draws the seeded sample; `write_study` writes page and key; `read_page`,
`read_key` and `load_judgments` read them back, every error naming the file and the fault
(`load_judgment_files` counts a file given twice, or the same answers saved again, once).
`finecap.pairwise_tally.tally` un-blinds judgments with the key and counts them.

    sample = make_sample(a_captions, b_captions, image_paths, n=50, seed=0)
    write_study("pairwise.html", "pairwise.key.json", sample, "mle", "scst")
    docs = load_judgment_files(["judgments-ann.json", "judgments-bob.json"])
    print(format_tally(tally(read_key("pairwise.key.json"), docs)))  # finecap.pairwise_tally
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from finecap.errors import UserError
from finecap.io import atomic_write_text

CRITERIA = ("overall", "background", "object", "attribute", "relation")
PAGE_FORMAT = "finecap-pairwise-page/2"
KEY_FORMAT = "finecap-pairwise-key/1"
JUDGMENTS_FORMAT = "finecap-pairwise-judgments/2"
SIDES = ("left", "right")
CHOICES = (*SIDES, "tie")


class PairwiseError(UserError, ValueError):
    """A page, key or judgments file that cannot be read, is malformed or does not belong
    with the others; the message names the file (and item) and the fault."""


@dataclass
class PairItem:
    item: int  # number on the page, from 1
    image_id: int | str
    image_uri: str | None  # data: URI of the image; None on a text-only page
    left: str  # caption shown as "Caption 1"
    right: str  # caption shown as "Caption 2"
    a_side: str  # "left" | "right": where system A's caption is (goes to the key only)


@dataclass
class Sample:
    items: list[PairItem]  # shown on the page
    identical: dict[int | str, str]  # image id -> the caption both systems gave; ties
    seed: int


def _same(x: str, y: str) -> bool:
    """Captions a reader cannot tell apart: equal up to case and spacing."""
    return " ".join(x.split()).casefold() == " ".join(y.split()).casefold()


def make_sample(
    a: Mapping[int | str, str],
    b: Mapping[int | str, str],
    image_paths: Mapping[int | str, Path] | None = None,
    n: int = 50,
    seed: int = 0,
) -> Sample:
    """A seeded sample of `n` images captioned by both systems (and with an image file,
    unless `image_paths` is None: a text-only page), sides shuffled per item; images whose
    two captions are the same are set apart as ties."""
    from finecap.report import image_data_uri

    common = sorted((k for k in a if k in b and (image_paths is None or k in image_paths)), key=str)
    if not common:
        raise ValueError("no image is captioned by both systems and has an image file")
    rnd = random.Random(seed)
    items: list[PairItem] = []
    identical: dict[int | str, str] = {}
    for image_id in rnd.sample(common, min(n, len(common))):
        a_side = rnd.choice(SIDES)  # drawn for every image: the sides do not hang on ties
        if _same(a[image_id], b[image_id]):
            identical[image_id] = a[image_id]
            continue
        x, y = a[image_id], b[image_id]
        left, right = (x, y) if a_side == "left" else (y, x)
        uri = None if image_paths is None else image_data_uri(image_paths[image_id], max_side=384)
        items.append(PairItem(len(items) + 1, image_id, uri, left, right, a_side))
    return Sample(items, identical, seed)


def page_id(sample: Sample) -> str:
    """Names a page (and its key, its judgments, its answers kept in a browser): a hash of
    what the page shows, so making the same page again gives the same id."""
    shown = [[str(it.image_id), it.left, it.right] for it in sample.items]
    text = json.dumps([sample.seed, shown, sorted(map(str, sample.identical))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def page_data(sample: Sample, key_name: str) -> dict:
    """What the page embeds for its script and for program judges: nothing that un-blinds."""
    return {
        "format": PAGE_FORMAT,
        "judgments_format": JUDGMENTS_FORMAT,
        "page_id": page_id(sample),
        "key": key_name,
        "criteria": list(CRITERIA),
        "identical": len(sample.identical),
        "items": [
            {"item": it.item, "image_id": it.image_id, "left": it.left, "right": it.right}
            for it in sample.items
        ],
    }


def key_data(sample: Sample, a_name: str, b_name: str) -> dict:
    return {
        "format": KEY_FORMAT,
        "page_id": page_id(sample),
        "a": a_name,
        "b": b_name,
        "seed": sample.seed,
        "items": [
            {"item": it.item, "image_id": it.image_id, "a_side": it.a_side} for it in sample.items
        ],
        "identical": [{"image_id": i, "caption": c} for i, c in sample.identical.items()],
    }


def key_path_for(page: str | os.PathLike) -> Path:
    """Where `write_study` puts a page's key by default: PAGE.key.json beside it."""
    return Path(page).with_suffix(".key.json")


def write_study(
    page_path: str | os.PathLike,
    key_path: str | os.PathLike,
    sample: Sample,
    a_name: str,
    b_name: str,
    title: str = "Which caption?",
) -> str:
    """Write the key, then the page; returns the page id. An existing key of another page
    is refused: the judgments of that page cannot be un-blinded without it."""
    from finecap.pairwise_page import render_page

    key_path = Path(key_path)
    key_text = json.dumps(key_data(sample, a_name, b_name), indent=1) + "\n"
    if key_path.exists():
        try:
            same = key_path.read_text(encoding="utf-8") == key_text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            raise PairwiseError(
                f"{key_path}: exists and is not this page's key (the judgments of its page "
                "need it); move it away or write elsewhere (--out, --key)"
            )
    data = page_data(sample, key_path.name)
    atomic_write_text(key_path, key_text)
    html = render_page(data, [it.image_uri for it in sample.items], title)
    atomic_write_text(page_path, html)
    return data["page_id"]


def _read_json(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """The JSON object in `path` whose "format" is `fmt`; a `PairwiseError` otherwise."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PairwiseError(f"{path}: no such file") from None
    except OSError as err:  # a folder, no permission
        raise PairwiseError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise PairwiseError(f"{path}: not UTF-8 text (bad byte at {err.start})") from None
    except json.JSONDecodeError as err:
        raise PairwiseError(
            f"{path}: invalid JSON at line {err.lineno} col {err.colno}: {err.msg}"
        ) from None
    got = doc.get("format") if isinstance(doc, dict) else None
    if got != fmt:
        kinds = {KEY_FORMAT: "it is a key", JUDGMENTS_FORMAT: "it is a judgments file"}
        why = kinds.get(got) or (
            f"format {got!r}: remake the page with this finecap"
            if isinstance(got, str) and got.startswith("finecap-pairwise-")
            else None
        )
        raise PairwiseError(
            f"{path}: not a finecap pairwise {what} ({fmt})" + (f"; {why}" if why else "")
        )
    return doc


_PAGE_DATA = re.compile(r"<script type='application/json' id='pairwise-data'>(.*?)</script>", re.S)


def read_page(path: str | os.PathLike) -> dict:
    """The data a page embeds (`page_data`): page_id, key, criteria, identical and the items
    (item, image_id, left, right)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PairwiseError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PairwiseError(f"{path}: cannot read it ({err})") from None
    found = _PAGE_DATA.search(text)
    try:
        data = json.loads(found.group(1)) if found else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("format") != PAGE_FORMAT:
        raise PairwiseError(
            f"{path}: not a page of `finecap pairwise make` (no {PAGE_FORMAT} data in it)"
        )
    return data


@dataclass
class StudyKey:
    page_id: str
    a: str
    b: str
    a_side: dict[int, str]  # item -> the side system A's caption is shown on
    identical: int  # sampled images left off the page, both captions the same: ties
    source: str = "key"  # its file, for messages


def read_key(path: str | os.PathLike) -> StudyKey:
    """Read and check a key `write_study` wrote."""
    doc = _read_json(path, KEY_FORMAT, "key (written beside the page by `finecap pairwise make`)")
    fault = None
    if not all(isinstance(doc.get(k), str) for k in ("page_id", "a", "b")):
        fault = '"page_id", "a" and "b" must be strings'
    elif not isinstance(doc.get("items"), list) or not isinstance(doc.get("identical"), list):
        fault = '"items" and "identical" must be lists'
    elif not all(isinstance(it, dict) and it.get("a_side") in SIDES for it in doc["items"]):
        fault = 'every item needs an "a_side" of "left" or "right"'
    else:
        a_side = {it.get("item"): it["a_side"] for it in doc["items"]}
        if len(a_side) != len(doc["items"]) or not all(type(i) is int for i in a_side):
            fault = 'item numbers ("item") must be unique integers'
    if fault:
        raise PairwiseError(f"{path}: {fault}")
    return StudyKey(doc["page_id"], doc["a"], doc["b"], a_side, len(doc["identical"]), str(path))


def load_judgments(path: str | os.PathLike) -> dict:
    """Read one saved judgments file, checking its format and every item."""
    doc = _read_json(path, JUDGMENTS_FORMAT, "judgments file")
    check_judgments(doc, str(path))
    return doc


def check_judgments(doc: dict, where: str) -> None:
    """Raise a `PairwiseError` ("WHERE: items[K] (item N): fault") unless `doc` holds a page
    id and a list of items, each with a unique integer "item" and "choices" mapping criteria
    to left/right/tie or null (unanswered)."""
    if not isinstance(doc.get("page_id"), str):
        raise PairwiseError(f'{where}: "page_id" (the page judged) must be a string')
    items = doc.get("items")
    if not isinstance(items, list):
        raise PairwiseError(f'{where}: "items" must be a list')
    seen: set[int] = set()
    for k, it in enumerate(items):
        at = f"{where}: items[{k}]"
        if not isinstance(it, dict):
            raise PairwiseError(f"{at}: expected an object")
        number = it.get("item")
        if not isinstance(number, int) or isinstance(number, bool):
            raise PairwiseError(f'{at}: "item" must be an integer, got {number!r}')
        at += f" (item {number})"
        if number in seen:
            raise PairwiseError(f"{at}: item {number} is judged twice in this file")
        seen.add(number)
        choices = it.get("choices")
        if not isinstance(choices, dict):
            raise PairwiseError(f'{at}: "choices" must be an object {{criterion: choice}}')
        for c, choice in choices.items():
            if c not in CRITERIA:
                raise PairwiseError(f"{at}: unknown criterion {c!r} (known: {', '.join(CRITERIA)})")
            if choice is not None and choice not in CHOICES:
                raise PairwiseError(f"{at}: unknown choice {choice!r} for {c}")


def load_judgment_files(
    paths: Sequence[str | os.PathLike], note: Callable[[str], None] | None = None
) -> dict[str, dict]:
    """{path: `load_judgments(path)`}, in order, leaving out a file given again: the same path
    (however spelled) or the same answers under another name or saved at another time; `note`
    hears why."""
    docs: dict[str, dict] = {}
    by_path: dict[str, str] = {}
    by_content: dict[str, str] = {}
    for path in map(str, paths):
        real = os.path.realpath(path)
        if real in by_path:
            if note:
                note(f"{path}: given twice (also as {by_path[real]}); counted once")
            continue
        by_path[real] = path
        doc = load_judgments(path)
        content = json.dumps({k: v for k, v in doc.items() if k != "saved"}, sort_keys=True)
        if content in by_content:
            if note:
                note(f"{path}: the same judgments as {by_content[content]}; counted once")
            continue
        by_content[content] = path
        docs[path] = doc
    return docs
