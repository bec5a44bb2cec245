// The introspect tab: pick a run, an image (or upload one), methods, a layer and a class; the server
// computes the maps on the run's warm model (introspect.cam) and this page shows them.
// Plain ES module, no build step; every URL is relative to TensorBoard's plugin base
// (/data/plugin/introspect/).

const STYLE = `
  body { font: 13px/1.4 Roboto, Arial, sans-serif; margin: 12px; color: #212121; }
  h2 { font-size: 15px; margin: 14px 0 6px; }
  .row { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 4px 0; }
  #run-info { color: #424242; }
  #run-info .note { color: #b71c1c; font-weight: bold; }
  #images img { width: 72px; height: 72px; object-fit: cover; border: 3px solid transparent; cursor: pointer; }
  #images img.chosen { border-color: #f57c00; }
  #drop { border: 2px dashed #9e9e9e; padding: 18px 12px; color: #616161; }
  #drop.over { border-color: #f57c00; }
  #methods label { margin-right: 10px; white-space: nowrap; }
  #subjects button { margin: 2px; border: 1px solid #bdbdbd; background: #fafafa; padding: 3px 8px; cursor: pointer; }
  #subjects button.chosen { background: #ffe0b2; border-color: #f57c00; }
  #status { min-height: 18px; }
  #status[data-state="loading"], #status[data-state="computing"] { color: #e65100; }
  #error { color: #b71c1c; font-weight: bold; min-height: 18px; }
  #maps { display: flex; flex-wrap: wrap; gap: 16px; }
  .card { border: 1px solid #e0e0e0; padding: 8px; }
  .card h3 { font-size: 13px; margin: 0 0 6px; }
  .card img { width: 260px; height: 260px; object-fit: contain; image-rendering: pixelated; background: #eee; }
  .scale { width: 260px; height: 10px; margin-top: 4px;
           background: linear-gradient(to right, #00007f, #0000ff, #007fff, #00ffff, #7fff7f, #ffff00, #ff7f00, #ff0000, #7f0000); }
  .scale-labels { display: flex; justify-content: space-between; width: 260px; font-size: 11px; color: #616161; }
  .pair { display: flex; gap: 8px; }
  #layer-slider { width: 320px; }
  select { max-width: 360px; }
`;

const TEMPLATE = `
  <div class="row"><b>run</b> <select id="run"></select> <span id="run-info"></span></div>
  <h2>image</h2>
  <div class="row"><span id="images"></span>
    <label id="drop">drop a photo here, or <input id="upload" type="file" accept="image/png,image/jpeg,image/webp,image/gif,image/bmp"></label></div>
  <h2>methods and layer</h2>
  <div class="row" id="methods"></div>
  <div class="row"><b>layer</b> <select id="layer"></select>
    <input id="layer-slider" type="range" min="0" max="0" value="0"> <span id="layer-name"></span></div>
  <h2>what to explain</h2>
  <div class="row" id="subjects"></div>
  <div class="row"><b>any class</b> <input id="class-search" list="classes" placeholder="search a class by name" size="30">
    <datalist id="classes"></datalist> <button id="class-go">explain it</button> <button id="topk-go">top-k</button></div>
  <div class="row"><span id="status" data-state="idle"></span></div>
  <div class="row"><span id="error"></span></div>
  <div id="maps"></div>
`;

const state = {
  run: null, runToken: 0, model: null, image: null, layer: "", target: null, subject: 0, subjects: [], request: 0,
};

const $ = (id) => document.getElementById(id);
const url = (path, params) => (params ? `${path}?${new URLSearchParams(params)}` : path);

async function getJSON(path, params, options) {
  const response = await fetch(url(path, params), options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message || "";
  if (message) setStatus("error", "");
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// The progress line while a request is under way: the server says whether it loads the model or computes.
function watchProgress(run, label) {
  let stopped = false;
  const started = performance.now();
  const tick = async () => {
    if (stopped) return;
    try {
      const status = await getJSON("status", { run });
      if (stopped) return;
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const what = status.state === "idle" ? label : status.state;
      setStatus(status.state === "loading the model" ? "loading" : "computing", `${what}… ${seconds} s`);
    } catch (error) { /* the request itself reports errors */ }
    if (!stopped) setTimeout(tick, 250);
  };
  setStatus("computing", `${label}…`);
  setTimeout(tick, 150);
  return () => { stopped = true; };
}

async function loadRuns() {
  const { runs } = await getJSON("runs");
  const select = $("run");
  select.innerHTML = "";
  for (const run of runs) select.append(element("option", { value: run.name }, `${run.name} (${run.kind})`));
  state.runs = Object.fromEntries(runs.map((run) => [run.name, run]));
  if (!runs.length) {
    showError("no introspect run in this log dir: run python -m introspect MODEL --image PHOTO --logdir DIR first");
    return;
  }
  await chooseRun(runs[0].name);
}

function describeRun(run) {
  const info = $("run-info");
  info.innerHTML = "";
  info.append(`${run.kind} · ${run.model ?? "model unknown"} · ${run.task ?? "task unknown"} · input ${run.input_size ?? "?"} px · ` +
              `weights ${run.weights ?? "?"} (${run.weights_from ?? "?"})`);
  if (!run.reloadable || run.weights === "random") info.append(" · ", element("span", { class: "note" }, run.note));
  if (run.images_note) info.append(" · ", element("span", { class: "note" }, run.images_note));
}

async function chooseRun(name) {
  const token = ++state.runToken;
  state.run = name;
  state.target = null;
  state.subject = 0;
  state.subjects = [];
  state.model = null;
  $("run").value = name;
  describeRun(state.runs[name]);
  showError("");
  $("maps").innerHTML = "";
  $("subjects").innerHTML = "";
  const { images } = await getJSON("images", { run: name });
  if (token !== state.runToken) return;
  const strip = $("images");
  strip.innerHTML = "";
  for (const image of images) {
    const thumb = element("img", { src: url("image", { run: name, name: image }), title: image,
                                   "data-image": `run:${image}` });
    thumb.addEventListener("click", () => chooseImage(`run:${image}`));
    strip.append(thumb);
  }
  state.image = images.length ? `run:${images[0]}` : null;
  if (!state.runs[name].reloadable) {
    showError(`run ${name} ${state.runs[name].note}`);
    return;
  }
  const stop = watchProgress(name, "loading the model");
  let model;
  try {
    model = await getJSON("model", { run: name });
  } catch (error) {
    if (token === state.runToken) showError(error.message);
    return;
  } finally {
    stop();
  }
  if (token !== state.runToken) return;  // another run was chosen meanwhile
  state.model = model;
  setStatus("idle", "");
  fillChoices(state.model, state.runs[name]);
  markImage();
  if (state.image) await explain();
}

function fillChoices(model, run) {
  const chosen = new Set(run.cam_methods.length ? run.cam_methods : ["gradcam"]);
  const methods = $("methods");
  methods.innerHTML = "<b>methods</b>";
  for (const method of model.methods) {
    const box = element("input", { type: "checkbox", value: method });
    box.checked = chosen.has(method);
    box.addEventListener("change", () => explain());
    const label = element("label");
    label.append(box, ` ${method}`);
    methods.append(label);
  }
  const camLayer = run.cam_layer || model.cam_layer;
  const select = $("layer");
  select.innerHTML = "";
  select.append(element("option", { value: camLayer || "" }, camLayer ? `${camLayer} (the run's CAM layer)` : "the task's own layers"));
  const stages = element("optgroup", { label: "stages" });
  for (const layer of model.stages) if (layer !== camLayer) stages.append(element("option", { value: layer }, layer));
  const every = element("optgroup", { label: "every module" });
  for (const layer of model.layers) every.append(element("option", { value: layer }, layer));
  select.append(stages, every);
  state.layer = camLayer || "";
  state.stages = model.stages.length ? model.stages : [state.layer];
  const slider = $("layer-slider");
  slider.max = String(state.stages.length - 1);
  slider.value = String(Math.max(0, state.stages.indexOf(state.layer)));
  $("layer-name").textContent = state.layer || "(task default)";
  const list = $("classes");
  list.innerHTML = "";
  for (const name of model.categories) list.append(element("option", { value: name }));
}

function markImage() {
  for (const thumb of $("images").querySelectorAll("img")) {
    thumb.classList.toggle("chosen", thumb.dataset.image === state.image);
  }
}

async function chooseImage(key) {
  state.image = key;
  state.target = null;
  state.subject = 0;
  markImage();
  await explain();
}

function methodsChosen() {
  return [...$("methods").querySelectorAll("input:checked")].map((box) => box.value);
}

function showSubjects(subjects, fromTopk) {
  const box = $("subjects");
  if (fromTopk) {
    state.subjects = subjects;
    box.innerHTML = "";
    subjects.forEach((subject, index) => {
      const button = element("button", { "data-subject": String(index), "data-name": subject.name }, subject.caption);
      button.addEventListener("click", () => { state.target = null; state.subject = index; explain(); });
      box.append(button);
    });
  }
  for (const button of box.querySelectorAll("button")) {
    button.classList.toggle("chosen", state.target === null && Number(button.dataset.subject) === state.subject);
  }
}

async function showMaps(found) {
  const holder = $("maps");
  holder.innerHTML = "";
  const loads = [];
  for (const map of found.maps) {
    const card = element("div", { class: "card", "data-method": map.method });
    card.append(element("h3", {}, `${map.method} · ${map.layer} · ${map.subject.caption}`));
    const pair = element("div", { class: "pair" });
    const overlay = element("img", { class: "overlay", src: map.overlay, alt: `${map.method} overlay` });
    const raw = element("img", { class: "heatmap", src: map.heatmap, alt: `${map.method} map` });
    const rawBox = element("div");
    rawBox.append(raw, element("div", { class: "scale" }));
    const labels = element("div", { class: "scale-labels" });
    labels.append(element("span", {}, `min ${map.min.toFixed(3)}`), element("span", {}, `${map.shape.join("×")}`),
                  element("span", {}, `max ${map.max.toFixed(3)}`));
    rawBox.append(labels);
    pair.append(overlay, rawBox);
    const links = element("div", { class: "row" });
    links.append(element("a", { href: map.overlay, download: "" }, "overlay PNG"), " · ",
                 element("a", { href: map.heatmap, download: "" }, "map PNG"), " · ",
                 element("a", { href: map.npy, download: "" }, "map .npy"));
    card.append(pair, links);
    holder.append(card);
    loads.push(overlay.decode(), raw.decode());
  }
  await Promise.all(loads);
}

async function explain() {
  if (!state.run || !state.image || !state.model) return;
  const methods = methodsChosen();
  if (!methods.length) { showError("pick at least one method"); return; }
  const params = { run: state.run, image: state.image, methods: methods.join(","), layer: state.layer,
                   topk: "5", subject: String(state.target === null ? state.subject : 0) };
  if (state.target !== null) params.target = state.target;
  const request = ++state.request;
  showError("");
  const stop = watchProgress(state.run, "computing");
  try {
    const found = await getJSON("explain", params);
    if (request !== state.request) return;
    showSubjects(found.subjects, state.target === null);
    await showMaps(found);
    if (request !== state.request) return;
    const warnings = found.warnings.length ? ` · ${found.warnings.join("; ")}` : "";
    stop();
    setStatus("ready", `${found.cached ? "from memory" : "computed"} in ${found.seconds.toFixed(2)} s${warnings}`);
  } catch (error) {
    if (request === state.request) { stop(); showError(error.message); }
  } finally {
    stop();  // a request overtaken by a newer one stops its progress line too
  }
}

async function upload(file) {
  if (!file) return;
  showError("");
  try {
    const found = await getJSON("upload", null, { method: "POST", body: file,
                                                  headers: { "Content-Type": file.type || "application/octet-stream" } });
    const thumb = element("img", { src: URL.createObjectURL(file), title: file.name, "data-image": found.image });
    thumb.addEventListener("click", () => chooseImage(found.image));
    $("images").append(thumb);
    await chooseImage(found.image);
  } catch (error) {
    showError(error.message);
  }
}

function wire() {
  $("run").addEventListener("change", (event) => chooseRun(event.target.value));
  $("layer").addEventListener("change", (event) => {
    state.layer = event.target.value;
    $("layer-name").textContent = state.layer || "(task default)";
    const at = state.stages.indexOf(state.layer);
    if (at >= 0) $("layer-slider").value = String(at);
    explain();
  });
  $("layer-slider").addEventListener("change", (event) => {
    state.layer = state.stages[Number(event.target.value)] || "";
    $("layer").value = state.layer;
    $("layer-name").textContent = state.layer || "(task default)";
    explain();
  });
  const go = () => {
    const name = $("class-search").value.trim();
    if (!name) return;
    state.target = name;
    explain();
  };
  $("class-go").addEventListener("click", go);
  $("class-search").addEventListener("keydown", (event) => { if (event.key === "Enter") go(); });
  $("topk-go").addEventListener("click", () => { state.target = null; explain(); });
  $("upload").addEventListener("change", (event) => upload(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(event.dataTransfer.files[0]);
  });
}

export async function render() {
  const style = document.createElement("style");
  style.textContent = STYLE;
  document.head.append(style);
  document.body.innerHTML = TEMPLATE;
  wire();
  try {
    await loadRuns();
  } catch (error) {
    showError(error.message);
  }
}
