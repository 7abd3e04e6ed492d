// LLM Chat Test (docs/console.md, "Chat page"): chat cards side by side (a service of the user's, or a custom
// OpenAI-compatible API) answering one synchronised input, streamed token by token through the console's relay
// (POST /api/services/{id}/chat/completions, POST /api/chat/custom/completions); Stop aborts the request, which
// closes the relay's upstream, so the replica stops generating. Time to first token and tokens/s under each
// answer; parameters; conversations saved per user on the server (list, rename, delete, export, continue).
// Model output is rendered by markdown.js (sanitised). A custom API's token lives in this page's memory only.
import { ApiError, api, csrfHeaders } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";
import { ErrorBox, Field, Modal, fmtDate } from "./ui.js";

const MAX_CARDS = 8;  // the conversations API keeps at most 8 models per conversation
const TITLE_CHARS = 60;
let cardSeq = 0;

function newCard(serviceId) {
  return { key: ++cardSeq, kind: "service", serviceId: serviceId || "", baseUrl: "", token: "", model: "" };
}

// The messages card i sees: every user message and its own answers.
export function threadOf(messages, i) {
  return messages.filter((m) => m.role === "user" || m.model_index === i);
}

// Parse a chunk of an SSE stream: complete events out, the rest kept for the next chunk.
export function parseSse(buffer) {
  const events = [];
  let rest = buffer.replace(/\r\n/g, "\n");
  let idx;
  while ((idx = rest.indexOf("\n\n")) >= 0) {
    const block = rest.slice(0, idx);
    rest = rest.slice(idx + 2);
    const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
    if (data) events.push(data);
  }
  return { events, rest };
}

async function problemOf(resp) {
  let body = {};
  try { body = await resp.json(); } catch (_) { body = {}; }
  if (body && body.error && typeof body.error === "object") return { detail: String(body.error.message || "error") };
  return body && (body.detail || body.title) ? body : { detail: `HTTP ${resp.status}` };
}

// Stream one answer; onText(text so far) as tokens arrive. Returns {content, stats, stopped}.
async function streamAnswer(card, serviceName, messages, params, signal, onText) {
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  body.model = card.model || (card.kind === "service" ? serviceName : undefined) || "default";
  if (params.temperature !== "") body.temperature = Number(params.temperature);
  if (params.top_p !== "") body.top_p = Number(params.top_p);
  if (params.max_tokens !== "") body.max_tokens = Number(params.max_tokens);
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream", ...csrfHeaders() };
  let url = `/api/services/${card.serviceId}/chat/completions`;
  if (card.kind === "custom") {
    url = "/api/chat/custom/completions";
    headers["X-Moorage-Base-URL"] = card.baseUrl.trim();
    if (card.token) headers["X-Moorage-Upstream-Token"] = card.token;
  }
  const t0 = performance.now();
  let first = null;
  let tokens = 0;
  let usageTokens = null;
  let content = "";
  let stopped = false;
  try {
    const resp = await fetch(url, { method: "POST", headers, body: JSON.stringify(body), signal, credentials: "same-origin" });
    if (!resp.ok) throw new ApiError(resp.status, await problemOf(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const parsed = parseSse(buffer + decoder.decode(value, { stream: true }));
      buffer = parsed.rest;
      for (const data of parsed.events) {
        if (data === "[DONE]") continue;
        let event;
        try { event = JSON.parse(data); } catch (_) { continue; }
        if (event.error) throw new ApiError(502, { detail: String(event.error.message || "the model failed") });
        if (event.usage && event.usage.completion_tokens != null) usageTokens = event.usage.completion_tokens;
        const piece = event.choices && event.choices[0] && event.choices[0].delta && event.choices[0].delta.content;
        if (piece) {
          if (first === null) first = performance.now();
          tokens += 1;
          content += piece;
          onText(content);
        }
      }
    }
  } catch (err) {
    if (err && err.name === "AbortError") stopped = true;
    else throw err;
  }
  const end = performance.now();
  const count = usageTokens != null && !stopped ? usageTokens : tokens;
  const stats = {
    ttft_ms: first === null ? null : Math.round(first - t0),
    tokens: count,
    tokens_per_second: first !== null && end > first && count > 1 ? Math.round((count - 1) / ((end - first) / 1000) * 10) / 10 : null,
  };
  return { content, stats, stopped };
}

function Stats({ stats, stopped }) {
  if (!stats) return null;
  const ttft = stats.ttft_ms == null ? "—" : `${stats.ttft_ms} ms`;
  const tps = stats.tokens_per_second == null ? "—" : stats.tokens_per_second;
  return html`<p class="chat-stats">${stopped ? html`<span class="badge badge-warn">Stopped</span> ` : null}${
    `TTFT ${ttft} · ${tps} tokens/s · ${stats.tokens ?? 0} tokens`}</p>`;
}

function Markdown({ text, md }) {
  if (!md) return html`<div class="md plain">${text}</div>`;
  return html`<div class="md" dangerouslySetInnerHTML=${{ __html: md.renderMarkdown(text) }}></div>`;
}

function ChatCard({ index, card, services, messages, live, md, onChange, onRemove, onStop, canRemove }) {
  const n = index + 1;
  const thread = threadOf(messages, index);
  const set = (patch) => onChange({ ...card, ...patch });
  const pick = (value) => (value === "__custom" ? set({ kind: "custom", serviceId: "" }) : set({ kind: "service", serviceId: value }));
  return html`<section class="card chat-card" aria-label=${"Chat " + n} data-card=${n}>
    <div class="chat-card-head">
      <label class="sr-only" for=${"chat-model-" + n}>Model for chat ${n}</label>
      <select id=${"chat-model-" + n} value=${card.kind === "custom" ? "__custom" : card.serviceId}
          onChange=${(e) => pick(e.target.value)}>
        <option value="">Choose a service…</option>
        ${services.map((s) => html`<option value=${s.id}>${s.name} (${s.status})</option>`)}
        <option value="__custom">Custom OpenAI-compatible API…</option>
      </select>
      ${live && live.streaming ? html`<button type="button" class="danger small" onClick=${onStop}
          aria-label=${"Stop chat " + n}>Stop</button>` : null}
      ${canRemove ? html`<button type="button" class="small" onClick=${onRemove} aria-label=${"Remove chat " + n}>Remove</button>` : null}
    </div>
    ${card.kind === "custom" ? html`<div class="custom-model grid2">
      <${Field} id=${"base-url-" + n} label="Base URL" hint="e.g. https://api.example.com/v1 (the operator must allow it)">
        <input id=${"base-url-" + n} value=${card.baseUrl} placeholder="https://…/v1" onInput=${(e) => set({ baseUrl: e.target.value })} /><//>
      <${Field} id=${"token-" + n} label="API token" hint="Kept in this page only: never stored.">
        <input id=${"token-" + n} type="password" autocomplete="off" value=${card.token}
            onInput=${(e) => set({ token: e.target.value })} /><//>
    </div>` : null}
    <${Field} id=${"model-name-" + n} label="Model name" hint=${card.kind === "service" ? "Optional: the service's name by default." : null}>
      <input id=${"model-name-" + n} value=${card.model} onInput=${(e) => set({ model: e.target.value })} /><//>
    <div class="chat-thread" aria-live="polite">
      ${thread.map((m, i) => html`<div key=${i} class=${"msg msg-" + m.role}>
        <div class="msg-role">${m.role === "user" ? "You" : "Assistant"}</div>
        ${m.role === "assistant" ? html`<${Markdown} text=${m.content} md=${md} /><${Stats} stats=${m.stats} stopped=${m.stopped} />`
          : html`<div class="md plain">${m.content}</div>`}</div>`)}
      ${live && (live.streaming || live.error) ? html`<div class="msg msg-assistant live">
        <div class="msg-role">Assistant</div>
        ${live.streaming ? html`<${Markdown} text=${live.text || ""} md=${md} /><p class="chat-stats muted">Generating…</p>` : null}
        <${ErrorBox} error=${live.error} /></div>` : null}
    </div>
  </section>`;
}

function RenameModal({ conv, onClose, onDone }) {
  const [title, setTitle] = useState(conv.title);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    try { await api.patch(`/conversations/${conv.id}`, { title }); onDone(); } catch (err) { setError(err); }
  };
  return html`<${Modal} title="Rename conversation" onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} id="conv-title" label="Title" error=${error && error.message}>
        <input id="conv-title" value=${title} required onInput=${(e) => setTitle(e.target.value)} /><//>
      <div class="form-actions"><span></span><div>
        <button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">Rename</button></div></div>
    </form><//>`;
}

function DeleteModal({ conv, onClose, onDone }) {
  const [error, setError] = useState(null);
  const del = async () => { try { await api.del(`/conversations/${conv.id}`); onDone(); } catch (err) { setError(err); } };
  return html`<${Modal} title="Delete conversation" onClose=${onClose} footer=${html`
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="button" class="danger" onClick=${del}>Delete</button>`}>
    <p>Delete <strong>${conv.title}</strong>?</p><${ErrorBox} error=${error} /><//>`;
}

function Conversations({ items, current, onChanged }) {
  const [modal, setModal] = useState(null);
  const done = () => { setModal(null); onChanged(); };
  return html`<aside class="chat-side" aria-label="Conversations">
    <div class="section-head"><h2>Conversations</h2><a class="button small" href="#/chat?new=1">New chat</a></div>
    <ul class="conv-list">${items.map((c) => html`<li key=${c.id} class=${c.id === current ? "current" : null} data-conversation=${c.title}>
      <a href=${"#/chat?conversation=" + c.id} aria-current=${c.id === current ? "page" : null}>${c.title}</a>
      <span class="muted small-text">${c.message_count} message${c.message_count === 1 ? "" : "s"} · ${fmtDate(c.updated_at)}</span>
      <span class="conv-actions">
        <button type="button" class="link" aria-label=${"Rename " + c.title} onClick=${() => setModal({ kind: "rename", conv: c })}>Rename</button>
        <button type="button" class="link" aria-label=${"Delete " + c.title} onClick=${() => setModal({ kind: "delete", conv: c })}>Delete</button>
        <a href=${`/api/conversations/${c.id}/export?format=json`} download aria-label=${"Export " + c.title + " as JSON"}>JSON</a>
        <a href=${`/api/conversations/${c.id}/export?format=markdown`} download aria-label=${"Export " + c.title + " as Markdown"}>Markdown</a>
      </span></li>`)}
      ${!items.length ? html`<li class="muted">No saved conversations yet.</li>` : null}</ul>
    ${modal && modal.kind === "rename" ? html`<${RenameModal} conv=${modal.conv} onClose=${() => setModal(null)} onDone=${done} />` : null}
    ${modal && modal.kind === "delete" ? html`<${DeleteModal} conv=${modal.conv} onClose=${() => setModal(null)} onDone=${done} />` : null}
  </aside>`;
}

export function ChatPage({ query }) {
  const [services, setServices] = useState([]);
  const [cards, setCards] = useState(() => [newCard(query.get("service"))]);
  const [params, setParams] = useState({ system_prompt: "", temperature: "", top_p: "", max_tokens: "" });
  const [messages, setMessages] = useState([]);
  const [live, setLive] = useState({});  // card index -> {streaming, text, error}
  const [input, setInput] = useState("");
  const [convId, setConvId] = useState(query.get("conversation"));
  const [convs, setConvs] = useState([]);
  const [error, setError] = useState(null);
  const [md, setMd] = useState(null);
  const controllers = useRef({});
  const busy = Object.values(live).some((l) => l.streaming);

  const loadConvs = () => api.get("/conversations?limit=100").then((out) => setConvs(out.items)).catch(setError);
  useEffect(() => {
    import("./markdown.js").then(setMd).catch(setError);
    api.post("/services/_/search", { lifecycle: "active", limit: 100 }).then((out) => setServices(out.items)).catch(setError);
    loadConvs();
    const id = query.get("conversation");
    if (id) {
      api.get(`/conversations/${id}`).then((c) => {
        setMessages(c.messages);
        setCards(c.models.length ? c.models.map((m) => ({ ...newCard(m.service_id), kind: m.base_url ? "custom" : "service",
          baseUrl: m.base_url || "", model: m.model || "" })) : [newCard()]);
        const p = c.parameters || {};
        const str = (v) => (v == null ? "" : String(v));
        setParams({ system_prompt: p.system_prompt || "", temperature: str(p.temperature), top_p: str(p.top_p), max_tokens: str(p.max_tokens) });
      }).catch(setError);
    }
    return () => Object.values(controllers.current).forEach((c) => c.abort());
  }, []);

  const serviceName = (id) => (services.find((s) => s.id === id) || {}).name;
  const persist = async (shown) => {
    // what the API stores (a Stop is shown on this page only)
    const all = shown.map(({ role, content, model_index, stats }) => ({ role, content, model_index, stats }));
    const models = cards.map((c) => (c.kind === "custom" ? { base_url: c.baseUrl.trim() || null, model: c.model || null }
      : { service_id: c.serviceId || null, model: c.model || null }));
    const num = (v) => (v === "" ? null : Number(v));
    const parameters = { system_prompt: params.system_prompt || null, temperature: num(params.temperature),
      top_p: num(params.top_p), max_tokens: num(params.max_tokens) };
    try {
      if (convId) await api.patch(`/conversations/${convId}`, { models, parameters, messages: all });
      else {
        const first = all.find((m) => m.role === "user");
        const title = (first ? first.content : "New chat").replace(/\s+/g, " ").trim().slice(0, TITLE_CHARS) || "New chat";
        const created = await api.post("/conversations", { title, models, parameters, messages: all });
        setConvId(created.id);
        history.replaceState(null, "", "#/chat?conversation=" + created.id);
      }
      loadConvs();
    } catch (err) { setError(err); }
  };

  const send = async (e) => {
    e.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    const missing = cards.findIndex((c) => (c.kind === "service" ? !c.serviceId : !c.baseUrl.trim()));
    if (missing >= 0) { setError(new Error(`Chat ${missing + 1}: choose a service or enter a base URL first.`)); return; }
    setError(null);
    const base = [...messages, { role: "user", content: text, model_index: null }];
    setMessages(base);
    setInput("");
    const answers = await Promise.all(cards.map(async (card, i) => {
      const controller = new AbortController();
      controllers.current[i] = controller;
      setLive((l) => ({ ...l, [i]: { streaming: true, text: "" } }));
      const thread = threadOf(base, i).map((m) => ({ role: m.role, content: m.content }));
      const sent = params.system_prompt ? [{ role: "system", content: params.system_prompt }, ...thread] : thread;
      try {
        const out = await streamAnswer(card, serviceName(card.serviceId), sent, params, controller.signal,
          (t) => setLive((l) => ({ ...l, [i]: { streaming: true, text: t } })));
        setLive((l) => ({ ...l, [i]: { streaming: false } }));
        return { role: "assistant", content: out.content, model_index: i, stats: out.stats, stopped: out.stopped };
      } catch (err) {
        setLive((l) => ({ ...l, [i]: { streaming: false, error: err } }));
        return null;
      } finally {
        delete controllers.current[i];
      }
    }));
    const all = [...base, ...answers.filter(Boolean)];
    setMessages(all);
    persist(all);
  };

  const setCard = (i, value) => setCards(cards.map((c, j) => (j === i ? value : c)));
  const setParam = (name) => (e) => setParams({ ...params, [name]: e.target.value });
  return html`<section class="page chat-page">
    <div class="page-head"><h1>LLM Chat Test</h1>
      <button type="button" disabled=${cards.length >= MAX_CARDS || busy} onClick=${() => setCards([...cards, newCard()])}>Add model</button></div>
    <div class="chat-layout">
      <${Conversations} items=${convs} current=${convId} onChanged=${loadConvs} />
      <div class="chat-main">
        <details class="chat-params card"><summary>Parameters</summary>
          <${Field} id="system-prompt" label="System prompt">
            <textarea id="system-prompt" rows="2" value=${params.system_prompt} onInput=${setParam("system_prompt")}></textarea><//>
          <div class="grid4">
            <${Field} id="temperature" label="Temperature"><input id="temperature" type="number" min="0" max="2" step="0.1"
                value=${params.temperature} placeholder="default" onInput=${setParam("temperature")} /><//>
            <${Field} id="top-p" label="Top P"><input id="top-p" type="number" min="0" max="1" step="0.05"
                value=${params.top_p} placeholder="default" onInput=${setParam("top_p")} /><//>
            <${Field} id="max-tokens" label="Max tokens"><input id="max-tokens" type="number" min="1" step="1"
                value=${params.max_tokens} placeholder="default" onInput=${setParam("max_tokens")} /><//>
          </div>
        </details>
        <div class="chat-cards">${cards.map((card, i) => html`<${ChatCard} key=${card.key} index=${i} card=${card}
            services=${services} messages=${messages} live=${live[i]} md=${md} canRemove=${cards.length > 1 && !busy}
            onChange=${(v) => setCard(i, v)} onRemove=${() => setCards(cards.filter((_, j) => j !== i))}
            onStop=${() => controllers.current[i] && controllers.current[i].abort()} />`)}</div>
        <${ErrorBox} error=${error} />
        <form class="chat-input" onSubmit=${send}>
          <label class="sr-only" for="chat-message">Message</label>
          <textarea id="chat-message" rows="3" placeholder=${cards.length > 1 ? "One message to every model…" : "Send a message…"}
            value=${input} onInput=${(e) => setInput(e.target.value)}
            onKeyDown=${(e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(e); } }}></textarea>
          <button type="submit" class="primary" disabled=${busy}>Send</button>
        </form>
      </div>
    </div>
  </section>`;
}
