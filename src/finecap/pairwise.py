"""Human pairwise evaluation (Cho et al. 2022, Table 4): which of two captions is better?

`make_items` draws a seeded sample of images captioned by both systems A and B and puts
the two captions in a seeded random left/right order; `render_page` writes one
self-contained HTML page (images embedded) that asks, per image, for the better caption on
five criteria with ties allowed. The page stores per item which side is A, so the saved
judgments can be un-blinded; the annotator sees only "Caption 1" / "Caption 2".

"Save" downloads `judgments.json` (a Blob link) and also shows the same JSON in a text
box, for browsers that block downloads. `read_page` gives back what a page embeds (the
items, which side is A) to judges that are programs (`finecap.scenes.oracle`). `tally`
un-blinds any number of judgment files and counts, per criterion, how often A wins, loses or
ties against B. `load_judgments` checks a
file's every item (a `JudgmentsError` names the file, the item and the fault), and
`load_judgment_files` counts a file given twice -- the same path, or the same judgments under
another name -- once.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from finecap.errors import UserError
from finecap.io import atomic_write_text

CRITERIA = ("overall", "background", "object", "attribute", "relation")
JUDGMENTS_FORMAT = "finecap-pairwise-judgments/1"
SIDES = ("left", "right")
CHOICES = (*SIDES, "tie")


class JudgmentsError(UserError, ValueError):
    """A judgments file that cannot be read or is malformed; the message names file and item."""


class PageError(UserError, ValueError):
    """A file that is not a page `render_page` wrote; the message names it."""


@dataclass
class PairItem:
    item: int  # position on the page
    image_id: int | str
    image_uri: str | None  # data: URI of the image
    left: str  # caption shown as "Caption 1"
    right: str  # caption shown as "Caption 2"
    a_side: str  # "left" | "right": where system A's caption is


def make_items(
    a: Mapping[int | str, str],
    b: Mapping[int | str, str],
    image_paths: Mapping[int | str, Path],
    n: int = 50,
    seed: int = 0,
) -> list[PairItem]:
    """A seeded sample of `n` images captioned by both systems, sides shuffled per item."""
    from finecap.report import image_data_uri

    common = sorted((k for k in a if k in b and k in image_paths), key=str)
    if not common:
        raise ValueError("no image is captioned by both systems and has an image file")
    rnd = random.Random(seed)
    chosen = rnd.sample(common, min(n, len(common)))
    items = []
    for k, image_id in enumerate(chosen):
        a_side = rnd.choice(SIDES)
        left, right = (a[image_id], b[image_id]) if a_side == "left" else (b[image_id], a[image_id])
        uri = image_data_uri(image_paths[image_id], max_side=384)
        items.append(PairItem(k, image_id, uri, left, right, a_side))
    return items


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
.item { border-top: 1px solid #ccc; padding: 1em 0; display: flex; gap: 1.5em; }
.item img { width: 320px; height: auto; }
.caption { margin: 0.3em 0; } .caption b { display: inline-block; width: 6em; }
table { border-collapse: collapse; margin-top: 0.6em; }
td, th { padding: 0.15em 0.6em; text-align: center; } td.criterion { text-align: left; }
#bar { position: sticky; top: 0; background: #fff; padding: 0.5em 0;
       border-bottom: 1px solid #ccc; }
textarea { width: 100%; height: 8em; font-family: monospace; }
"""

_SCRIPT = """
const DATA = JSON.parse(document.getElementById('pairwise-data').textContent);
const CRITERIA = DATA.criteria;
function collect() {
  const items = DATA.items.map(it => {
    const choices = {};
    for (const c of CRITERIA) {
      const el = document.querySelector(`input[name="i${it.item}-${c}"]:checked`);
      choices[c] = el ? el.value : null;
    }
    return {item: it.item, image_id: it.image_id, a_side: it.a_side, choices: choices};
  });
  return {format: DATA.format, a: DATA.a, b: DATA.b, seed: DATA.seed,
          annotator: document.getElementById('annotator').value, saved: new Date().toISOString(),
          items: items};
}
function updateProgress() {
  const doc = collect();
  const done = doc.items.filter(it => CRITERIA.every(c => it.choices[c] !== null)).length;
  document.getElementById('progress').textContent = `${done} of ${doc.items.length} images done`;
}
function save() {
  const text = JSON.stringify(collect(), null, 1);
  document.getElementById('judgments-json').value = text;
  const url = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  const link = document.getElementById('download');
  link.href = url;
  link.download = 'judgments.json';
  link.click();
}
document.addEventListener('change', updateProgress);
document.getElementById('save').addEventListener('click', save);
updateProgress();
"""


def _render_item(it: PairItem) -> str:
    esc = html.escape
    image = f"<img src='{it.image_uri}' alt='image'>" if it.image_uri else "<i>no image</i>"
    rows = []
    for c in CRITERIA:
        cells = "".join(
            f"<td><input type='radio' name='i{it.item}-{c}' value='{v}' "
            f"id='i{it.item}-{c}-{v}' aria-label='{c}: {label}'></td>"
            for v, label in (("left", "Caption 1"), ("right", "Caption 2"), ("tie", "tie"))
        )
        rows.append(f"<tr><td class='criterion'>{c}</td>{cells}</tr>")
    return (
        f"<div class='item' id='item-{it.item}'><div>{image}</div><div>"
        f"<div class='caption'><b>Caption 1</b> {esc(it.left)}</div>"
        f"<div class='caption'><b>Caption 2</b> {esc(it.right)}</div>"
        "<table><tr><th></th><th>Caption 1</th><th>Caption 2</th><th>tie</th></tr>"
        f"{''.join(rows)}</table></div></div>"
    )


def render_page(
    items: Sequence[PairItem], a_name: str, b_name: str, seed: int, title: str = "Which caption?"
) -> str:
    """The self-contained judging page."""
    data = {
        "format": JUDGMENTS_FORMAT,
        "a": a_name,
        "b": b_name,
        "seed": seed,
        "criteria": list(CRITERIA),
        "items": [{k: v for k, v in asdict(it).items() if k != "image_uri"} for it in items],
    }
    # "</script" or "<!--" in a caption must not end the script element; JSON reads \u003c.
    payload = json.dumps(data).replace("<", "\\u003c")
    intro = (
        "For each image, pick the better caption on each criterion (or tie): "
        "<b>overall</b> quality, <b>background</b>, <b>object</b>s, their <b>attribute</b>s "
        "(colour, size, texture) and <b>relation</b>s. Then press Save and send the file."
    )
    return "\n".join(
        [
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{intro}</p>",
            "<div id='bar'>Annotator: <input id='annotator' size='12'> "
            "<span id='progress'></span> <button id='save'>Save judgments</button> "
            "<a id='download' style='display:none'>download</a></div>",
            "".join(_render_item(it) for it in items),
            "<h2>Saved judgments</h2><textarea id='judgments-json' readonly></textarea>",
            f"<script type='application/json' id='pairwise-data'>{payload}</script>",
            f"<script>{_SCRIPT}</script></body></html>\n",
        ]
    )


def write_page(path: str | os.PathLike, items: Sequence[PairItem], a_name, b_name, seed) -> None:
    atomic_write_text(path, render_page(items, a_name, b_name, seed))


_PAGE_DATA = re.compile(r"<script type='application/json' id='pairwise-data'>(.*?)</script>", re.S)


def read_page(path: str | os.PathLike) -> dict:
    """The data a page embeds: format, a, b, seed, criteria and the items (item, image_id,
    left, right, a_side), as `render_page` wrote them."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PageError(f"{path}: cannot read it ({err})") from None
    found = _PAGE_DATA.search(text)
    try:
        data = json.loads(found.group(1)) if found else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("format") != JUDGMENTS_FORMAT:
        raise PageError(f"{path}: not a page of `finecap pairwise make` (no pairwise data in it)")
    return data


def load_judgments(path: str | os.PathLike) -> dict:
    """Read one saved judgments file, checking its format and every item."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JudgmentsError(f"{path}: no such file") from None
    except OSError as err:  # a folder, no permission
        raise JudgmentsError(f"{path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise JudgmentsError(f"{path}: not UTF-8 text (bad byte at {err.start})") from None
    except json.JSONDecodeError as err:
        raise JudgmentsError(
            f"{path}: invalid JSON at line {err.lineno} col {err.colno}: {err.msg}"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != JUDGMENTS_FORMAT:
        raise JudgmentsError(f"{path}: not a finecap pairwise judgments file ({JUDGMENTS_FORMAT})")
    check_judgments(doc, str(path))
    return doc


def check_judgments(doc: dict, where: str) -> None:
    """Raise a `JudgmentsError` ("WHERE: items[K] (item N): fault") unless `doc` holds system
    names a and b and a list of items, each with a unique "item", an "a_side" of left/right
    and "choices" mapping criteria to left/right/tie or null (unanswered)."""
    for key in ("a", "b"):
        if not isinstance(doc.get(key), str):
            raise JudgmentsError(f'{where}: "{key}" (a system name) must be a string')
    items = doc.get("items")
    if not isinstance(items, list):
        raise JudgmentsError(f'{where}: "items" must be a list')
    seen: set[int] = set()
    for k, it in enumerate(items):
        at = f"{where}: items[{k}]"
        if not isinstance(it, dict):
            raise JudgmentsError(f"{at}: expected an object")
        number = it.get("item")
        if not isinstance(number, int) or isinstance(number, bool):
            raise JudgmentsError(f'{at}: "item" must be an integer, got {number!r}')
        at += f" (item {number})"
        if number in seen:
            raise JudgmentsError(f"{at}: item {number} is judged twice in this file")
        seen.add(number)
        if it.get("a_side") not in SIDES:
            raise JudgmentsError(
                f'{at}: "a_side" must be "left" or "right", got {it.get("a_side")!r}'
            )
        choices = it.get("choices")
        if not isinstance(choices, dict):
            raise JudgmentsError(f'{at}: "choices" must be an object {{criterion: choice}}')
        for c, choice in choices.items():
            if c not in CRITERIA:
                raise JudgmentsError(
                    f"{at}: unknown criterion {c!r} (known: {', '.join(CRITERIA)})"
                )
            if choice is not None and choice not in CHOICES:
                raise JudgmentsError(f"{at}: unknown choice {choice!r} for {c}")


def load_judgment_files(
    paths: Sequence[str | os.PathLike], note: Callable[[str], None] | None = None
) -> dict[str, dict]:
    """{path: `load_judgments(path)`}, in order, leaving out a file given again: the same path
    (however spelled) or the same judgments under another name; `note` hears why."""
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
        content = json.dumps(doc, sort_keys=True)
        if content in by_content:
            if note:
                note(f"{path}: the same judgments as {by_content[content]}; counted once")
            continue
        by_content[content] = path
        docs[path] = doc
    return docs


@dataclass
class Tally:
    a: str
    b: str
    counts: dict[str, dict[str, int]]  # criterion -> {"A": wins of A, "B": wins of B, "tie"}

    def percentages(self) -> dict[str, dict[str, float]]:
        out = {}
        for c, n in self.counts.items():
            total = sum(n.values())
            out[c] = {k: (100 * v / total if total else 0.0) for k, v in n.items()}
        return out


def tally(docs: Sequence[dict], sources: Sequence[str] | None = None) -> Tally:
    """Un-blind and count judgments; unanswered criteria are left out of their counts.
    `sources` names each doc (its file) in error messages."""
    if not docs:
        raise JudgmentsError("no judgments to tally")
    sources = list(sources or (f"judgments {i + 1}" for i in range(len(docs))))
    first_of: dict[tuple[str, str], str] = {}
    for doc, where in zip(docs, sources, strict=True):
        check_judgments(doc, where)
        first_of.setdefault((doc["a"], doc["b"]), where)
    if len(first_of) > 1:
        shown = "; ".join(f"{where}: A = {a}, B = {b}" for (a, b), where in first_of.items())
        raise JudgmentsError(f"the judgment files compare different systems ({shown})")
    counts = {c: {"A": 0, "B": 0, "tie": 0} for c in CRITERIA}
    for doc in docs:
        for it in doc["items"]:
            for c in CRITERIA:
                choice = it["choices"].get(c)
                if choice is None:
                    continue
                key = "tie" if choice == "tie" else ("A" if choice == it["a_side"] else "B")
                counts[c][key] += 1
    ((a, b),) = first_of
    return Tally(a, b, counts)


def format_tally(t: Tally) -> str:
    """Win / lose / tie percentages of A against B, one row per criterion."""
    lines = [
        f"A = {t.a}, B = {t.b}",
        f"{'criterion':12s} {'A wins':>7s} {'B wins':>7s} {'tie':>6s}   n",
    ]
    for c, pct in t.percentages().items():
        n = sum(t.counts[c].values())
        lines.append(f"{c:12s} {pct['A']:6.1f}% {pct['B']:6.1f}% {pct['tie']:5.1f}% {n:4d}")
    return "\n".join(lines)
