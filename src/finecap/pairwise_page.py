"""The self-contained HTML page of a blind pairwise study (`finecap.pairwise`).

The page shows each item's two captions as "Caption 1" / "Caption 2" and asks, per criterion,
for the better one or a tie. It embeds no system name and no side of A: those are in the key
file beside it. Answers live in the browser's localStorage under the page's id until the
annotator presses Save, which downloads the judgments JSON (and shows it in a text box, for
browsers that block downloads); reopening the page restores them, and closing it with answers
not yet saved asks first.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
.item { border-top: 1px solid #ccc; padding: 1em 0; display: flex; gap: 1.5em; }
.item img { width: 320px; height: auto; }
.imageid { width: 10em; color: #555; } .number { color: #888; font-size: 0.85em; }
.caption { margin: 0.3em 0; } .caption b { display: inline-block; width: 6em; }
table { border-collapse: collapse; margin-top: 0.6em; }
td, th { padding: 0.15em 0.6em; text-align: center; } td.criterion { text-align: left; }
#bar { position: sticky; top: 0; background: #fff; padding: 0.5em 0;
       border-bottom: 1px solid #ccc; }
#status { color: #a40; } .note { background: #f4f4f4; padding: 0.5em; }
textarea { width: 100%; height: 8em; font-family: monospace; }
"""

# state = {annotator, answers: {item: {criterion: choice}}, unsaved}, mirrored in localStorage
# on every change; the radio buttons are drawn from it when the page opens.
_SCRIPT = """
const DATA = JSON.parse(document.getElementById('pairwise-data').textContent);
const CRITERIA = DATA.criteria;
const STORE = 'finecap-pairwise/' + DATA.page_id;
const state = {annotator: '', answers: {}, unsaved: false};
let storage = null;
try { storage = window.localStorage; storage.getItem(STORE); } catch (e) { storage = null; }
function keep() { if (storage) storage.setItem(STORE, JSON.stringify(state)); }
function restore() {
  let kept = null;
  try { kept = storage && JSON.parse(storage.getItem(STORE)); } catch (e) { kept = null; }
  if (kept) Object.assign(state, kept);
  document.getElementById('annotator').value = state.annotator || '';
  for (const [item, choices] of Object.entries(state.answers))
    for (const [c, v] of Object.entries(choices)) {
      const el = document.getElementById(`i${item}-${c}-${v}`);
      if (el) el.checked = true;
    }
  if (!storage) say('This browser keeps no answers for this page: save before closing it.');
}
function say(text) { document.getElementById('status').textContent = text; }
function answer(item, c) { return (state.answers[item] || {})[c] ?? null; }
function collect() {
  return {format: DATA.judgments_format, page_id: DATA.page_id, key: DATA.key,
          annotator: state.annotator, saved: new Date().toISOString(),
          items: DATA.items.map(it => ({item: it.item,
            choices: Object.fromEntries(CRITERIA.map(c => [c, answer(it.item, c)]))}))};
}
function updateProgress() {
  const done = DATA.items.filter(it => CRITERIA.every(c => answer(it.item, c) !== null)).length;
  document.getElementById('progress').textContent = `${done} of ${DATA.items.length} images done`;
}
function changed(event) {
  const el = event.target;
  if (el.id === 'annotator') state.annotator = el.value.trim();
  else if (el.type === 'radio') {
    const [item, c] = [el.dataset.item, el.dataset.criterion];
    state.answers[item] = {...(state.answers[item] || {}), [c]: el.value};
  } else return;
  state.unsaved = true;
  keep();
  updateProgress();
}
function save() {
  if (!state.annotator) { say('Type your name or ID first.'); return; }
  const text = JSON.stringify(collect(), null, 1);
  document.getElementById('judgments-json').value = text;
  const url = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  const link = document.getElementById('download');
  link.href = url;
  link.download = `judgments-${state.annotator.replace(/[^A-Za-z0-9_-]+/g, '_')}.json`;
  link.click();
  state.unsaved = false;
  keep();
  say(`Saved as ${link.download}: send that file.`);
}
window.addEventListener('beforeunload', event => {
  if (state.unsaved) { event.preventDefault(); event.returnValue = ''; }
});
document.addEventListener('change', changed);
document.addEventListener('input', changed);
document.getElementById('save').addEventListener('click', save);
restore();
updateProgress();
"""


def _render_item(it: dict, uri: str | None, criteria: Sequence[str]) -> str:
    esc = html.escape
    number = f"<div class='number'>#{it['item'] + 1}</div>"
    if uri:
        image = f"<div><img src='{uri}' alt='image'>{number}</div>"
    else:
        image = f"<div class='imageid'>image <code>{esc(str(it['image_id']))}</code>{number}</div>"
    rows = []
    for c in criteria:
        cells = "".join(
            f"<td><input type='radio' name='i{it['item']}-{c}' value='{v}' "
            f"id='i{it['item']}-{c}-{v}' data-item='{it['item']}' data-criterion='{c}' "
            f"aria-label='{c}: {label}'></td>"
            for v, label in (("left", "Caption 1"), ("right", "Caption 2"), ("tie", "tie"))
        )
        rows.append(f"<tr><td class='criterion'>{c}</td>{cells}</tr>")
    return (
        f"<div class='item' id='item-{it['item']}'>{image}<div>"
        f"<div class='caption'><b>Caption 1</b> {esc(it['left'])}</div>"
        f"<div class='caption'><b>Caption 2</b> {esc(it['right'])}</div>"
        "<table><tr><th></th><th>Caption 1</th><th>Caption 2</th><th>tie</th></tr>"
        f"{''.join(rows)}</table></div></div>"
    )


def render_page(data: dict, image_uris: Sequence[str | None], title: str) -> str:
    """The page for `data` (page_id, key, criteria, identical, items of item, image_id, left,
    right: `finecap.pairwise.page_data`); `image_uris[k]` is item k's image or None."""
    # "</script" or "<!--" in a caption must not end the script element; JSON reads \u003c.
    payload = json.dumps(data).replace("<", "\\u003c")
    notes = []
    if not any(image_uris):
        notes.append("Text only: the images are not on this page; each item shows its image id.")
    if data["identical"]:
        notes.append(
            f"{data['identical']} more sampled images got the same caption from both systems; "
            "they are left out (and counted as ties)."
        )
    intro = (
        "For each image, pick the better caption on each criterion (or tie): "
        "<b>overall</b> quality, <b>background</b>, <b>object</b>s, their <b>attribute</b>s "
        "(colour, size, texture) and <b>relation</b>s. Your answers stay in this browser until "
        "you press Save; then send the saved file."
    )
    shown = zip(data["items"], image_uris, strict=True)
    items = "".join(_render_item(it, uri, data["criteria"]) for it, uri in shown)
    return "\n".join(
        [
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{intro}</p>",
            "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes),
            "<div id='bar'>Annotator: <input id='annotator' size='12'> "
            "<span id='progress'></span> <button id='save'>Save judgments</button> "
            "<span id='status'></span><a id='download' style='display:none'>download</a></div>",
            items,
            "<h2>Saved judgments</h2><textarea id='judgments-json' readonly></textarea>",
            f"<script type='application/json' id='pairwise-data'>{payload}</script>",
            f"<script>{_SCRIPT}</script></body></html>\n",
        ]
    )
