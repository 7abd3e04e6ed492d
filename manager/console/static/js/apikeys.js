// API Keys: the gateway's tenant keys (docs/gateway.md, docs/console.md "API Keys"): list, Create API key (the key
// shown once), Edit limits, Revoke. Everything goes through the manager's /api-keys routes.
import { api } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";
import { CopyButton, ErrorBox, Field, Modal, fmtDate } from "./ui.js";

const PRIORITIES = ["low", "standard", "high"];
const LIMITS = [  // [field, label, hint]
  ["rpm", "Requests per minute", "empty: unlimited"],
  ["tpm", "Tokens per minute", "prompt + completion; empty: unlimited"],
  ["max_parallel", "Max parallel requests", "in flight at once; empty: unlimited"],
  ["budget", "Budget per month", "currency units; empty: none"],
];

// The model names the user may give a key: the names of their services (a model is a service, docs/gateway.md).
async function modelNames() {
  const out = await api.post("/services/_/search", { lifecycle: "active", limit: 100 });
  return [...new Set(out.items.map((s) => s.name))].sort();
}

function endOfDay(date) { return date ? new Date(date + "T23:59:59").toISOString() : null; }
function dateOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function parseMetadata(text) {
  const out = {};
  for (const [i, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw Object.assign(new Error(`line ${i + 1}: write key=value`), { fields: { metadata: `line ${i + 1}: write key=value` } });
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

// The form state of a key (new: blank); body() turns it into the request, only what changed when editing.
function formOf(key) {
  return {
    name: key ? key.name : "", models: key ? [...key.allowed_models] : [], priority: key ? key.priority : "standard",
    rpm: key && key.rpm != null ? String(key.rpm) : "", tpm: key && key.tpm != null ? String(key.tpm) : "",
    max_parallel: key && key.max_parallel != null ? String(key.max_parallel) : "",
    budget: key && key.budget != null ? String(key.budget) : "", expires: key ? dateOf(key.expires_at) : "",
    metadata: key ? Object.entries(key.metadata || {}).map(([k, v]) => `${k}=${v}`).join("\n") : "",
  };
}

function numberOrNull(text) { return text.trim() === "" ? null : Number(text); }

export function keyBody(form, before) {
  const all = {
    name: form.name.trim(), allowed_models: form.models, priority: form.priority,
    rpm: numberOrNull(form.rpm), tpm: numberOrNull(form.tpm), max_parallel: numberOrNull(form.max_parallel),
    budget: numberOrNull(form.budget), expires_at: endOfDay(form.expires), metadata: parseMetadata(form.metadata),
  };
  if (!before) {
    for (const k of Object.keys(all)) if (all[k] === null) delete all[k];
    return all;
  }
  const old = formOf(before);
  const out = {};
  if (form.name !== old.name) out.name = all.name;
  if (form.models.join() !== old.models.join()) out.allowed_models = all.allowed_models;
  if (form.priority !== old.priority) out.priority = all.priority;
  for (const [f] of LIMITS) if (form[f] !== old[f]) out[f] = all[f];
  if (form.expires !== old.expires) out.expires_at = all.expires_at;
  if (form.metadata !== old.metadata) out.metadata = all.metadata;
  return out;
}

function KeyForm({ form, set, models, fields }) {
  const toggle = (name) => set({ ...form, models: form.models.includes(name)
    ? form.models.filter((m) => m !== name) : [...form.models, name] });
  const known = [...new Set([...models, ...form.models])].sort();
  return html`
    <${Field} id="key-name" label="Name" error=${fields.name}>
      <input id="key-name" value=${form.name} maxlength="64" required onInput=${(e) => set({ ...form, name: e.target.value })} />
    <//>
    <fieldset class=${"field" + (fields.allowed_models ? " has-error" : "")}>
      <legend>Allowed models</legend>
      <p class="hint">None ticked: every model you may use, now and later.</p>
      ${known.length ? known.map((m) => html`<label class="check" key=${m}>
          <input type="checkbox" checked=${form.models.includes(m)} onChange=${() => toggle(m)} /> ${m}</label>`)
        : html`<p class="muted">You have no services yet.</p>`}
      ${fields.allowed_models ? html`<p class="field-error" role="alert">${fields.allowed_models}</p>` : null}
    </fieldset>
    <div class="grid2">
      ${LIMITS.map(([f, label, hint]) => html`<${Field} id=${"key-" + f} label=${label} hint=${hint} error=${fields[f]}>
        <input id=${"key-" + f} type="number" min=${f === "budget" ? 0 : 1} step=${f === "budget" ? "any" : 1}
               inputmode="numeric" value=${form[f]} aria-describedby=${"key-" + f + "-hint"}
               onInput=${(e) => set({ ...form, [f]: e.target.value })} /><//>`)}
      <${Field} id="key-priority" label="Priority" hint="queue order when the models are busy" error=${fields.priority}>
        <select id="key-priority" value=${form.priority} onChange=${(e) => set({ ...form, priority: e.target.value })}>
          ${PRIORITIES.map((p) => html`<option value=${p}>${p}</option>`)}</select><//>
      <${Field} id="key-expires" label="Expiration date" hint="empty: never" error=${fields.expires_at || fields.expires_in}>
        <input id="key-expires" type="date" value=${form.expires} onInput=${(e) => set({ ...form, expires: e.target.value })} /><//>
    </div>
    <${Field} id="key-metadata" label="Metadata" hint="key=value, one per line" error=${fields.metadata}>
      <textarea id="key-metadata" rows="2" value=${form.metadata} onInput=${(e) => set({ ...form, metadata: e.target.value })}></textarea><//>`;
}

function KeyModal({ keyInfo, models, onClose, onDone }) {
  const [form, setForm] = useState(() => formOf(keyInfo));
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const fields = (error && error.fields) || {};
  const submit = async (e) => {
    if (e) e.preventDefault();
    setError(null);
    if (!form.name.trim()) { setError(Object.assign(new Error("name: required"), { fields: { name: "required" } })); return; }
    let body;
    try { body = keyBody(form, keyInfo); } catch (err) { setError(err); return; }
    setBusy(true);
    try {
      if (keyInfo) {
        if (Object.keys(body).length) await api.patch(`/api-keys/${keyInfo.id}`, body);
        onDone(); onClose();
      } else {
        setCreated(await api.post("/api-keys", body));
        onDone();
      }
    } catch (err) { setError(err); } finally { setBusy(false); }
  };
  const title = keyInfo ? `Edit limits of ${keyInfo.name}` : "Create API key";
  if (created) {
    return html`<${Modal} title=${title} onClose=${onClose} footer=${html`
        <button type="button" class="primary" onClick=${onClose}>Done</button>`}>
      <p class="error-box" role="alert"><strong>Copy this key now.</strong> It is shown this once: Moorage keeps only
        its hash and cannot show it again.</p>
      <div class="token-box"><code id="new-api-key">${created.key}</code>
        <${CopyButton} text=${created.key} label="Copy the API key" /></div>
      <p class="muted">Use it as <code>Authorization: Bearer …</code> or <code>X-API-Key: …</code> on the gateway.</p>
    <//>`;
  }
  return html`<${Modal} title=${title} onClose=${onClose} footer=${html`
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="submit" form="key-form" class="primary" disabled=${busy}>${keyInfo ? "Save" : "Create"}</button>`}>
    <form id="key-form" onSubmit=${submit} novalidate>
      <${KeyForm} form=${form} set=${setForm} models=${models} fields=${fields} />
    </form>
    ${error && !Object.keys(fields).length ? html`<${ErrorBox} error=${error} />` : null}
  <//>`;
}

function RevokeModal({ keyInfo, onClose, onDone }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const revoke = async () => {
    setBusy(true);
    try { await api.del(`/api-keys/${keyInfo.id}`); onDone(); onClose(); } catch (err) { setError(err); setBusy(false); }
  };
  return html`<${Modal} title="Revoke API key" onClose=${onClose} footer=${html`
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="button" class="danger" disabled=${busy} onClick=${revoke}>Revoke</button>`}>
    <p>Revoke <strong>${keyInfo.name}</strong> (<code>${keyInfo.hint}</code>)? Every app proxy refuses it within a
      second; this cannot be undone. Its usage records stay.</p>
    <${ErrorBox} error=${error} />
  <//>`;
}

function limitsText(k) {
  const parts = [];
  if (k.rpm != null) parts.push(`${k.rpm} req/min`);
  if (k.tpm != null) parts.push(`${k.tpm} tok/min`);
  if (k.max_parallel != null) parts.push(`${k.max_parallel} parallel`);
  if (k.budget != null) parts.push(`budget ${k.budget}/month`);
  return parts.length ? parts.join(" · ") : "unlimited";
}

function keyState(k) {
  if (k.revoked_at) return "revoked";
  if (k.expires_at && Date.parse(k.expires_at) <= Date.now()) return "expired";
  return "active";
}

export function ApiKeysPage({ user }) {
  const [keys, setKeys] = useState(null);
  const [models, setModels] = useState([]);
  const [everyone, setEveryone] = useState(false);
  const [showRevoked, setShowRevoked] = useState(false);
  const [error, setError] = useState(null);
  const [modal, setModal] = useState(null);  // {kind: "create" | "edit" | "revoke", key}
  const admin = user && user.role !== "user";
  const asked = useRef("");  // the latest query: an older answer arriving late is dropped
  const load = async () => {
    const query = "/api-keys" + (everyone ? "?all=true" : "");
    asked.current = query;
    try {
      const out = await api.get(query);
      if (asked.current === query) { setKeys(out.api_keys); setError(null); }
    } catch (err) { if (asked.current === query) setError(err); }
  };
  useEffect(() => { load(); }, [everyone]);
  useEffect(() => { modelNames().then(setModels).catch(setError); }, []);
  const rows = (keys || []).filter((k) => showRevoked || !k.revoked_at);
  return html`<section class="page">
    <div class="page-head">
      <h1>API Keys</h1>
      <button type="button" class="primary" onClick=${() => setModal({ kind: "create" })}>Create API key</button>
    </div>
    <p class="muted">Keys for the OpenAI-compatible gateway (<code>/v1</code>): one URL for every model, with
      limits per key. See docs/gateway.md.</p>
    <div class="toolbar">
      <label class="check"><input type="checkbox" checked=${showRevoked}
        onChange=${(e) => setShowRevoked(e.target.checked)} /> Show revoked keys</label>
      ${admin ? html`<label class="check"><input type="checkbox" checked=${everyone}
        onChange=${(e) => setEveryone(e.target.checked)} /> Every user's keys</label>` : null}
    </div>
    <${ErrorBox} error=${error} />
    <div class="table-wrap"><table class="api-keys">
      <caption class="sr-only">API keys</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Key</th><th scope="col">Allowed models</th>
        <th scope="col">Limits</th><th scope="col">Priority</th><th scope="col">Expires</th>
        <th scope="col">Created</th><th scope="col">Last used</th><th scope="col">State</th>
        ${everyone ? html`<th scope="col">Owner</th>` : null}<th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>${rows.map((k) => html`<tr key=${k.id} data-key=${k.name}>
        <td data-label="Name">${k.name}</td>
        <td data-label="Key"><code>${k.hint}</code></td>
        <td data-label="Allowed models">${k.allowed_models.length ? k.allowed_models.join(", ") : html`<span class="muted">all</span>`}</td>
        <td data-label="Limits">${limitsText(k)}</td>
        <td data-label="Priority">${k.priority}</td>
        <td data-label="Expires">${k.expires_at ? fmtDate(k.expires_at) : "never"}</td>
        <td data-label="Created">${fmtDate(k.created_at)}</td>
        <td data-label="Last used">${k.last_used_at ? fmtDate(k.last_used_at) : "never"}</td>
        <td data-label="State">${keyState(k)}</td>
        ${everyone ? html`<td data-label="Owner" title=${k.owner_id}>${k.owner_email || k.owner_id}</td>` : null}
        <td class="actions">${k.revoked_at ? null : html`
          <button type="button" class="small" aria-label=${"Edit limits of " + k.name}
                  onClick=${() => setModal({ kind: "edit", key: k })}>Edit limits</button>
          <button type="button" class="danger small" aria-label=${"Revoke " + k.name}
                  onClick=${() => setModal({ kind: "revoke", key: k })}>Revoke</button>`}</td>
      </tr>`)}
      ${keys && !rows.length ? html`<tr><td colspan="11" class="muted">No API keys yet.</td></tr>` : null}</tbody>
    </table></div>
    ${modal && modal.kind === "revoke" ? html`<${RevokeModal} keyInfo=${modal.key} onClose=${() => setModal(null)} onDone=${load} />`
      : modal ? html`<${KeyModal} keyInfo=${modal.key} models=${models} onClose=${() => setModal(null)} onDone=${load} />` : null}
  </section>`;
}
