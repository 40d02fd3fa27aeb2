// The page: choose or drop a photo, POST it to /v1/predict, draw the top-5 bars and the nearest
// training images. Plain JavaScript, nothing loaded from elsewhere (it works offline).
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;   // GET /v1/model
let current = null; // the File on show

function text(tag, cls, content) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (content !== undefined) el.textContent = content;
  return el;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    model = await r.json();
  } catch (e) {
    $("model").textContent = "cannot reach the server: " + e;
    return;
  }
  const where = model.source.split("/").slice(-3).join("/");
  $("model").textContent = `${model.variant} · ${model.num_classes} classes · ${model.input_size}px input · ` +
    `${where} · ${model.device}`;
  const k = model.variant === "alexnet2012" ? "two towers: GPU 1's kernels above GPU 2's" : "one tower";
  $("filters-caption").textContent = `The first layer's kernels, each scaled to its own range (${k}).`;
  $("neighbours-card").hidden = !model.features;
  const v = model.validation;  // the training run's best validation figures, with what to know first
  if (v) {
    const top5 = v.top5 === null ? "" : `, top-5 ${(100 * v.top5).toFixed(2)}%`;
    $("validation").textContent = `validation top-1 ${(100 * v.top1).toFixed(2)}%${top5} ` +
      `(the run's best, epoch ${+v.epoch.toFixed(2)}; chance is ${(100 / v.classes).toFixed(1)}%)`;
    $("validation").hidden = false;
    $("warning").textContent = v.notes.join(" ");
    $("warning").hidden = !v.notes.length;
  }
  $("top-title").textContent = model.num_classes <= 5 ? `All ${model.num_classes} classes` : "Top 5";
}

function choose(file) {
  if (!file) return;
  showError("");
  if (model && file.size > model.limits.max_upload_bytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; this server takes up to ` +
      `${model.limits.max_upload_mb} MiB.`);
    return;
  }
  current = file;
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(file);
  photo.hidden = false;
  $("drop-hint").hidden = true;
  $("drop").classList.add("has-photo");
  predict();
}

async function predict() {
  if (!current) return;
  const form = new FormData();
  form.append("file", current);
  const views = $("views").value;
  const k = model && model.features ? 6 : 0;
  $("status").textContent = "classifying…";
  let r, body;
  try {
    r = await fetch(`/v1/predict?topk=5&views=${views}&neighbors=${k}`, { method: "POST", body: form });
    body = await r.json().catch(() => ({ error: `the server answered ${r.status} ${r.statusText}` }));
  } catch (e) {
    $("status").textContent = "";
    showError("cannot reach the server: " + e);
    return;
  }
  $("status").textContent = "";
  if (!r.ok) {
    showError(body.error || `the server answered ${r.status}`);
    return;
  }
  drawBars(body.predictions);
  drawNeighbours(body.neighbors || []);
  const t = body.timing_ms;
  $("timing").textContent = `${t.total.toFixed(0)} ms in all: decode ${t.decode.toFixed(0)} ms, queue ` +
    `${t.queue.toFixed(0)} ms, forward pass ${t.forward.toFixed(0)} ms (batch of ${body.batch_size}); ` +
    `${views === "10" ? "10 views averaged" : views === "2" ? "centre crop and its reflection averaged" : "centre crop"}`;
}

function drawBars(predictions) {
  const list = $("bars");
  list.replaceChildren();
  for (const p of predictions) {
    const item = text("li", "bar");
    const name = text("span", "bar-name", p.name);
    name.title = `${p.name} (${p.class}, output ${p.index})`;
    if (p.class !== p.name) name.append(text("span", "bar-class", p.class));  // e.g. a WordNet id
    const track = text("span", "bar-track");
    const fill = text("span", "bar-fill");
    fill.style.width = `${Math.max(0.5, 100 * p.probability).toFixed(1)}%`;
    track.append(fill);
    item.append(name, text("span", "bar-value", `${(100 * p.probability).toFixed(1)}%`), track);
    list.append(item);
  }
  $("empty").hidden = predictions.length > 0;
}

function drawNeighbours(neighbours) {
  const strip = $("neighbours");
  strip.replaceChildren();
  for (const n of neighbours) {
    const fig = text("figure", "neighbour");
    const img = document.createElement("img");
    img.src = n.url;
    img.alt = n.name;
    img.title = `${n.key}\nEuclidean distance in fc7 space: ${n.distance.toPrecision(4)}`;
    fig.append(img, text("figcaption", "", `${n.name} · ${n.distance.toPrecision(3)}`));
    strip.append(fig);
  }
}

const drop = $("drop");
$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("views").addEventListener("change", predict);
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
for (const kind of ["dragenter", "dragover"]) {
  drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const kind of ["dragleave", "drop"]) {
  drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
loadModel();
