// specserve playground: chat over /v1/chat/completions with the `specserve`
// SSE extension (server/spec_trace.py), each token coloured by how it was
// produced, and a per-step chart of verification lengths and load.
// No build step and no libraries: plain DOM, fetch + ReadableStream, canvas.
"use strict";

const KEY_STORAGE = "specserve.apiKey";
const CHART_STEPS = 80; // steps the chart shows (the most recent)
const MIN_CHART_SLOTS = 24; // a short reply's bars do not fill the whole width
const $ = (id) => document.getElementById(id);

const session = { messages: [], steps: [], controller: null };

// ---- API access --------------------------------------------------------------

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  if (apiKey()) h.Authorization = "Bearer " + apiKey();
  return h;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// An OpenAI error body's message, or the HTTP status line.
async function failure(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, message);
}

function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = !text;
}

function explain(error) {
  if (error.status === 401) {
    const what = apiKey() ? "The API key was refused" : "This server needs an API key";
    showNotice(`401 Unauthorized: ${what}. Enter it under "API key" and press "use key" ` +
               "(it is kept in this browser's localStorage).");
    $("api-key").focus();
  } else {
    showNotice("Error: " + error.message);
  }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers(false) });
  if (!response.ok) throw await failure(response);
  const select = $("model");
  select.replaceChildren();
  for (const card of (await response.json()).data) {
    select.append(new Option(card.id, card.id));
  }
}

async function refreshModels() {
  try {
    await loadModels();
    showNotice("");
  } catch (error) {
    explain(error);
  }
}

// ---- streaming ---------------------------------------------------------------

// Yields the parsed `data:` payloads of an SSE response body ("[DONE]" as is).
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6)).join("\n");
      if (data) yield data === "[DONE]" ? data : JSON.parse(data);
    }
  }
}

function requestBody() {
  return {
    model: $("model").value || undefined,
    messages: session.messages.map(({ role, content }) => ({ role, content })),
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    stream: true,
    specserve: { trace: true },
  };
}

async function stream(reply) {
  session.controller = new AbortController();
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(true), body: JSON.stringify(requestBody()),
    signal: session.controller.signal,
  });
  if (!response.ok) throw await failure(response);
  for await (const chunk of events(response.body)) {
    if (chunk === "[DONE]") break;
    if (chunk.error) throw new ApiError(chunk.error.code, chunk.error.message);
    reply.absorb(chunk);
    if (chunk.specserve) recordStep(chunk.specserve);
  }
}

// ---- one assistant reply: content + traced tokens ----------------------------

class Reply {
  constructor(element) {
    this.element = element;
    this.content = "";
    this.tokens = []; // {text, source, drafter, step}
    this.finish = null;
    this.pending = false;
  }

  absorb(chunk) {
    for (const choice of chunk.choices) {
      if (choice.delta && choice.delta.content) this.content += choice.delta.content;
      if (choice.finish_reason) this.finish = choice.finish_reason;
    }
    if (chunk.specserve) {
      const step = session.steps.length + 1;
      for (const t of chunk.specserve.tokens) this.tokens.push({ ...t, step, trace: chunk.specserve });
    }
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }

  // The content is the truth (stop strings cut it); token texts are laid on
  // it by length, so text held back or cut off is never shown.
  render() {
    const body = this.element.querySelector(".body");
    const parts = [];
    let offset = 0;
    for (const token of this.tokens) {
      if (offset >= this.content.length) break;
      const text = this.content.slice(offset, offset + token.text.length);
      offset += token.text.length;
      if (text) parts.push(tokenSpan(token, text));
    }
    if (offset < this.content.length) parts.push(document.createTextNode(this.content.slice(offset)));
    body.replaceChildren(...parts);
    this.element.querySelector(".meta").textContent = this.summary();
  }

  summary() {
    const count = (s) => this.tokens.filter((t) => t.source === s).length;
    const made = ["accepted", "corrected", "bonus", "plain"].map((s) => `${count(s)} ${s}`);
    return `${this.tokens.length} tokens: ${made.join(", ")}` + (this.finish ? ` · ${this.finish}` : "");
  }
}

function tokenSpan(token, text) {
  const span = document.createElement("span");
  span.className = "tok tok-" + token.source;
  span.dataset.source = token.source;
  span.textContent = text;
  const t = token.trace;
  span.dataset.tip = token.drafter
    ? `${token.source}: block drafted by ${token.drafter} (step ${token.step}: ` +
      `${t.accepted} of ${t.verified} drafts accepted)`
    : `${token.source}: no drafts verified (step ${token.step})`;
  if (token.drafter) span.dataset.drafter = token.drafter;
  return span;
}

function addMessage(role, text) {
  const element = document.createElement("div");
  element.className = "msg " + role;
  element.innerHTML = '<div class="who"></div><div class="body"></div><div class="meta"></div>';
  element.querySelector(".who").textContent = role;
  element.querySelector(".body").textContent = text;
  $("log").append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

// ---- chat actions ------------------------------------------------------------

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || session.controller) return;
  $("prompt").value = "";
  session.messages.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const reply = new Reply(addMessage("assistant", ""));
  setBusy(true);
  try {
    await stream(reply);
    showNotice("");
  } catch (error) {
    if (error.name !== "AbortError") explain(error);
  } finally {
    reply.render();
    // A reply cleared away while it streamed is no longer part of the conversation.
    if ($("log").contains(reply.element)) session.messages.push({ role: "assistant", content: reply.content });
    session.controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function clearChat() {
  if (session.controller) session.controller.abort();
  session.messages = [];
  session.steps = [];
  $("log").replaceChildren();
  drawChart();
}

// ---- per-step chart ----------------------------------------------------------

function recordStep(trace) {
  session.steps.push({ verified: trace.verified, accepted: trace.accepted, ...trace.load });
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const steps = session.steps.slice(-CHART_STEPS);
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = { l: 28, r: 40, t: 10, b: 22 };
  const plotW = W - pad.l - pad.r, plotH = H - pad.t - pad.b;
  ctx.clearRect(0, 0, W, H);
  canvas.dataset.steps = String(session.steps.length);
  const left = Math.max(4, ...steps.map((s) => Math.max(s.verified, s.batch_size, s.queue)));
  const right = stepMsScale(steps);
  axes(ctx, pad, plotW, plotH, left, right);
  const slot = plotW / Math.max(MIN_CHART_SLOTS, steps.length);
  const y = (v, top) => pad.t + plotH - (Math.min(v, top) / top) * plotH;
  steps.forEach((s, i) => {
    const x = pad.l + i * slot + 1, w = Math.max(1, slot - 2);
    ctx.fillStyle = "#cfd3d8";
    ctx.fillRect(x, y(s.verified, left), w, (s.verified / left) * plotH);
    ctx.fillStyle = css("--accepted");
    ctx.fillRect(x, y(s.accepted, left), w, (s.accepted / left) * plotH);
  });
  const line = (key, top, color) => polyline(ctx, steps.map((s, i) =>
    [pad.l + (i + 0.5) * slot, y(s[key], top)]), color);
  line("batch_size", left, css("--batch"));
  line("queue", left, css("--queue"));
  line("step_ms", right, css("--ms"));
  showStats();
}

// The right axis' top: a prompt's prefill step can take many decode steps'
// time; clipping it at 4x the median keeps the decode steps readable.
function stepMsScale(steps) {
  const sorted = steps.map((s) => s.step_ms).sort((a, b) => a - b);
  if (!sorted.length) return 1;
  const median = sorted[Math.floor(sorted.length / 2)];
  return Math.max(1, Math.min(sorted[sorted.length - 1], 4 * median));
}

function axes(ctx, pad, plotW, plotH, left, right) {
  ctx.strokeStyle = "#d8dadd";
  ctx.fillStyle = "#6b7280";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const yy = pad.t + plotH - f * plotH + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + plotW, yy); ctx.stroke();
    ctx.textAlign = "right"; ctx.fillText(fmt(f * left), pad.l - 4, yy + 4);
    ctx.textAlign = "left"; ctx.fillText(fmt(f * right), pad.l + plotW + 4, yy + 4);
  }
  ctx.textAlign = "center";
  ctx.fillText(`engine steps of this page's replies (the last ${CHART_STEPS})`, pad.l + plotW / 2,
               pad.t + plotH + 16);
}

function polyline(ctx, points, color) {
  if (!points.length) return;
  ctx.strokeStyle = color; ctx.lineWidth = 1.6;
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
}

function showStats() {
  const steps = session.steps;
  const last = steps[steps.length - 1];
  const spec = steps.filter((s) => s.verified > 0);
  const drafts = spec.reduce((a, s) => a + s.verified, 0);
  const accepted = spec.reduce((a, s) => a + s.accepted, 0);
  const rows = [
    ["steps", steps.length],
    ["drafts accepted", drafts ? `${accepted} of ${drafts} (${Math.round((100 * accepted) / drafts)}%)` : "–"],
    ["tokens per verify step", spec.length ? fmt(1 + accepted / spec.length) : "–"],
    ["batch size", last ? `${plural(last.batch_size, "request")}, ${plural(last.batched_tokens, "token")}` : "–"],
    ["queue", last ? last.queue : "–"],
    ["step", last ? `${fmt(last.step_ms)} ms (${fmt(last.sps)} steps/s)` : "–"],
    ["KV cache used", last ? `${fmt(100 * last.kv_cache_usage)}%` : "–"],
  ];
  $("stats").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = String(v);
    return [dt, dd];
  }));
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function fmt(x) {
  return Number.isInteger(x) ? String(x) : x.toFixed(x < 10 ? 1 : 0);
}

// A token's tooltip: where its block came from (drawn by the page rather than
// a title attribute, so it shows at once, and in screenshots).
function showTip(event) {
  const tip = $("tip");
  const span = event.target.closest && event.target.closest("span.tok[data-tip]");
  if (!span || !$("log").contains(span)) {
    tip.hidden = true;
    return;
  }
  tip.textContent = span.dataset.tip;
  const box = span.getBoundingClientRect();
  tip.style.left = `${window.scrollX + box.left}px`;
  tip.style.top = `${window.scrollY + box.bottom + 6}px`;
  tip.hidden = false;
}

// ---- wiring ------------------------------------------------------------------

function init() {
  $("api-key").value = apiKey();
  $("save-key").addEventListener("click", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    refreshModels();
  });
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  $("stop").addEventListener("click", () => session.controller && session.controller.abort());
  $("clear").addEventListener("click", clearChat);
  $("log").addEventListener("mouseover", showTip);
  $("log").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  drawChart();
  refreshModels();
}

init();
