// Model Store (docs/console.md, "Model Store"): a card per model folder that holds both definition files; Run this
// model starts a service from the folder's service definition in one click and opens its detail page.
import { api } from "./api.js";
import { html, useEffect, useState } from "./lib.js";
import { ErrorBox } from "./ui.js";

function Card({ card }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const run = async () => {
    setBusy(true);
    setError(null);
    try {
      const out = await api.post(`/model-store/${card.folder_id}/run`, {});
      location.hash = `#/services/${out.endpoint_id}`;
    } catch (err) { setError(err); setBusy(false); }
  };
  const title = card.title || card.name;
  const slots = Object.entries(card.resources || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  return html`<article class="card store-card" data-folder=${card.name} aria-labelledby=${"card-" + card.folder_id}>
    <h2 id=${"card-" + card.folder_id}>${title}</h2>
    ${card.description ? html`<p>${card.description}</p>` : null}
    <dl class="info compact">
      <dt>Folder</dt><dd><a href=${"#/folders/" + card.folder_id}>${card.name}</a></dd>
      <dt>Runtime</dt><dd>${card.runtime_variant}${card.image ? html` · <code>${card.image}</code>` : null}</dd>
      ${card.model_name ? html`<dt>Model</dt><dd>${card.model_name}</dd>` : null}
      ${slots ? html`<dt>Resources</dt><dd>${slots}</dd>` : null}
      ${card.task ? html`<dt>Task</dt><dd>${card.task}</dd>` : null}
      ${card.license ? html`<dt>License</dt><dd>${card.license}</dd>` : null}
    </dl>
    ${card.labels && card.labels.length ? html`<p class="labels">${card.labels.map((l) => html`<span class="badge">${l}</span> `)}</p>` : null}
    ${card.errors && card.errors.length ? html`<div class="error-box"><strong>Run this model would fail:</strong>
      <ul>${card.errors.map((e) => html`<li>${e.line ? `line ${e.line}: ` : ""}<code>${e.field}</code>: ${e.reason}</li>`)}</ul></div>` : null}
    <${ErrorBox} error=${error} />
    <button type="button" class="primary" disabled=${busy} onClick=${run}
        aria-label=${"Run this model: " + title}>Run this model</button>
  </article>`;
}

export function ModelStore() {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { api.get("/model-store?limit=200").then(setData).catch(setError); }, []);
  return html`<section class="page">
    <div class="page-head"><h1>Model Store</h1></div>
    <p class="muted">Model folders with both <code>model-definition.yaml</code> and <code>service-definition.toml</code>.</p>
    <${ErrorBox} error=${error} />
    <div class="store-grid">${(data ? data.items : []).map((c) => html`<${Card} key=${c.folder_id} card=${c} />`)}</div>
    ${data && !data.items.length ? html`<p class="muted">No model folder holds both definition files yet.</p>` : null}
  </section>`;
}
