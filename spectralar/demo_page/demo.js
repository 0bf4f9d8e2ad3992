// The demo page: fills the form from /api/info, reads the server's event streams (fetch, so that a refused
// request's message can be shown), and draws each frame as it arrives. Loads nothing but its own server's files.
"use strict";

const $ = (id) => document.getElementById(id);
const DISPLAY_SCALE = 3;  // previews arrive at scale 1 and are shown as large as the final grid
let info = null;

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function setBusy(busy) {
  $("sample").disabled = busy;
  $("vary").disabled = busy;
  document.body.dataset.state = busy ? "running" : document.body.dataset.state;
}

function fillField(name, spec) {
  const el = $(name);
  el.min = spec.min;
  el.max = spec.max;
  el.value = spec.default;
  const out = $(name + "-out");
  if (out) {
    const show = () => { out.textContent = el.value + " of " + info.num_tokens; };
    el.addEventListener("input", show);
    show();
  }
}

async function init() {
  try {
    const resp = await fetch("/api/info");
    info = await resp.json();
  } catch (e) {
    showMessage("could not reach the server: " + e);
    return;
  }
  $("model").textContent = `This model: ${info.classes.length} classes, ${info.num_tokens} tokens of ` +
    `${info.image_size}x${info.image_size} images.`;
  info.classes.forEach((name, i) => $("cls").add(new Option(name, String(i))));
  if (info.classifier) $("vary-cls").add(new Option("the image's own (classifier's guess)", "auto"));
  info.classes.forEach((name, i) => $("vary-cls").add(new Option(name, String(i))));
  for (const [name, spec] of Object.entries(info.fields)) fillField(name, spec);
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); sample(); });
  $("vary").addEventListener("click", vary);
  document.body.dataset.state = "ready";
}

function query(fields) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(fields)) q.set(k, v);
  return q.toString();
}

function common() {
  return {cfg: $("cfg").value, temperature: $("temperature").value, seed: $("seed").value, num: $("num").value};
}

function sample() {
  run("/api/sample?" + query({cls: $("cls").value, tokens: $("tokens").value, ...common()}), {});
}

function vary() {
  const file = $("upload").files[0];
  if (!file) return fail("choose an image file to vary");
  if (file.size > info.max_upload_bytes) {
    return fail(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the page takes images up to ` +
                `${info.max_upload_bytes / 2 ** 20} MB`);
  }
  const q = query({cls: $("vary-cls").value, keep: $("keep").value, name: file.name, ...common()});
  run("/api/vary?" + q, {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}});
}

function fail(text) {
  showMessage(text);
  document.body.dataset.state = "error";
}

// One server-sent event ("event: NAME\ndata: JSON") -> [name, object].
function parseEvent(frame) {
  let name = "message", data = "";
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  return [name, JSON.parse(data)];
}

function draw(ev, scale) {
  const img = $("preview");
  img.src = ev.image;
  img.width = ev.width * scale;
  img.height = ev.height * scale;
  img.hidden = false;
}

function onEvent(name, ev) {
  if (name === "step") {
    draw(ev, DISPLAY_SCALE);
    $("progress").textContent = `token ${ev.index} of ${ev.total}`;
  } else if (name === "done") {
    draw(ev, 1);
    const a = $("download");
    a.href = ev.image;
    a.download = ev.filename;
    a.hidden = false;
    $("progress").textContent = `done: ${ev.total} tokens`;
    $("note").textContent = ev.note;
    $("command").textContent = ev.command;
    document.body.dataset.state = "done";
  } else if (name === "error") {
    fail(ev.error);
  }
}

async function run(url, options) {
  showMessage("");
  $("download").hidden = true;
  $("progress").textContent = "starting";
  setBusy(true);
  try {
    const resp = await fetch(url, options);
    if (!resp.ok) {
      const body = await resp.text();
      let text = `the server answered ${resp.status}`;
      try { text = JSON.parse(body).error; } catch (e) { /* not JSON: keep the status line */ }
      $("progress").textContent = "";
      return fail(text);
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        onEvent(...parseEvent(buf.slice(0, end)));
        buf = buf.slice(end + 2);
      }
    }
    if (document.body.dataset.state === "running") fail("the stream ended early; see the server's log");
  } catch (e) {
    fail("the request failed: " + e);
  } finally {
    setBusy(false);
  }
}

document.addEventListener("DOMContentLoaded", init);
