// finecap serve's page: caption dropped images with every loaded model, side by side, and
// draw a word's attention map over the image on hover or click. Plain browser JavaScript,
// nothing from outside; it talks only to this server's /v1 API.
"use strict";

const state = { models: [], clip: null };
const $ = (id) => document.getElementById(id);

// Colour stops of matplotlib's "inferno" (what `finecap caption --attention` draws with).
const INFERNO = [
  [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
  [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
];

function headers() {
  const key = sessionStorage.getItem("finecap-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("models-line").textContent = "This service needs an API key: enter it above the images.";
    return false;
  }
  if (!response.ok) {
    $("models-line").textContent = `Cannot list the models (HTTP ${response.status}).`;
    return false;
  }
  const body = await response.json();
  state.models = body.models;
  state.clip = body.clip;
  const names = body.models.map((m) => `${m.name} (${m.description})`).join(" · ");
  const clip = body.clip ? ` · CLIP-S with ${body.clip}` : " · no CLIP loaded (no CLIP-S)";
  $("models-line").textContent = `Models: ${names}${clip}`;
  return true;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function captionFile(file) {
  if (!state.models.length && !(await loadModels())) {
    showError("No models to caption with (see the line at the top).");
    return;
  }
  showError("");
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  card.dataset.file = file.name;
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  const name = document.createElement("p");
  name.className = "name";
  name.textContent = file.name;
  card.querySelector(".picture").append(name);
  $("results").prepend(card);
  const columns = card.querySelector(".columns");
  await Promise.all(state.models.map((model) => captionWith(model, file, card, columns)));
}

async function captionWith(model, file, card, columns) {
  const column = document.createElement("div");
  column.className = model.default ? "model default" : "model";
  column.dataset.model = model.name;
  const title = document.createElement("h2");
  title.textContent = model.name;
  const about = document.createElement("p");
  about.className = "about";
  about.textContent = model.description;
  const how = document.createElement("p");
  how.className = "about decoding";
  how.textContent = `its own decoding: ${model.decoding}`;  // config.json's; Beam size overrides
  const status = document.createElement("p");
  status.className = "numbers";
  status.textContent = "captioning…";
  column.append(title, about, how, status);
  columns.append(column);

  const form = new FormData();
  form.append("image", file, file.name);
  form.append("model", model.name);
  if ($("beam").value) form.append("beam_size", $("beam").value);  // else the model's own
  form.append("with_attention", "true");
  form.append("with_scores", "true");
  let response, body;
  try {
    response = await fetch("/v1/captions", { method: "POST", body: form, headers: headers() });
    body = await response.json();
  } catch (err) {
    status.textContent = `failed: ${err}`;
    status.classList.add("failed");
    return;
  }
  if (!response.ok) {
    status.textContent = `HTTP ${response.status}: ${body.detail}`;
    status.classList.add("failed");
    return;
  }
  body.captions.forEach((caption, rank) => {
    column.insertBefore(captionLine(caption, rank, model.name, card), status);
  });
  const best = body.captions[0];
  const parts = [];
  if (best.score !== null) parts.push(`CLIP-S ${best.score.toFixed(3)}`);
  parts.push(`log p ${best.logprob.toFixed(2)}`, `${Math.round(body.ms)} ms`, `batch ${body.batch}`);
  status.textContent = parts.join(" · ");
}

function captionLine(caption, rank, modelName, card) {
  const line = document.createElement("p");
  line.className = rank === 0 ? "caption" : "caption alternative";
  line.dataset.text = caption.text;
  caption.words.forEach((word, k) => {
    const span = document.createElement("span");
    span.className = "word";
    span.tabIndex = 0;
    span.textContent = word;
    span.dataset.index = String(k);
    if (caption.attention) {
      const show = () => drawAttention(card, caption.attention, k, word, modelName, span);
      span.addEventListener("mouseenter", show);
      span.addEventListener("focus", show);
      span.addEventListener("mouseleave", () => restore(card));
      span.addEventListener("blur", () => restore(card));
      span.addEventListener("click", () => togglePin(card, span, show));
      span.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); togglePin(card, span, show); }
      });
    }
    line.append(span, document.createTextNode(" "));
  });
  return line;
}

function togglePin(card, span, show) {
  const pinned = card.pinned;
  if (pinned) pinned.span.classList.remove("pinned");
  if (pinned && pinned.span === span) {
    card.pinned = null;
    clearAttention(card);
    return;
  }
  span.classList.add("pinned");
  card.pinned = { span, show };
  show();
}

function restore(card) {
  card.querySelectorAll(".word.active").forEach((w) => w.classList.remove("active"));
  if (card.pinned) card.pinned.show();
  else clearAttention(card);
}

function clearAttention(card) {
  const canvas = card.querySelector("canvas.overlay");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.word = "";
  card.querySelector(".attention-label").textContent = "";
}

function colour(v) {
  const x = Math.min(Math.max(v, 0), 1) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(x), INFERNO.length - 2);
  const t = x - i;
  return INFERNO[i].map((c, j) => Math.round(c + t * (INFERNO[i + 1][j] - c)));
}

// One word's (rows, cols) map drawn over the image: each cell coloured by its weight (scaled
// by the map's largest), then stretched to the image with smoothing, as the CLI's figures are.
function drawAttention(card, attention, k, word, modelName, span) {
  card.querySelectorAll(".word.active").forEach((w) => w.classList.remove("active"));
  span.classList.add("active");
  const img = card.querySelector("img");
  const canvas = card.querySelector("canvas.overlay");
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  const grid = attention.maps[k];
  const top = Math.max(...grid.flat(), 1e-8);
  const cells = document.createElement("canvas");
  cells.width = attention.cols;
  cells.height = attention.rows;
  const pixels = cells.getContext("2d").createImageData(attention.cols, attention.rows);
  grid.flat().forEach((w, i) => {
    const [r, g, b] = colour(w / top);
    pixels.data.set([r, g, b, 153], 4 * i); // alpha 0.6, as the CLI's figures overlay it
  });
  cells.getContext("2d").putImageData(pixels, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(cells, 0, 0, canvas.width, canvas.height);
  canvas.dataset.word = word;
  canvas.dataset.model = modelName;
  card.querySelector(".attention-label").textContent = `${modelName}: where it looked for “${word}”`;
}

function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/") && file.type !== "") {
      showError(`${file.name}: not an image (${file.type})`);
      continue;
    }
    captionFile(file);
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file").click(); });
  $("key").addEventListener("change", async (e) => {
    sessionStorage.setItem("finecap-key", e.target.value.trim());
    state.models = [];
    if (await loadModels()) $("key-box").hidden = true;
  });
  $("clear").addEventListener("click", () => { $("results").replaceChildren(); });
  loadModels();
}

setUp();
