// signflow's page: identify, verify and correct a signature; the model folder's dashboard.
//
// It reads /ui/config.json first: in "signflow" mode every route of signflow's server is
// there; in "tf-serving" mode (`signflow ui --api URL`) only TF Serving's /v1 API is, and
// the page says what needs signflow's server instead of failing.

import { Api, ApiError, megabytes, rejectionText, token } from "./api.js";
import { SignaturePad } from "./pad.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif"];
const PREDICT_LABEL = "predict_label";
const VERIFY = "verify";
const TOP = 5;
// Waiting for the server to serve the version a rollback left on top: its folder poll is
// one second by default; past this the page says so and stops waiting.
const ROLLBACK_WAIT_MS = 60000;
const ROLLBACK_POLL_MS = 500;

const $ = (id) => document.getElementById(id);

const state = {
  config: null,
  api: null,
  model: null,
  servingVersion: null,
  labels: new Map(), // version -> labels, from the versions route
  upload: null, // {b64, type, name, size}
  verify: false,
  dashboardLoaded: false,
};

let pad;

// -- small DOM helpers ---------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// A message region: kind "" (plain), "busy", "ok", "error"; an ApiError also shows what the server said.
function say(region, text, kind = "", detail = "") {
  region.replaceChildren();
  region.className = `message ${kind}`.trim();
  if (!text) return;
  region.append(el("span", { text }));
  if (detail) region.append(el("span", { class: "detail", text: `The server said: ${detail}` }));
}

function sayError(region, error) {
  if (error instanceof ApiError) say(region, error.message, "error", error.detail);
  else {
    console.error(error);
    say(region, "Something went wrong in the page. Reload it and try again.", "error");
  }
}

function percent(value) {
  return `${(100 * value).toFixed(1)}%`;
}

function when(seconds) {
  if (typeof seconds !== "number") return "—";
  const date = new Date(seconds * 1000);
  const delta = Math.round((seconds * 1000 - Date.now()) / 1000);
  const size = Math.abs(delta);
  const amount = size < 90 ? `${size} s` : size < 5400 ? `${Math.round(size / 60)} min`
    : size < 172800 ? `${Math.round(size / 3600)} h` : `${Math.round(size / 86400)} days`;
  const relative = delta >= 0 ? `in ${amount}` : `${amount} ago`;
  return `${date.toLocaleString()} (${relative})`;
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// -- start ---------------------------------------------------------------------------------

async function start() {
  setUpTabs();
  setUpPad();
  setUpUpload();
  $("identify").addEventListener("click", () => busy($("identify"), identify));
  $("verify-button").addEventListener("click", () => busy($("verify-button"), verify));
  $("feedback-send").addEventListener("click", () => busy($("feedback-send"), sendFeedback));
  $("feedback-label").addEventListener("input", () => {
    // A name the person typed is theirs: the next answer no longer replaces it (an emptied field takes it again).
    $("feedback-label").dataset.auto = "false";
    updateFeedbackButton();
  });
  $("refresh").addEventListener("click", () => busy($("refresh"), loadDashboard));
  $("model").addEventListener("change", () => selectModel($("model").value));
  // Cancel is not a submit button: Enter in a dialog's field means the dialog's action.
  for (const button of document.querySelectorAll(".dialog-cancel")) {
    button.addEventListener("click", () => button.closest("dialog").close("cancel"));
  }

  try {
    const answer = await fetch("config.json", { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    state.config = await answer.json();
  } catch (error) {
    say($("page-error"), "The server that sent this page is not answering. Check that it is running, then reload.",
      "error");
    $("page-error").hidden = false;
    $("serving-line").textContent = "Not connected";
    return;
  }
  state.api = new Api(state.config);
  describeMode();
  const models = state.config.models;
  $("model").replaceChildren(...models.map((name) => el("option", { value: name, text: name })));
  $("model-picker").hidden = models.length < 2;
  if (!models.length) {
    $("serving-line").textContent = "This server serves no model.";
    return;
  }
  await selectModel(models[0]);
  document.body.dataset.ready = "true";
}

function describeMode() {
  const config = state.config;
  const note = $("mode-note");
  if (config.mode === "tf-serving") {
    note.textContent = `This page talks to TF Serving at ${config.api}. TF Serving has no feedback, status or `
      + "rollback routes: corrections and the dashboard need signflow's own server (signflow serve).";
    note.hidden = false;
  }
  const off = $("feedback-off");
  if (config.mode === "tf-serving") {
    off.textContent = "Sending a correction needs signflow's server: TF Serving has no feedback route.";
  } else if (!config.feedback.enabled) {
    off.textContent = "This server does not take corrections: it was started without --feedback_dir.";
  }
  const feedbackOn = config.mode !== "tf-serving" && config.feedback.enabled;
  off.hidden = feedbackOn;
  $("feedback-form").hidden = !feedbackOn;
}

async function selectModel(name) {
  state.model = name;
  state.labels.clear();
  state.servingVersion = null;
  $("identify-result").hidden = true;
  say($("verify-message"), "");
  await refreshServing();
  if (!$("panel-dashboard").hidden) await loadDashboard();
}

// The version serving now, whether it verifies, and its labels.
async function refreshServing() {
  const line = $("serving-line");
  let statuses;
  try {
    statuses = await state.api.modelStatus(state.model);
  } catch (error) {
    line.textContent = error.kind === "not-ready"
      ? `Model ${state.model}: no version ready yet` : `Model ${state.model}: ${error.message}`;
    showVerify(false);
    return;
  }
  const available = statuses.filter((s) => s.state === "AVAILABLE").map((s) => Number(s.version));
  const loading = statuses.some((s) => s.state === "START" || s.state === "LOADING");
  state.servingVersion = available.length ? Math.max(...available) : null;
  if (state.servingVersion === null) {
    line.textContent = loading ? `Model ${state.model}: loading…` : `Model ${state.model}: no version ready yet`;
    showVerify(false);
    return;
  }
  line.textContent = `Model ${state.model} · version ${state.servingVersion} serving`;
  await detectVerify(state.servingVersion);
  if (state.config.dashboard) {
    try {
      await labelsFor(state.servingVersion);
    } catch (error) {
      // The labels only fill the suggestions; identify asks again and reports a failure there.
    }
  }
}

// Verify is shown only when the serving version's signatures include it, as its metadata says.
async function detectVerify(version) {
  let available = false;
  try {
    const metadata = await state.api.metadata(state.model, version);
    const signatures = metadata?.metadata?.signature_def?.signature_def || {};
    const signature = signatures[VERIFY];
    available = Boolean(signature && signature.inputs && signature.outputs
      && "image_bytes" in signature.inputs && "claimed_signer" in signature.inputs
      && "score" in signature.outputs && "genuine" in signature.outputs);
  } catch (error) {
    available = false;
  }
  showVerify(available);
}

function showVerify(available) {
  state.verify = available;
  $("verify").hidden = !available;
}

async function labelsFor(version) {
  if (state.labels.has(version)) return state.labels.get(version);
  const listing = await state.api.versions(state.model);
  for (const entry of listing.versions) {
    if (entry.place === "live" && entry.labels.length) state.labels.set(entry.version, entry.labels);
  }
  const labels = state.labels.get(version) || null;
  if (labels) setKnownLabels(labels);
  return labels;
}

function setKnownLabels(labels) {
  $("known-labels").replaceChildren(...labels.map((label) => el("option", { value: label })));
}

// -- tabs -------------------------------------------------------------------------------------

function setUpTabs() {
  const tabs = [$("tab-signature"), $("tab-dashboard")];
  const show = (tab, focus = false) => {
    for (const each of tabs) {
      const selected = each === tab;
      each.setAttribute("aria-selected", String(selected));
      each.tabIndex = selected ? 0 : -1;
      $(each.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", tab === tabs[1] ? "#dashboard" : "#");
    if (tab === tabs[1] && state.api) loadDashboard();
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      show(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length], true);
    });
  }
  if (location.hash === "#dashboard") {
    // Shown once the config is read (start() ends by selecting the model, which loads it).
    tabs[0].setAttribute("aria-selected", "false");
    tabs[0].tabIndex = -1;
    tabs[1].setAttribute("aria-selected", "true");
    tabs[1].tabIndex = 0;
    $("panel-signature").hidden = true;
    $("panel-dashboard").hidden = false;
  }
}

// -- the image: drawn or uploaded -------------------------------------------------------------

function setUpPad() {
  const canvas = $("pad");
  pad = new SignaturePad(canvas, {
    onChange: () => {
      $("undo").disabled = pad.isEmpty();
      $("clear").disabled = pad.isEmpty();
      $("pad-hint").hidden = !pad.isEmpty();
    },
  });
  const width = $("pen-width");
  const showWidth = () => {
    pad.setPenWidth(Number(width.value));
    $("pen-width-value").textContent = width.value;
  };
  width.addEventListener("input", showWidth);
  showWidth();
  $("undo").addEventListener("click", () => pad.undo());
  $("clear").addEventListener("click", () => pad.clear());
  for (const radio of document.querySelectorAll("input[name=source]")) {
    radio.addEventListener("change", () => {
      $("source-draw").hidden = source() !== "draw";
      $("source-upload").hidden = source() !== "upload";
      if (source() === "draw") pad.resize();
    });
  }
}

function source() {
  return document.querySelector("input[name=source]:checked").value;
}

function setUpUpload() {
  const zone = $("drop-zone");
  $("choose-file").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", () => {
    if ($("file").files.length) takeFile($("file").files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) takeFile(file);
  });
}

async function takeFile(file) {
  const message = $("identify-message");
  state.upload = null;
  $("preview").hidden = true;
  $("file-name").textContent = file.name;
  if (!IMAGE_TYPES.includes(file.type)) {
    say(message, `“${file.name}” is not a PNG, JPEG or GIF image, so it cannot be sent.`, "error");
    return;
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  state.upload = { b64: toBase64(bytes), type: file.type, name: file.name, size: bytes.length };
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  say(message, `“${file.name}” is ready. Choose “Identify the signer”.`);
}

function toBase64(bytes) {
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

// The image to send as base64, or an ApiError saying why there is none.
function currentImage() {
  let b64;
  if (source() === "draw") {
    if (pad.isEmpty()) throw new ApiError("Draw a signature on the pad first.");
    b64 = pad.toPngBase64();
  } else {
    if (!state.upload) throw new ApiError("Choose or drop a PNG, JPEG or GIF image first.");
    b64 = state.upload.b64;
  }
  const limit = state.config.max_request_bytes;
  // The JSON around the base64 text is a few dozen bytes; leave room for a label.
  if (limit && b64.length + 1024 > limit) {
    const size = Math.floor((b64.length * 3) / 4);
    throw new ApiError(`The image is too large to send: it is ${megabytes(size)}, and the server accepts `
      + `requests up to ${megabytes(limit)} (about ${megabytes(Math.floor(limit * 0.74))} of image). `
      + "Try a smaller image.", { kind: "too-large" });
  }
  return b64;
}

// -- identify ---------------------------------------------------------------------------------

async function identify() {
  const message = $("identify-message");
  let b64;
  try {
    b64 = currentImage();
  } catch (error) {
    sayError(message, error);
    return;
  }
  say(message, "Asking the model…", "busy");
  try {
    const answer = await state.api.predict(state.model, PREDICT_LABEL, [{ image_bytes: { b64 } }]);
    const prediction = answer.predictions[0];
    let version = answer.version;
    let versionNote = "";
    let labels = null;
    if (state.config.dashboard && version !== null) {
      // Without the folder's labels the bars are still right, only named by their class number.
      labels = await labelsFor(version).catch(() => null);
    } else {
      // TF Serving says neither the version nor the label order: its model status and
      // :classify (which names every class) do.
      const named = await state.api.classify(state.model, b64);
      labels = named.map((pair) => pair[0]);
      setKnownLabels(labels);
      await refreshServing();
      version = state.servingVersion;
      versionNote = " (the version TF Serving reports as available)";
    }
    showPrediction(prediction, labels, version, versionNote);
    say(message, "");
  } catch (error) {
    await sayServingError(message, error);
  }
}

function showPrediction(prediction, labels, version, versionNote) {
  const probabilities = prediction.probabilities;
  const ranked = probabilities.map((p, index) => ({ p, index })).sort((a, b) => b.p - a.p).slice(0, TOP);
  const name = (index) => (labels && labels[index] !== undefined ? labels[index] : `class ${index}`);
  // The open set's answer is no signer: its score is a similarity to the nearest signer's references, not a
  // probability, and it is never offered as a name for feedback or verification.
  const unknown = prediction.label === state.config.unknown_label;
  $("top-label").textContent = prediction.label;
  const similarity = Number(prediction.score).toFixed(3);
  $("top-score").textContent = unknown ? `similarity ${similarity}` : percent(prediction.score);
  $("unknown-note").textContent = unknown
    ? `No enrolled signer is close enough: the most likely, ${name(ranked[0].index)}, is at similarity ${similarity} `
      + "to its references." : "";
  $("unknown-note").hidden = !unknown;
  $("identify-result").dataset.unknown = String(unknown);
  $("answered-by").textContent = version !== null && version !== undefined
    ? `Answered by version ${version}${versionNote}` : "The answering version is not known";
  $("answered-by").dataset.version = version ?? "";
  $("top5").replaceChildren(...ranked.map(({ p, index }) => el("li", {
    class: "bar-row", dataset: { label: name(index), probability: String(p), index: String(index) },
  },
  el("span", { class: "bar-label", text: name(index), title: name(index) }),
  el("span", { class: "bar-track", "aria-hidden": "true" }, barFill(p)),
  el("span", { class: "bar-value", text: percent(p) }))));
  $("identify-result").hidden = false;
  const offered = unknown ? "" : prediction.label;
  if (!$("feedback-label").value || $("feedback-label").dataset.auto === "true") {
    $("feedback-label").value = offered;
    $("feedback-label").dataset.auto = "true";
  }
  if (!$("claimed").value) $("claimed").value = offered;
  updateFeedbackButton();
}

function barFill(fraction) {
  const fill = el("span", { class: "bar-fill" });
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  return fill;
}

// Words for a failed call to the model; "not ready" is told apart as loading or absent.
async function sayServingError(region, error) {
  if (error instanceof ApiError && error.kind === "not-ready") {
    let statuses = [];
    try {
      statuses = await state.api.modelStatus(state.model);
    } catch (ignored) {
      statuses = [];
    }
    const loading = statuses.some((s) => s.state === "START" || s.state === "LOADING");
    const text = loading
      ? `Model ${state.model} is still loading. Try again in a few seconds.`
      : `Model ${state.model} has no version ready to answer yet: it may still be loading, or its folder holds `
        + "no version. Try again in a moment.";
    say(region, text, "error", error.detail);
    return;
  }
  sayError(region, error);
}

// -- verify -----------------------------------------------------------------------------------

async function verify() {
  const message = $("verify-message");
  const claimed = $("claimed").value.trim();
  let b64;
  try {
    if (!claimed) throw new ApiError("Enter the signer the signature claims to be.");
    b64 = currentImage();
  } catch (error) {
    sayError(message, error);
    return;
  }
  say(message, "Checking…", "busy");
  try {
    const answer = await state.api.predict(state.model, VERIFY,
      [{ image_bytes: { b64 }, claimed_signer: claimed }]);
    const result = answer.predictions[0];
    const genuine = Array.isArray(result.genuine) ? Boolean(result.genuine[0]) : Boolean(result.genuine);
    const score = Number(Array.isArray(result.score) ? result.score[0] : result.score);
    const threshold = result.threshold !== undefined ? Number(result.threshold) : null;
    const thresholdText = threshold === null ? "the model does not publish its threshold"
      : `threshold ${threshold.toFixed(3)}`;
    const text = genuine
      ? `Genuine: this signature matches ${claimed} (score ${score.toFixed(3)}, ${thresholdText}).`
      : `Forged: this signature does not match ${claimed} (score ${score.toFixed(3)}, ${thresholdText}).`;
    say(message, text, genuine ? "ok verdict-genuine" : "error verdict-forged");
    message.dataset.genuine = String(genuine);
    message.dataset.score = String(score);
  } catch (error) {
    await sayServingError(message, error);
  }
}

// -- correct it (feedback) ----------------------------------------------------------------------

function updateFeedbackButton() {
  const name = $("feedback-label").value.trim();
  $("feedback-send").textContent = name ? `This is ${name}` : "This is…";
}

async function sendFeedback() {
  const message = $("feedback-message");
  const label = $("feedback-label").value.trim();
  let b64;
  try {
    if (!label) throw new ApiError("Enter the right signer's name (one of the suggestions, or a new name).");
    b64 = currentImage();
  } catch (error) {
    sayError(message, error);
    return;
  }
  const tokenNeeded = state.config.feedback.token_required;
  try {
    const bearer = tokenNeeded ? await askToken("Corrections need this server's token.") : null;
    if (tokenNeeded && !bearer) {
      say(message, "Not sent: a token is needed to send a correction.", "error");
      return;
    }
    say(message, "Sending…", "busy");
    const answer = await state.api.feedback(state.model, b64, label, bearer);
    say(message, `Accepted: this image is saved as “${label}” (${answer.file}). The next training run `
      + "will learn from it.", "ok");
    message.dataset.file = answer.file;
  } catch (error) {
    if (error instanceof ApiError && error.kind === "token") token.forget();
    if (error instanceof ApiError && error.status === 400 && error.document && error.document.rejected) {
      say(message, `Rejected: ${rejectionText(error.document)}`, "error");
      return;
    }
    await sayServingError(message, error);
  }
}

// The token kept in this tab, or asked for once; null when the person cancels.
function askToken(why) {
  const kept = token.get();
  if (kept) return Promise.resolve(kept);
  const dialog = $("token-dialog");
  $("token-why").textContent = `${why} It is kept in this browser tab only.`;
  $("token").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const value = $("token").value.trim();
      if (dialog.returnValue === "ok" && value) {
        token.set(value);
        resolve(value);
      } else resolve(null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("token").focus();
  });
}

// -- dashboard ----------------------------------------------------------------------------------

async function loadDashboard() {
  const message = $("dashboard-message");
  if (!state.config.dashboard) {
    say(message, `The dashboard needs signflow's server: TF Serving at ${state.config.api} has no versions, `
      + "status or rollback routes. Start signflow's server (signflow serve) to see it.");
    $("dashboard-body").hidden = true;
    return;
  }
  say(message, "Loading…", "busy");
  try {
    const [listing, status] = await Promise.all([state.api.versions(state.model), state.api.status()]);
    renderTraining(status);
    renderVersions(listing);
    say(message, "");
    $("dashboard-body").dataset.servingVersion = listing.serving_version ?? "";
  } catch (error) {
    sayError(message, error);
  }
}

function renderTraining(status) {
  const box = $("training");
  const training = status.training;
  if (!training) {
    box.replaceChildren(el("p", { class: "note", text: status.training_status_error
      ? `The training server's status cannot be read: ${status.training_status_error}`
      : "No training server status: start this server with --training_status_file to see it." }));
    return;
  }
  const last = training.last_cycle || null;
  const rows = [
    ["State", training.state || "—"],
    ["Last cycle", last ? `${last.result || "—"}, finished ${when(last.finished_at)}` : "none yet"],
  ];
  if (last) {
    if (last.pushed_version) rows.push(["Pushed", `version ${last.pushed_version}`]);
    if (last.run_id) rows.push(["Run", last.run_id]);
    if (last.trigger) rows.push(["Trigger", last.trigger]);
    if (last.not_blessed_reasons && last.not_blessed_reasons.length) {
      rows.push(["Not blessed", last.not_blessed_reasons.join("; ")]);
    }
    if (last.error) rows.push(["Error", last.error]);
  }
  rows.push(["Next due", training.next_due_at ? when(training.next_due_at) : "—"]);
  const waiting = training.records_waiting;
  rows.push(["Records waiting", waiting === null || waiting === undefined ? "—"
    : `${waiting}${training.files_waiting !== undefined && training.files_waiting !== null
      ? ` in ${training.files_waiting} file(s)` : ""}`]);
  box.replaceChildren(definitions(rows));
}

function definitions(rows) {
  return el("dl", { class: "facts" }, rows.map(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
}

function renderVersions(listing) {
  const note = $("rollback-note");
  note.hidden = listing.rollback.offered;
  note.textContent = listing.rollback.offered ? "" : listing.rollback.why_not;
  const live = listing.versions.filter((v) => v.place === "live").map((v) => v.version);
  const newest = live.length ? Math.max(...live) : null;
  const cards = listing.versions.map((version) => versionCard(version, listing, newest));
  $("versions").replaceChildren(...(cards.length ? cards
    : [el("p", { class: "note", text: `No versions in ${listing.base_path} yet.` })]));
}

function versionCard(version, listing, newest) {
  const title = `Version ${version.version}`;
  const badge = el("span", { class: `badge badge-${version.status.replace(" ", "-")}`, text: version.status });
  const rows = [
    ["Pushed", version.pushed_at ? when(version.pushed_at) : "—"],
    ["Run", version.pipeline_run_id || "—"],
    ["Spans", version.spans.length ? version.spans.join(", ") : "—"],
    ["Records", Object.keys(version.record_counts).length
      ? Object.entries(version.record_counts).map(([k, v]) => `${v} ${k.replaceAll("_", " ")}`).join(", ") : "—"],
    ["Signers", version.labels.length ? String(version.labels.length) : "—"],
  ];
  if (version.error) rows.push(["Error", version.error]);
  if (version.rollback) {
    const r = version.rollback;
    rows.push(["Rolled back", `${when(r.at)}${r.user ? ` by ${r.user}${r.host ? `@${r.host}` : ""}` : ""}`
      + `${r.reason ? `: ${r.reason}` : ""}`]);
  }
  const card = el("article", { class: `card version ${version.status === "serving" ? "is-serving" : ""}`,
    "aria-labelledby": `version-${version.version}-title`, dataset: { version: String(version.version),
      status: version.status } },
  el("header", { class: "version-head" }, el("h4", { id: `version-${version.version}-title`, text: title }), badge),
  definitions(rows),
  metricsTable(version.eval_metrics),
  signerChart(version.per_signer),
  rollbackButton(version, listing, newest));
  return card;
}

function metricsTable(metrics) {
  const names = Object.keys(metrics).sort();
  if (!names.length) return el("p", { class: "note", text: "No eval metrics recorded with this version." });
  return el("div", { class: "table-wrap" }, el("table", { class: "metrics" },
    el("caption", { text: "Eval metrics" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Metric" }), el("th", { scope: "col", text: "Value" }))),
    el("tbody", {}, names.map((name) => el("tr", {}, el("th", { scope: "row", text: name }),
      el("td", { text: Number.isInteger(metrics[name]) ? String(metrics[name]) : metrics[name].toFixed(4) }))))));
}

// perSigner: label -> {accuracy, correct, total}, the Evaluator's slice of each signer (the push record's).
function signerChart(perSigner) {
  const names = Object.keys(perSigner).sort();
  if (!names.length) return el("p", { class: "note", text: "Per-signer accuracy: not recorded with this version." });
  return el("figure", { class: "signer-chart" },
    el("figcaption", { text: "Per-signer accuracy" }),
    el("ul", { class: "bars compact" }, names.map((name) => {
      const { accuracy, correct, total } = perSigner[name];
      return el("li", { class: "bar-row", title: `${name}: ${correct} of ${total} eval examples right` },
        el("span", { class: "bar-label", text: name }),
        el("span", { class: "bar-track", "aria-hidden": "true" }, barFill(accuracy)),
        // Whole percents: with a few examples a signer, the count says more than a decimal would.
        el("span", { class: "bar-value", text: `${Math.round(100 * accuracy)}% (${correct}/${total})` }));
    })));
}

function rollbackButton(version, listing, newest) {
  if (!listing.rollback.offered || version.place !== "live" || newest === null) return null;
  const live = listing.versions.filter((v) => v.place === "live").map((v) => v.version).sort((a, b) => a - b);
  if (version.version === newest) {
    if (live.length < 2) return el("p", { class: "note", text: "The only version: it cannot be rolled back." });
    const next = live[live.length - 2];
    return el("button", { type: "button", class: "danger", dataset: { rollback: String(version.version) },
      onclick: (event) => confirmRollback(event.currentTarget, null,
        `Take version ${version.version} out of service? Version ${next} will serve instead.`, next),
      text: `Roll back version ${version.version}…` });
  }
  return el("button", { type: "button", class: "danger", dataset: { rollbackTo: String(version.version) },
    onclick: (event) => confirmRollback(event.currentTarget, version.version,
      `Take every version newer than ${version.version} out of service? Version ${version.version} will serve.`,
      version.version),
    text: `Roll back to version ${version.version}…` });
}

async function confirmRollback(button, to, question, expected) {
  const message = $("dashboard-message");
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = question;
  $("rollback-reason").value = "";
  const confirmed = await new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("rollback-reason").focus();
  });
  if (!confirmed) return;
  const reason = $("rollback-reason").value.trim();
  await busy(button, async () => {
    try {
      const tokenNeeded = listingNeedsToken();
      const bearer = tokenNeeded ? await askToken("Rolling back needs this server's token.") : null;
      if (tokenNeeded && !bearer) {
        say(message, "Not rolled back: a token is needed.", "error");
        return;
      }
      say(message, "Rolling back…", "busy");
      const answer = await state.api.rollback(state.model, to, reason, bearer);
      const moved = answer.rolled_back.join(", ");
      say(message, moved ? `Rolled back version ${moved}. Waiting for the server to serve version `
        + `${answer.serving_after}…` : `Version ${answer.serving_after} already serves; nothing rolled back.`, "busy");
      const served = await waitForServing(answer.serving_after ?? expected);
      await loadDashboard();
      await refreshServing();
      say(message, served ? `Rolled back${moved ? ` version ${moved}` : ""}: now serving version `
        + `${answer.serving_after}.` : `Rolled back version ${moved}, but the server still does not serve `
        + `version ${answer.serving_after}. Check its log.`, served ? "ok" : "error");
    } catch (error) {
      if (error instanceof ApiError && error.kind === "token") token.forget();
      sayError(message, error);
    }
  });
}

function listingNeedsToken() {
  return state.config.rollback.token_required;
}

async function waitForServing(version) {
  const deadline = Date.now() + ROLLBACK_WAIT_MS;
  while (Date.now() < deadline) {
    try {
      const status = await state.api.status();
      const model = status.models.find((m) => m.name === state.model);
      if (model && model.serving_version === version) return true;
    } catch (error) {
      // The server may be busy swapping versions; ask again.
    }
    await new Promise((resolve) => setTimeout(resolve, ROLLBACK_POLL_MS));
  }
  return false;
}

start();
