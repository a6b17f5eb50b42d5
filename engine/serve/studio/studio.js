// nanoedit studio: one page on the gateway's own API. No framework, no build step, no CDN;
// the Content-Security-Policy allows only this script and its stylesheet. The key (when the
// server wants one) stays in this browser's local storage and goes only to this server, in the
// Authorization header: images are fetched with it and shown from blob: URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "nanoedit.key";
const state = {
  key: localStorage.getItem(KEY) || "",
  current: null, // the open session (as GET /v1/sessions/{id}?tree=1 answers it)
  attachments: [], // {name, mime, data (base64)}
  images: new Map(), // sha256 -> blob: URL
  running: false,
  models: new Map(), // id -> {image_price_usd, sizes, default_size, status} from /v1/models
};

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

function headers(json) {
  const h = {};
  if (state.key) h.Authorization = "Bearer " + state.key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(resp) {
  let message = resp.status + " " + resp.statusText;
  try {
    const body = await resp.json();
    if (body && body.error) message = body.error.type + ": " + body.error.message;
  } catch (_) { /* not JSON */ }
  if (resp.status === 401) askKey();
  return new Error(message);
}

async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp);
  return resp.status === 204 ? null : resp.json();
}

async function imageUrl(sha) {
  if (state.images.has(sha)) return state.images.get(sha);
  const resp = await fetch("/v1/images/" + sha, { headers: headers(false) });
  if (!resp.ok) throw await failure(resp);
  const url = URL.createObjectURL(await resp.blob());
  state.images.set(sha, url);
  return url;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function money(usd) {
  return "$" + Number(usd || 0).toFixed(4);
}

// --- key -------------------------------------------------------------------------------------

function askKey() {
  $("app").hidden = true;
  $("key-panel").hidden = false;
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key-input").value.trim();
  localStorage.setItem(KEY, state.key);
  $("key-input").value = "";
  start();
});

$("forget-key").addEventListener("click", () => {
  localStorage.removeItem(KEY);
  state.key = "";
  askKey();
});

// --- sessions --------------------------------------------------------------------------------

async function loadSessions() {
  const { sessions } = await api("GET", "/v1/sessions");
  const list = $("sessions");
  list.replaceChildren();
  for (const s of sessions) {
    const label = (s.title || s.id.slice(0, 8)) + " · " + s.turns + " turn" + (s.turns === 1 ? "" : "s");
    const button = el("button", { type: "button", "data-id": s.id, text: label, onclick: () => openSession(s.id) });
    if (state.current && state.current.id === s.id) button.classList.add("current");
    list.append(el("li", {}, button));
  }
}

$("new-session").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = { model: $("new-model").value, title: $("new-title").value };
  const ratio = $("new-ratio").value, size = $("new-size").value;
  if (ratio || size) body.image_config = { aspect_ratio: ratio || null, image_size: size || null };
  try {
    const session = await api("POST", "/v1/sessions", body);
    $("new-title").value = "";
    await openSession(session.id);
    setStatus("session created");
  } catch (err) {
    setStatus(err.message, true);
  }
});

async function openSession(id) {
  state.current = await api("GET", "/v1/sessions/" + id + "?tree=1");
  $("session").hidden = false;
  await render();
  await loadSessions();
  follow(id);
}

// The events of a `text/event-stream` response, as the JSON of their data lines (with the
// `event:` name as `type` when the data has none).
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, cut).split("\n");
      buffer = buffer.slice(cut + 2);
      const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      const name = (lines.find((l) => l.startsWith("event: ")) || "").slice(7);
      yield { type: name, ...JSON.parse(data) };
    }
  }
}

// Live: the open session's events (a turn started elsewhere -- another tab, a script, a chat
// product -- shows while it runs and appears when it lands).
async function follow(id) {
  if (state.following === id) return;
  if (state.follower) state.follower.abort();
  const controller = new AbortController();
  state.follower = controller;
  state.following = id;
  try {
    const resp = await fetch("/v1/sessions/" + id + "/events", { headers: headers(false), signal: controller.signal });
    if (!resp.ok) return;
    for await (const event of sseEvents(resp)) {
      if (state.running || state.following !== id) continue; // our own turn shows itself
      if (event.type === "turn.started") setStatus("a turn started elsewhere…");
      if (event.type === "turn.completed" || event.type === "session.updated") {
        state.current = await api("GET", "/v1/sessions/" + id + "?tree=1");
        await render();
        setStatus("updated: a turn landed");
      }
    }
  } catch (_) { /* aborted, or the server went away: the next open follows again */ }
  if (state.following === id) state.following = null;
}

async function render() {
  const s = state.current;
  $("session-title").textContent = s.title || "session " + s.id.slice(0, 8);
  $("session-cost").textContent = "total " + money(s.cost_usd) + " · " + s.turns.length + " turns";
  $("undo").disabled = !s.head;
  // Redo needs a turn after the head (a new session, or the tip, has none: the API says 409).
  const next = (s.branches || []).flat().filter((t) => t.parent === (s.head || null));
  $("redo").disabled = next.length === 0;
  $("regenerate").disabled = !s.head;
  const timeline = $("timeline");
  timeline.replaceChildren();
  for (const t of s.turns) {
    const item = el("li", { class: "turn" + (t.id === s.head ? " head" : ""), "data-index": String(t.index) });
    item.append(el("div", { class: "prompt", text: t.index + ". " + t.prompt }));
    for (const img of t.input_images) item.append(await imageNode(img, "input image"));
    if (t.text) item.append(el("div", { class: "text", text: t.text }));
    for (const img of t.images) {
      const shot = el("div", { class: "shot" }, await imageNode(img, "turn " + t.index));
      if (t.region && img.width) { // the area a region edit could change, drawn on demand
        const [x0, y0, x1, y1] = t.region, pct = (v, of) => (100 * v / of).toFixed(2) + "%";
        shot.append(el("div", { class: "region-box", title: "the region this edit could change" }));
        const box = shot.lastChild;
        box.style.left = pct(x0, img.width);
        box.style.top = pct(y0, img.height);
        box.style.width = pct(x1 - x0, img.width);
        box.style.height = pct(y1 - y0, img.height);
      }
      item.append(shot);
      if (t.region && img.width) {
        item.append(el("button", { type: "button", class: "toggle-region", text: "Show region",
          onclick: (e) => {
            const on = item.classList.toggle("show-region");
            e.target.textContent = on ? "Hide region" : "Show region";
          } }));
      }
    }
    const u = t.usage || {};
    item.append(el("div", {
      class: "meta",
      text: money(t.cost_usd) + " · " + (u.prompt_tokens || 0) + " in / " + (u.output_tokens || 0) +
        " out tokens · " + t.latency_s.toFixed(1) + " s" + (t.attempts > 1 ? " · " + t.attempts + " attempts" : ""),
    }));
    timeline.append(item);
  }
  await renderTree();
  renderCompare();
  await renderTakes();
  await renderRegion();
  estimate();
}

// The head turn's siblings of the same prompt (a "takes" turn, or regenerations): a grid to
// pick from; the others stay as branches.
async function renderTakes() {
  const s = state.current, box = $("takes");
  const all = (s.branches || []).flat();
  const head = all.find((t) => t.id === s.head);
  const seen = new Set();
  const takes = head ? all.filter((t) => t.parent === head.parent && t.index === head.index &&
    !seen.has(t.id) && seen.add(t.id)) : [];
  box.replaceChildren();
  box.hidden = takes.length < 2;
  for (const t of takes) {
    const figure = el("figure", { class: t.id === s.head ? "head" : "", "data-turn": t.id });
    if (t.images.length) figure.append(el("img", { src: await imageUrl(t.images[0].sha256), alt: "take" }));
    figure.append(t.id === s.head ? el("figcaption", { text: "shown" })
      : el("button", { type: "button", text: "Use this take", onclick: () => move("checkout", { turn: t.id }) }));
    box.append(figure);
  }
}

// Before sending: the catalog's price of an image of the session's model (at the size its
// last image has, else the model's default), times the takes; after, the real cost shows.
function estimate() {
  const s = state.current, takes = Number($("variants").value) || 1;
  const model = state.models.get(s.model);
  const last = s.turns[s.turns.length - 1];
  let size = model ? model.default_size : null;
  if (model && last && last.images.length) {
    const side = Math.max(last.images[0].width, last.images[0].height);
    size = side > 3000 ? "4K" : side > 1600 ? "2K" : side > 700 ? "1K" : "512";
    if (!(size in model.image_price_usd)) size = model.default_size;
  }
  const each = model ? model.image_price_usd[size] : last ? last.cost_usd : null;
  $("estimate").textContent = each == null ? "" : "≈ " + money(each * takes) + " (" +
    (takes > 1 ? takes + " takes × " : "") + money(each) + (model ? " per " + size + " image)" : ", as the last turn)");
}
$("variants").addEventListener("input", () => estimate());

// --- region: paint (or drag a box over) what may change -----------------------------------

const region = { painted: false, start: null, drawing: false };

async function renderRegion() {
  const s = state.current;
  const head = s.turns.find((t) => t.id === s.head);
  const image = head && head.images[0];
  $("region-panel").hidden = !image;
  if (!image) return;
  const img = $("region-img"), canvas = $("region-canvas");
  if (img.dataset.sha !== image.sha256) {
    img.src = await imageUrl(image.sha256);
    img.dataset.sha = image.sha256;
    canvas.width = image.width;
    canvas.height = image.height;
    clearRegion();
  }
}

function clearRegion() {
  const canvas = $("region-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  region.painted = false;
}

function canvasPoint(e) {
  const canvas = $("region-canvas"), r = canvas.getBoundingClientRect();
  return { x: (e.clientX - r.left) * canvas.width / r.width, y: (e.clientY - r.top) * canvas.height / r.height,
    scale: canvas.width / r.width };
}

function paintAt(p) {
  const ctx = $("region-canvas").getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(p.x, p.y, Number($("region-brush").value) * p.scale / 2, 0, Math.PI * 2);
  ctx.fill();
  region.painted = true;
}

$("region-canvas").addEventListener("pointerdown", (e) => {
  region.drawing = true;
  region.start = canvasPoint(e);
  if ($("region-tool").value === "paint") paintAt(region.start);
});
$("region-canvas").addEventListener("pointermove", (e) => {
  if (!region.drawing) return;
  const p = canvasPoint(e);
  if ($("region-tool").value === "paint") return paintAt(p);
  const canvas = $("region-canvas"), ctx = canvas.getContext("2d"), a = region.start;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#fff";
  ctx.fillRect(Math.min(a.x, p.x), Math.min(a.y, p.y), Math.abs(p.x - a.x), Math.abs(p.y - a.y));
  region.painted = true;
});
for (const name of ["pointerup", "pointerleave"]) {
  $("region-canvas").addEventListener(name, () => { region.drawing = false; });
}
$("region-clear").addEventListener("click", clearRegion);

// The painted area as a mask the size of the head image: white may change, black stays.
function regionMask() {
  if (!region.painted || !$("region-panel").open) return null;
  const paint = $("region-canvas"), mask = document.createElement("canvas");
  mask.width = paint.width;
  mask.height = paint.height;
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, mask.width, mask.height);
  ctx.drawImage(paint, 0, 0);
  return mask.toDataURL("image/png").split(",", 2)[1];
}

async function imageNode(img, alt) {
  const url = await imageUrl(img.sha256);
  const node = el("img", { src: url, alt, width: String(img.width), height: String(img.height),
    draggable: "true", title: "click: full size · drag: into the reference tray" });
  node.addEventListener("dragstart", (e) => e.dataTransfer.setData("application/x-nanoedit-image", img.sha256));
  node.addEventListener("click", () => fullSize(url, img.sha256));
  return node;
}

// Full size: the image alone over the page, at its own pixels (scrolls if larger), and a
// download link.
function fullSize(url, sha) {
  const view = $("viewer");
  view.replaceChildren(el("img", { src: url, alt: "full size" }),
    el("a", { href: url, download: sha.slice(0, 12) + ".png", text: "Download" }));
  view.hidden = false;
}

// Every branch as a row of turns: a thumbnail and the prompt of each (not bare numbers).
async function renderTree() {
  const tree = $("tree");
  tree.replaceChildren();
  const s = state.current;
  for (const [n, branch] of (s.branches || []).entries()) {
    const row = el("li", { text: "branch " + (n + 1) + ": " });
    for (const t of branch) {
      const b = el("button", { type: "button", title: t.prompt, "data-turn": t.id,
        onclick: () => move("checkout", { turn: t.id }) });
      if (t.images.length) b.append(el("img", { src: await imageUrl(t.images[0].sha256), alt: "turn " + t.index }));
      b.append(el("span", { text: t.index + ". " + t.prompt }));
      if (t.id === s.head) b.classList.add("head");
      row.append(b);
    }
    tree.append(row);
  }
}

function renderCompare() {
  // Any two turns of the session, across branches.
  const seen = new Set();
  const all = [...state.current.turns, ...(state.current.branches || []).flat()]
    .filter((t) => !seen.has(t.id) && seen.add(t.id));
  const withImages = all.filter((t) => t.images.length);
  for (const [id, pick] of [["compare-a", 0], ["compare-b", withImages.length - 1]]) {
    const select = $(id);
    select.replaceChildren();
    withImages.forEach((t, n) => {
      const option = el("option", { value: t.images[0].sha256,
        text: "turn " + t.index + ": " + t.prompt.slice(0, 40) });
      if (n === pick) option.selected = true;
      select.append(option);
    });
  }
  showCompare();
}

async function showCompare() {
  const a = $("compare-a").value, b = $("compare-b").value;
  if (!a || !b) return;
  $("compare-img-a").src = await imageUrl(a);
  $("compare-img-b").src = await imageUrl(b);
  clipCompare();
}

function clipCompare() {
  const pct = Number($("compare-slider").value);
  $("compare-clip").style.width = pct + "%";
  $("compare-img-b").style.width = $("compare-img-a").clientWidth + "px";
}

$("compare-a").addEventListener("change", showCompare);
$("compare-b").addEventListener("change", showCompare);
$("compare-slider").addEventListener("input", clipCompare);

async function move(op, body) {
  try {
    state.current = await api("POST", "/v1/sessions/" + state.current.id + "/" + op, body || {});
    state.current = await api("GET", "/v1/sessions/" + state.current.id + "?tree=1");
    await render();
    await loadSessions();
    setStatus(op + " done");
  } catch (err) {
    setStatus(err.message, true);
  }
}

$("rename").addEventListener("click", async () => {
  const title = prompt("Title of this session", state.current.title || "");
  if (title === null) return;
  try {
    state.current = await api("PATCH", "/v1/sessions/" + state.current.id, { title });
    state.current = await api("GET", "/v1/sessions/" + state.current.id + "?tree=1");
    await render();
    await loadSessions();
    setStatus("renamed");
  } catch (err) {
    setStatus(err.message, true);
  }
});
$("delete").addEventListener("click", async () => {
  if (!confirm("Delete this session and its images?")) return;
  try {
    await api("DELETE", "/v1/sessions/" + state.current.id);
    state.current = null;
    $("session").hidden = true;
    await loadSessions();
    setStatus("session deleted");
  } catch (err) {
    setStatus(err.message, true);
  }
});
$("viewer").addEventListener("click", (e) => { if (e.target.tagName !== "A") $("viewer").hidden = true; });
$("undo").addEventListener("click", () => move("undo"));
$("redo").addEventListener("click", () => move("redo"));
$("fork").addEventListener("click", async () => {
  try {
    const child = await api("POST", "/v1/sessions/" + state.current.id + "/fork", {});
    await openSession(child.id);
    setStatus("forked into " + child.id.slice(0, 8));
  } catch (err) {
    setStatus(err.message, true);
  }
});
$("cancel").addEventListener("click", () =>
  api("POST", "/v1/sessions/" + state.current.id + "/cancel", {}).catch((e) => setStatus(e.message, true)));
$("export").addEventListener("click", async (e) => {
  e.preventDefault();
  const resp = await fetch("/v1/sessions/" + state.current.id + "/export", { headers: headers(false) });
  if (!resp.ok) return setStatus((await failure(resp)).message, true);
  const link = el("a", { href: URL.createObjectURL(await resp.blob()), download: state.current.id + ".json" });
  link.click();
});

// --- turns -----------------------------------------------------------------------------------

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// The reference tray: each image with a role (what the model should take from it).
const ROLES = ["", "subject", "style", "object", "character", "background"];

function addToTray(item, src) {
  state.attachments.push(item);
  const role = el("select", { "aria-label": "role", onchange: (e) => { item.role = e.target.value; } });
  for (const r of ROLES) role.append(el("option", { value: r, text: r || "no role" }));
  $("attachments").append(el("figure", { class: "ref" }, el("img", { src, alt: item.name }), role));
}

async function attach(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const data = await readFile(file);
    addToTray({ name: file.name, mime: file.type, data, role: "" }, "data:" + file.type + ";base64," + data);
  }
}

function trayImages() {
  return state.attachments.map((a) => {
    const image = a.sha256 ? { sha256: a.sha256 } : { data: a.data, mime_type: a.mime };
    if (a.role) image.role = a.role;
    return image;
  });
}

$("files").addEventListener("change", (e) => attach(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const sha = e.dataTransfer.getData("application/x-nanoedit-image");
  if (sha) { // a past turn's image, dragged from the timeline: sent by reference
    addToTray({ name: "turn image", sha256: sha, role: "" }, await imageUrl(sha));
    return;
  }
  attach(e.dataTransfer.files);
});

function progress(text) {
  const p = $("progress");
  p.hidden = !text;
  p.textContent = text || "";
}

async function streamTurn(path, body) {
  state.running = true;
  $("send").disabled = true;
  $("cancel").hidden = false;
  let thinking = "", answer = "", line = "starting…", ended = null;
  const started = Date.now();
  const show = () => progress([line + " · " + ((Date.now() - started) / 1000).toFixed(0) + " s",
    thinking && "thinking: " + thinking.slice(-300), answer].filter(Boolean).join("\n"));
  const clock = setInterval(show, 500); // a generation takes 20-40 s: the time keeps moving
  show();
  try {
    const resp = await fetch(path, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    if (!resp.ok) throw await failure(resp);
    for await (const event of sseEvents(resp)) {
      switch (event.type) {
        case "turn.started": line = "turn " + event.turn + " started"; break;
        case "turn.text_delta":
          if (event.thought) thinking += event.text; else answer += event.text;
          break;
        case "turn.retrying": line = "retrying: " + event.error; break;
        case "turn.image": if (!event.thought) line = "image received (" + event.image.width + "×" + event.image.height + ")"; break;
        case "turn.completed": ended = "completed"; break;
        case "turn.failed": ended = "failed: " + event.error_type + ": " + event.error; break;
        case "turn.cancelled": ended = "cancelled"; break;
      }
      show();
    }
    setStatus("turn " + (ended || "ended"), ended !== "completed");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    clearInterval(clock);
    state.running = false;
    $("send").disabled = false;
    $("cancel").hidden = true;
    progress("");
    if (state.current) await openSession(state.current.id);
  }
  return ended;
}

$("prompt-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (state.running) return;
  const text = $("prompt").value.trim();
  const images = trayImages();
  const body = { text, images, stream: true, variants: Number($("variants").value) || 1 };
  const mask = regionMask();
  if (mask) body.mask = { data: mask };
  const ended = await streamTurn("/v1/sessions/" + state.current.id + "/turns", body);
  if (ended === "completed") { // a cancelled or failed turn keeps what was typed, to send again
    $("prompt").value = "";
    state.attachments = [];
    $("attachments").replaceChildren();
    clearRegion();
  }
});

$("regenerate").addEventListener("click", () =>
  streamTurn("/v1/sessions/" + state.current.id + "/regenerate", { stream: true }));

// --- start -----------------------------------------------------------------------------------

// The model list comes from the server's catalog (GET /v1/models, the OpenAI-shaped listing):
// every model id it serves, the default first; aliases stay out of the menu.
async function loadModels() {
  const listing = await api("GET", "/v1/models");
  for (const m of listing.data) if (m.nanoedit) state.models.set(m.id, m.nanoedit);
  const ids = listing.data.map((m) => m.id).filter((id) => id.startsWith("gemini-"));
  if (!ids.length) return;
  const select = $("new-model");
  select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  if (ids.includes("gemini-nano-banana-2.1")) select.value = "gemini-nano-banana-2.1";
}

async function start() {
  try {
    await loadSessions();
    await loadModels();
  } catch (err) {
    // No key yet: the key screen asks for one; that is no error. A key that was typed and
    // refused is.
    if (!state.key && !$("key-panel").hidden) setStatus("this server needs an API key");
    else setStatus(err.message, true);
    return;
  }
  $("key-panel").hidden = true;
  $("app").hidden = false;
  $("forget-key").hidden = !state.key;
  setStatus("ready");
}

start();
