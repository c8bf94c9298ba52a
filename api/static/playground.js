// textgen playground: chat or plain prompt against the OpenAI-compatible endpoints, streamed.
// No build step and no dependencies: the browser's fetch streams the SSE response.
"use strict";

const $ = (id) => document.getElementById(id);
const store = {
  get key() { return localStorage.getItem("textgen.apiKey") || ""; },
  set key(v) { localStorage.setItem("textgen.apiKey", v); },
  get jobs() { try { return JSON.parse(localStorage.getItem("textgen.jobs") || "[]"); } catch { return []; } },
  set jobs(v) { localStorage.setItem("textgen.jobs", JSON.stringify(v.slice(0, 20))); },
};
const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const state = { kind: "chat", messages: [], controller: null };

function headers() {
  return { "Authorization": `Bearer ${store.key}`, "Content-Type": "application/json" };
}

function notice(text, isError = false) {
  $("notice").textContent = text;
  $("notice").classList.toggle("error", isError);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    const e = body.error || {};
    return `${resp.status}: ${e.message || resp.statusText}${e.param ? ` (${e.param})` : ""}`;
  } catch {
    return `${resp.status}: ${resp.statusText}`;
  }
}

async function loadModels() {
  const select = $("model");
  if (!store.key) { notice("Enter your API key to start."); return; }
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) { notice(await errorText(resp), true); return; }
  const { data } = await resp.json();
  const chosen = select.value;
  select.replaceChildren(...data.map((m) => {
    const opt = new Option(`${m.id}${m.workers.length ? "" : " (no worker)"}`, m.id);
    opt.title = m.workers.length ? `${m.device} ${m.dtype} · batch ${m.max_batch} · ctx ${m.context_length}` : "";
    return opt;
  }));
  if (chosen) select.value = chosen;
  notice("");
}

function bubble(role, text = "") {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  el.dataset.role = role;
  el.textContent = text;
  $("transcript").append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function params() {
  const num = (id) => Number($(id).value);
  const body = {
    model: $("model").value || undefined,
    max_tokens: num("max_tokens"),
    temperature: num("temperature"),
    top_k: num("top_k"),
    top_p: num("top_p"),
    presence_penalty: num("presence_penalty"),
    frequency_penalty: num("frequency_penalty"),
    stream: true,
    stream_options: { include_usage: true },
  };
  if ($("mode").value) body.mode = $("mode").value;
  return body;
}

// Reads OpenAI's SSE stream: "data: <json>" events separated by blank lines, ending "data: [DONE]".
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;  // a keep-alive comment
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  if (!store.key) { notice("Enter your API key first.", true); $("api-key").focus(); return; }
  const body = params();
  let url;
  if (state.kind === "chat") {
    url = "/v1/chat/completions";
    state.messages.push({ role: "user", content: text });
    body.messages = state.messages;
    bubble("user", text);
  } else {
    url = "/v1/completions";
    body.prompt = text;
    bubble("user", text);
  }
  $("prompt").value = "";
  const out = bubble("assistant");
  out.classList.add("streaming");
  state.controller = new AbortController();
  setBusy(true);
  notice("Generating…");
  let reply = "";
  try {
    const resp = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                    signal: state.controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    const ids = (resp.headers.get("X-Job-Ids") || "").split(",").filter(Boolean);
    for (const id of ids) remember(id);
    let finish = "";
    for await (const chunk of events(resp)) {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        const piece = state.kind === "chat" ? (choice.delta.content || "") : choice.text;
        if (piece && !reply) markRunning(ids);  // text is streaming: a worker has the job
        reply += piece;
        out.textContent = reply;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (chunk.usage) {
        const u = chunk.usage;
        notice(`Done (${finish || "stop"}): ${u.completion_tokens} tokens, prompt ${u.prompt_tokens}.`);
      }
    }
    out.dataset.done = "true";
  } catch (err) {
    if (err.name === "AbortError") notice("Stopped: the job was canceled.");
    else { notice(String(err.message || err), true); out.classList.add("failed"); }
  } finally {
    out.classList.remove("streaming");
    if (state.kind === "chat") {
      if (reply) state.messages.push({ role: "assistant", content: reply });
      else state.messages.pop();
    }
    state.controller = null;
    setBusy(false);
    refreshJobs();
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function remember(id) {
  store.jobs = [{ id, status: "queued" }, ...store.jobs.filter((j) => j.id !== id)];
  renderJobs();
}

function markRunning(ids) {
  store.jobs = store.jobs.map((j) => (ids.includes(j.id) && j.status === "queued" ? { ...j, status: "running" } : j));
  renderJobs();
}

function renderJobs() {
  $("jobs").replaceChildren(...store.jobs.map((j) => {
    const li = document.createElement("li");
    li.dataset.jobId = j.id;
    li.dataset.status = j.status;
    const detail = j.usage ? ` · ${j.usage.completion_tokens} tok` : "";
    li.innerHTML = `<code></code><span class="status ${j.status}">${j.status}</span><small>${detail}</small>`;
    li.querySelector("code").textContent = j.id;
    return li;
  }));
}

async function refreshJobs() {
  if (!store.key) return;
  const jobs = store.jobs;
  await Promise.all(jobs.filter((j) => !TERMINAL.has(j.status)).map(async (j) => {
    const resp = await fetch(`/v1/jobs/${j.id}`, { headers: headers() });
    if (resp.status === 404) { j.status = "expired"; return; }
    if (!resp.ok) return;
    const job = await resp.json();
    // A poll answered before the worker claimed the job must not undo what the stream showed.
    if (!(j.status === "running" && job.status === "queued")) j.status = job.status;
    j.usage = job.usage;
  }));
  const fresh = new Map(jobs.map((j) => [j.id, j]));
  store.jobs = store.jobs.map((j) => fresh.get(j.id) || j);
  renderJobs();
}

function setKind(kind) {
  state.kind = kind;
  for (const tab of document.querySelectorAll("[role=tab]")) tab.setAttribute("aria-selected", tab.dataset.kind === kind);
  $("prompt").placeholder = kind === "chat" ? "Ask something… (Ctrl+Enter to send)"
                                            : "Text to continue… (Ctrl+Enter to send)";
}

function bindOutputs() {
  for (const out of document.querySelectorAll("output[for]")) {
    const input = $(out.htmlFor.value);
    const show = () => { out.textContent = input.value; };
    input.addEventListener("input", show);
    show();
  }
}

function init() {
  $("api-key").value = store.key;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    store.key = $("api-key").value.trim();
    loadModels();
    refreshJobs();
  });
  $("compose").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", () => { state.messages = []; $("transcript").replaceChildren(); notice(""); });
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => setKind(tab.dataset.kind));
  bindOutputs();
  renderJobs();
  loadModels();
  refreshJobs();
  setInterval(() => { if (store.jobs.some((j) => !TERMINAL.has(j.status))) refreshJobs(); }, 2000);
}

init();
