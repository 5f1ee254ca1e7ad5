// dali-abs patch labelling page. Talks to the JSON API of dali_abs/labeling/server.py.
// The canvas carries the page state in data attributes (data-id, data-index, data-mask,
// data-source) so tests and scripts can read it; body[data-pending] counts unsaved writes.
"use strict";

const S = {
  grid: 16, ids: [], isLabelled: [], target: 0, labelled: 0, hasModel: false, modelVersion: 0,
  index: 0, id: null, img: null, mask: null, pred: null, source: "empty", token: 0,
  painting: false, paintValue: 1, dirty: false, pending: 0, chain: Promise.resolve(),
};

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = cls || "";
}

function showError(msg) {
  $("error").textContent = msg || "";
  if (msg) setStatus("error", "error");
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || `${method} ${path}: HTTP ${r.status}`);
  return data;
}

function maskString() {
  let s = "";
  for (let i = 0; i < S.mask.length; i++) s += S.mask[i] ? "1" : "0";
  return s;
}

function updateCounter() {
  $("counter").textContent = `labelled ${S.labelled} / ${S.target}`;
  $("position").textContent = S.ids.length ? `image ${S.index + 1} of ${S.ids.length}` : "no images";
  $("image-id").textContent = S.id !== null ? `id ${S.id}` : "";
  $("btn-accept").disabled = !S.pred;
  $("btn-prev").disabled = S.index <= 0;
  $("btn-next").disabled = S.index >= S.ids.length - 1;
  canvas.dataset.id = S.id === null ? "" : S.id;
  canvas.dataset.index = String(S.index);
  canvas.dataset.mask = S.mask ? maskString() : "";
  canvas.dataset.source = S.source;
  document.body.dataset.pending = String(S.pending);
}

function draw() {
  const w = canvas.width, h = canvas.height, r = S.grid;
  ctx.clearRect(0, 0, w, h);
  if (S.img) {
    ctx.imageSmoothingEnabled = S.img.naturalWidth >= w;
    ctx.drawImage(S.img, 0, 0, w, h);
  }
  if (!S.mask) return;
  // Background patches are dimmed; foreground patches keep the image, tinted and outlined
  // (green = saved label, orange = prediction not yet saved), so the mask shows on any image.
  const pred = S.source === "prediction";
  const rect = (x, y) => [Math.round(x * w / r), Math.round(y * h / r),
    Math.round((x + 1) * w / r) - Math.round(x * w / r), Math.round((y + 1) * h / r) - Math.round(y * h / r)];
  ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
  for (let y = 0; y < r; y++) for (let x = 0; x < r; x++) if (!S.mask[y * r + x]) ctx.fillRect(...rect(x, y));
  ctx.fillStyle = pred ? "rgba(245, 182, 66, 0.25)" : "rgba(40, 210, 100, 0.25)";
  for (let y = 0; y < r; y++) for (let x = 0; x < r; x++) if (S.mask[y * r + x]) ctx.fillRect(...rect(x, y));
  ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 0; i <= r; i++) {
    const x = Math.round(i * w / r) + 0.5, y = Math.round(i * h / r) + 0.5;
    ctx.moveTo(x, 0); ctx.lineTo(x, h);
    ctx.moveTo(0, y); ctx.lineTo(w, y);
  }
  ctx.stroke();
  // Outline the foreground region: an edge wherever a foreground patch meets background.
  ctx.strokeStyle = pred ? "rgb(245, 182, 66)" : "rgb(60, 230, 120)";
  ctx.lineWidth = 3;
  ctx.beginPath();
  const on = (x, y) => x >= 0 && y >= 0 && x < r && y < r && S.mask[y * r + x];
  for (let y = 0; y < r; y++) {
    for (let x = 0; x < r; x++) {
      if (!on(x, y)) continue;
      const [x0, y0, ww, hh] = rect(x, y), x1 = x0 + ww, y1 = y0 + hh;
      if (!on(x, y - 1)) { ctx.moveTo(x0, y0); ctx.lineTo(x1, y0); }
      if (!on(x, y + 1)) { ctx.moveTo(x0, y1); ctx.lineTo(x1, y1); }
      if (!on(x - 1, y)) { ctx.moveTo(x0, y0); ctx.lineTo(x0, y1); }
      if (!on(x + 1, y)) { ctx.moveTo(x1, y0); ctx.lineTo(x1, y1); }
    }
  }
  ctx.stroke();
}

function sizeCanvas(img) {
  // Small images are scaled up (whole factors when they fit) so patches are easy to hit.
  const side = window.innerWidth > 900 ? window.innerWidth - 500 : window.innerWidth - 40; // room for the buttons
  const maxSide = Math.max(256, Math.min(720, side, window.innerHeight - 120));
  const iw = img.naturalWidth, ih = img.naturalHeight;
  let scale = maxSide / Math.max(iw, ih);
  if (scale > 1) scale = Math.max(1, Math.floor(scale));
  canvas.width = Math.max(1, Math.round(iw * scale));
  canvas.height = Math.max(1, Math.round(ih * scale));
}

function loadImage(index) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`image ${index} could not be loaded`));
    img.src = `/api/image/${index}?v=${encodeURIComponent(S.ids[index])}`;
  });
}

async function show(index) {
  if (!S.ids.length) { setStatus("no images to label"); return; }
  index = Math.max(0, Math.min(S.ids.length - 1, index));
  const token = ++S.token;
  const id = S.ids[index];
  S.index = index;
  history.replaceState(null, "", `#${index}`);
  setStatus("loading…");
  try {
    const [img, label, pred] = await Promise.all([
      loadImage(index),
      api("GET", `/api/labels/${encodeURIComponent(id)}`),
      S.hasModel ? api("GET", `/api/prediction/${encodeURIComponent(id)}`).catch(() => null) : Promise.resolve(null),
    ]);
    if (token !== S.token) return; // the user moved on meanwhile
    S.id = id;
    S.img = img;
    S.pred = pred ? Float32Array.from(pred.probabilities) : null;
    const n = S.grid * S.grid;
    S.mask = new Uint8Array(n);
    if (label.labelled) {
      for (let i = 0; i < n; i++) S.mask[i] = label.mask.charCodeAt(i) === 49 ? 1 : 0;
      S.source = "saved";
      setStatus("saved", "saved");
    } else if (S.pred) {
      for (let i = 0; i < n; i++) S.mask[i] = S.pred[i] >= 0.5 ? 1 : 0;
      S.source = "prediction";
      setStatus("prediction, not saved: edit it or press a to accept", "prediction");
    } else {
      S.source = "empty";
      setStatus("unlabelled: paint the foreground patches");
    }
    sizeCanvas(img);
    showError("");
    updateCounter();
    draw();
  } catch (e) {
    if (token === S.token) showError(e.message);
  }
}

function save() {
  if (S.id === null || !S.mask) return Promise.resolve();
  const id = S.id, index = S.index, body = { grid: S.grid, mask: maskString() };
  S.source = "saved";
  S.pending += 1;
  updateCounter();
  draw();
  setStatus("saving…");
  // Writes go one after another, so the last change is the one on disk.
  S.chain = S.chain.then(async () => {
    try {
      const res = await api("PUT", `/api/labels/${encodeURIComponent(id)}`, body);
      S.labelled = res.labelled;
      S.target = res.target;
      S.isLabelled[index] = true;
      if (S.id === id) setStatus("saved", "saved");
    } catch (e) {
      showError(`not saved: ${e.message}`);
    } finally {
      S.pending -= 1;
      updateCounter();
    }
  });
  return S.chain;
}

function patchAt(ev) {
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((ev.clientX - rect.left) / rect.width * S.grid);
  const y = Math.floor((ev.clientY - rect.top) / rect.height * S.grid);
  if (x < 0 || y < 0 || x >= S.grid || y >= S.grid) return -1;
  return y * S.grid + x;
}

canvas.addEventListener("pointerdown", (ev) => {
  if (!S.mask || ev.button !== 0) return;
  const p = patchAt(ev);
  if (p < 0) return;
  canvas.setPointerCapture(ev.pointerId);
  canvas.focus();
  S.painting = true;
  S.paintValue = S.mask[p] ? 0 : 1;
  S.mask[p] = S.paintValue;
  S.dirty = true;
  draw();
  ev.preventDefault();
});

canvas.addEventListener("pointermove", (ev) => {
  if (!S.painting) return;
  const p = patchAt(ev);
  if (p >= 0 && S.mask[p] !== S.paintValue) {
    S.mask[p] = S.paintValue;
    S.dirty = true;
    draw();
  }
});

function endStroke() {
  if (!S.painting) return;
  S.painting = false;
  if (S.dirty) { S.dirty = false; save(); }
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function clearMask() { if (S.mask) { S.mask.fill(0); save(); } }
function invertMask() { if (S.mask) { for (let i = 0; i < S.mask.length; i++) S.mask[i] ^= 1; save(); } }
function acceptPrediction() {
  if (!S.mask || !S.pred) return;
  for (let i = 0; i < S.mask.length; i++) S.mask[i] = S.pred[i] >= 0.5 ? 1 : 0;
  save();
}
function nextUnlabelled() {
  for (let k = 1; k <= S.ids.length; k++) {
    const i = (S.index + k) % S.ids.length;
    if (!S.isLabelled[i]) return show(i);
  }
  setStatus("every image is labelled", "saved");
}

async function loadState() {
  const st = await api("GET", "/api/state");
  S.grid = st.grid; S.ids = st.ids; S.isLabelled = st.is_labelled; S.target = st.target;
  S.labelled = st.labelled; S.hasModel = st.has_model; S.modelVersion = st.model_version;
  $("btn-retrain").disabled = st.retrain && st.retrain.state === "running";
  return st;
}

async function retrain() {
  try {
    const r = await api("POST", "/api/retrain", {});
    $("btn-retrain").disabled = true;
    $("retrain-status").textContent = `training on ${r.images} images…`;
  } catch (e) {
    $("retrain-status").textContent = e.message;
    return;
  }
  const poll = async () => {
    let st;
    try { st = await api("GET", "/api/retrain"); } catch (e) { setTimeout(poll, 2000); return; }
    if (st.state === "running") { setTimeout(poll, 1000); return; }
    $("btn-retrain").disabled = false;
    if (st.state === "failed") { $("retrain-status").textContent = `retrain failed: ${st.error}`; return; }
    const acc = st.val_balanced_accuracy;
    const id = S.id, token = S.token;
    await loadState();
    if (token === S.token) { // the user has not moved on: refresh the image shown (its prediction changed)
      const i = S.ids.indexOf(id);
      await show(i >= 0 ? i : S.index);
    }
    $("retrain-status").textContent = `retrained on ${st.images} images` +
      (acc != null ? ` (validation balanced accuracy ${acc.toFixed(3)})` : "") + "; predictions refreshed";
  };
  setTimeout(poll, 1000);
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA")) return;
  const k = ev.key;
  if (k === "n" || k === "ArrowRight") show(S.index + 1);
  else if (k === "p" || k === "ArrowLeft") show(S.index - 1);
  else if (k === "u") nextUnlabelled();
  else if (k === "c") clearMask();
  else if (k === "i") invertMask();
  else if (k === "a") acceptPrediction();
  else if (k === "s") save();
  else return;
  ev.preventDefault();
});

$("btn-prev").addEventListener("click", () => show(S.index - 1));
$("btn-next").addEventListener("click", () => show(S.index + 1));
$("btn-next-unlabelled").addEventListener("click", nextUnlabelled);
$("btn-clear").addEventListener("click", clearMask);
$("btn-invert").addEventListener("click", invertMask);
$("btn-accept").addEventListener("click", acceptPrediction);
$("btn-save").addEventListener("click", () => save());
$("btn-retrain").addEventListener("click", retrain);
window.addEventListener("beforeunload", (ev) => { if (S.pending > 0) { ev.preventDefault(); ev.returnValue = ""; } });

// Beyond loopback the page is opened as /?token=...: the server answered with an HttpOnly cookie
// that every later request carries, so the secret leaves the address bar (and the history).
if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname + location.hash);
}

(async () => {
  try {
    const st = await loadState();
    const h = parseInt(location.hash.slice(1), 10);
    await show(Number.isInteger(h) && h >= 0 && h < S.ids.length ? h : st.current);
    canvas.focus();
  } catch (e) {
    showError(e.message);
  }
})();
