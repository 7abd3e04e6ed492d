// Service detail: info, rolling-update progress, routes (Clear error and Retry, sync), tokens (Generate Token,
// copy, revoke), autoscaling rules (Add Rules, edit, delete) and a ready-to-paste curl.
import { api } from "./api.js";
import { html, useEffect, useState } from "./lib.js";
import { CopyButton, ErrorBox, Field, Icon, Modal, StatusBadge, fmtDate } from "./ui.js";
import { Metrics } from "./metrics.js";
import { TerminateModal } from "./services.js";

const POLL_MS = 2000;
const RULE_FIELDS = "id row_id metric_source metric_name threshold comparator step_size cooldown_seconds " +
  "min_replicas max_replicas enabled created_at last_triggered_at";
const COMPARATORS = ["LESS_THAN", "LESS_THAN_OR_EQUAL", "GREATER_THAN", "GREATER_THAN_OR_EQUAL"];
const SOURCES = [["INFERENCE_FRAMEWORK", "Inference Framework"], ["KERNEL", "Kernel"], ["PROXY", "Proxy"]];

function Info({ info }) {
  const slots = Object.entries(info.resource_slots || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const rows = [
    ["Status", html`<${StatusBadge} status=${info.status} />`],
    ["Endpoint URL", info.service_endpoint ? html`<code>${info.service_endpoint}</code>
      <${CopyButton} text=${info.service_endpoint} label="Copy the endpoint URL" />` : "—"],
    ["Replicas", `${info.active_routes.length} serving / ${info.replicas} desired`],
    ["Access", info.is_public ? "Public (no token needed)" : "Token"],
    ["Runtime variant", info.runtime_variant],
    ["Model definition", info.model_definition_path || "—"],
    ["Model mounted at", info.model_mount_destination || "/models"],
    ["Image", info.image || "—"],
    ["Resources", slots || "—"],
    ["Resource group", info.scaling_group || "default"],
    ["Revision", String(info.revision)],
    ["Created at", fmtDate(info.created_at)],
  ];
  return html`<dl class="info">${rows.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
}

function Rollout({ info }) {
  if (!info.rollout) return null;
  const r = info.rollout;
  return html`<div class="rollout" role="status" aria-live="polite">
    Rolling update to revision ${r.revision}: ${r.current_serving} of ${r.current} new replica${r.current === 1 ? "" : "s"}
    serving, ${r.outdated} old replica${r.outdated === 1 ? "" : "s"} still running.
    <progress max=${Math.max(1, info.replicas)} value=${Math.min(r.current_serving, info.replicas)}
              aria-label="Rolling update progress"></progress></div>`;
}

function Routes({ info, reload }) {
  const [error, setError] = useState(null);
  const [note, setNote] = useState("");
  const act = async (fn, done) => {
    setError(null);
    try { await fn(); setNote(done); reload(); } catch (err) { setError(err); }
  };
  const failed = info.routes.some((r) => r.lifecycle === "failed_to_start" || r.error_data);
  return html`<section aria-labelledby="routes-title">
    <div class="section-head"><h2 id="routes-title">Routes</h2>
      <div>
        <button type="button" disabled=${!failed && info.retries === 0}
          onClick=${() => act(() => api.post(`/services/${info.endpoint_id}/errors/clear`), "Errors cleared; retrying.")}>
          Clear error and Retry</button>
        <button type="button" aria-label="Sync routes" title="Republish the route table"
          onClick=${() => act(() => api.post(`/services/${info.endpoint_id}/sync`), "Route table republished.")}><${Icon} name="sync" /> Sync</button>
      </div></div>
    <${ErrorBox} error=${error} />
    ${note ? html`<p class="muted" role="status">${note}</p>` : null}
    <div class="table-wrap"><table class="routes">
      <thead><tr><th scope="col">Route</th><th scope="col">Session</th><th scope="col">Status</th>
        <th scope="col">Health</th><th scope="col">Traffic ratio</th><th scope="col">Error</th></tr></thead>
      <tbody>${info.routes.map((r) => html`<tr key=${r.route_id}>
        <td data-label="Route"><code>${r.route_id.slice(0, 8)}</code></td>
        <td data-label="Session"><code>${r.session_id ? r.session_id.slice(0, 8) : "—"}</code></td>
        <td data-label="Status">${r.lifecycle}</td><td data-label="Health">${r.health}</td>
        <td data-label="Traffic ratio">${r.traffic_ratio}</td>
        <td data-label="Error" class="route-error">${r.error_data ? html`
          <div>${r.error_data.message || r.error_data.type || "error"}</div>
          ${r.error_data.stderr_tail ? html`<details><summary>stderr</summary>
            <pre class="log">${r.error_data.stderr_tail}</pre></details>` : null}` : "—"}</td>
      </tr>`)}
      ${info.routes.length ? null : html`<tr><td colspan="6" class="muted">No routes.</td></tr>`}</tbody>
    </table></div>
    ${info.retries ? html`<p class="muted">Failed starts so far: ${info.retries}${info.next_retry_at
      ? `; next retry ${fmtDate(info.next_retry_at)}` : ""}.</p>` : null}
  </section>`;
}

function GenerateTokenModal({ serviceId, onClose, onDone }) {
  const tomorrow = new Date(Date.now() + 30 * 86400e3).toISOString().slice(0, 10);
  const [date, setDate] = useState(tomorrow);
  const [token, setToken] = useState(null);
  const [error, setError] = useState(null);
  const generate = async () => {
    setError(null);
    const when = Date.parse(date + "T23:59:59");
    if (!date || isNaN(when) || when <= Date.now()) { setError(new Error("expiry: choose a date in the future")); return; }
    try {
      setToken(await api.post(`/services/${serviceId}/token`, { valid_until: Math.floor(when / 1000) }));
      onDone();
    } catch (err) { setError(err); }
  };
  return html`<${Modal} title="Generate Token" onClose=${onClose} footer=${token
      ? html`<button type="button" class="primary" onClick=${onClose}>Done</button>`
      : html`<button type="button" onClick=${onClose}>Cancel</button>
             <button type="button" class="primary" onClick=${generate}>Generate</button>`}>
    ${token ? html`<p>Copy the token now: it is not shown again.</p>
      <div class="token-box"><code id="new-token">${token.token}</code>
        <${CopyButton} text=${token.token} label="Copy the token" /></div>
      <p class="muted">Expires ${fmtDate(token.expires_at)}.</p>`
    : html`<${Field} id="token-expiry" label="Expiration date" error=${error && error.message}>
        <input id="token-expiry" type="date" value=${date} onInput=${(e) => setDate(e.target.value)} />
      <//>`}
  <//>`;
}

function Tokens({ info }) {
  const [tokens, setTokens] = useState([]);
  const [error, setError] = useState(null);
  const [modal, setModal] = useState(false);
  const load = async () => {
    try { setTokens((await api.get(`/services/${info.endpoint_id}/tokens`)).tokens); } catch (err) { setError(err); }
  };
  useEffect(() => { load(); }, [info.endpoint_id]);
  const revoke = async (t) => {
    try { await api.del(`/services/${info.endpoint_id}/tokens/${t.token_id}`); load(); } catch (err) { setError(err); }
  };
  return html`<section aria-labelledby="tokens-title">
    <div class="section-head"><h2 id="tokens-title">Tokens</h2>
      <button type="button" class="primary" onClick=${() => setModal(true)}>Generate Token</button></div>
    <${ErrorBox} error=${error} />
    <div class="table-wrap"><table class="tokens">
      <thead><tr><th scope="col">Token id</th><th scope="col">Created</th><th scope="col">Expires</th>
        <th scope="col">State</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>${tokens.map((t) => html`<tr key=${t.token_id} data-token=${t.token_id}>
        <td data-label="Token id"><code>${t.token_id.slice(0, 8)}</code>
          <${CopyButton} text=${t.token_id} label="Copy the token id" /></td>
        <td data-label="Created">${fmtDate(t.created_at)}</td><td data-label="Expires">${fmtDate(t.expires_at)}</td>
        <td data-label="State">${t.revoked ? "revoked" : t.expired ? "expired" : "valid"}</td>
        <td>${t.revoked ? null : html`<button type="button" class="danger small"
          aria-label=${"Revoke token " + t.token_id.slice(0, 8)} onClick=${() => revoke(t)}>Revoke</button>`}</td>
      </tr>`)}
      ${tokens.length ? null : html`<tr><td colspan="5" class="muted">No tokens.</td></tr>`}</tbody>
    </table></div>
    ${modal ? html`<${GenerateTokenModal} serviceId=${info.endpoint_id} onClose=${() => setModal(false)} onDone=${load} />` : null}
  </section>`;
}

function blankRule() {
  return { type: "out", metric_source: "KERNEL", metric_name: "cpu_util", comparator: "GREATER_THAN",
           threshold: "80", step: 1, min_replicas: "", max_replicas: "", cooldown_seconds: 300 };
}

function ruleForm(rule) {
  return { type: rule.step_size < 0 ? "in" : "out", metric_source: rule.metric_source, metric_name: rule.metric_name,
           comparator: rule.comparator, threshold: rule.threshold, step: Math.abs(rule.step_size),
           min_replicas: rule.min_replicas ?? "", max_replicas: rule.max_replicas ?? "",
           cooldown_seconds: rule.cooldown_seconds };
}

function RuleModal({ serviceId, rule, onClose, onDone }) {
  const [form, setForm] = useState(rule ? ruleForm(rule) : blankRule());
  const [error, setError] = useState(null);
  const set = (key) => (e) => setForm((old) => ({ ...old, [key]: e.target.value }));
  const save = async () => {
    setError(null);
    const step = Math.abs(parseInt(form.step, 10) || 0) * (form.type === "in" ? -1 : 1);
    const opt = (v) => (v === "" || v === null ? null : parseInt(v, 10));
    const props = { metric_source: form.metric_source, metric_name: form.metric_name.trim(),
                    comparator: form.comparator, threshold: String(form.threshold).trim(), step_size: step,
                    cooldown_seconds: parseInt(form.cooldown_seconds, 10) || 0,
                    min_replicas: opt(form.min_replicas), max_replicas: opt(form.max_replicas) };
    try {
      if (rule) {
        await api.gql(`mutation($id: String!, $props: ModifyEndpointAutoScalingRuleInput!) {
          modify_endpoint_auto_scaling_rule_node(id: $id, props: $props) { ok msg } }`, { id: rule.id, props });
      } else {
        await api.gql(`mutation($endpoint: String!, $props: EndpointAutoScalingRuleInput!) {
          create_endpoint_auto_scaling_rule_node(endpoint: $endpoint, props: $props) { ok msg } }`,
          { endpoint: serviceId, props });
      }
      onDone();
    } catch (err) { setError(err); }
  };
  const fieldError = (name) => (error && error.message.startsWith(name + ":") ? error.message : null);
  return html`<${Modal} title=${rule ? "Edit Rule" : "Add Rules"} onClose=${onClose} footer=${html`
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="button" class="primary" onClick=${save}>${rule ? "Save" : "Add"}</button>`}>
    <fieldset class="field"><legend>Type</legend>
      <label class="check"><input type="radio" name="rule-type" value="out" checked=${form.type === "out"}
        onChange=${set("type")} /> Scale out</label>
      <label class="check"><input type="radio" name="rule-type" value="in" checked=${form.type === "in"}
        onChange=${set("type")} /> Scale in</label></fieldset>
    <div class="grid2">
      <${Field} id="rule-source" label="Metric Source"><select id="rule-source" value=${form.metric_source}
        onChange=${set("metric_source")}>${SOURCES.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select><//>
      <${Field} id="rule-metric" label="Metric Name" error=${fieldError("metric_name")}>
        <input id="rule-metric" value=${form.metric_name} onInput=${set("metric_name")} /><//>
      <${Field} id="rule-comparator" label="Comparator"><select id="rule-comparator" value=${form.comparator}
        onChange=${set("comparator")}>${COMPARATORS.map((c) => html`<option value=${c}>${c}</option>`)}</select><//>
      <${Field} id="rule-threshold" label="Threshold" error=${fieldError("threshold")}>
        <input id="rule-threshold" inputmode="decimal" value=${form.threshold} onInput=${set("threshold")} /><//>
      <${Field} id="rule-step" label="Step Size" error=${fieldError("step_size")}
        hint=${form.type === "in" ? "Replicas removed when the rule fires" : "Replicas added when the rule fires"}>
        <input id="rule-step" type="number" min="1" value=${form.step} onInput=${set("step")} /><//>
      <${Field} id="rule-cooldown" label="CoolDown Seconds" error=${fieldError("cooldown_seconds")}>
        <input id="rule-cooldown" type="number" min="0" value=${form.cooldown_seconds} onInput=${set("cooldown_seconds")} /><//>
      <${Field} id="rule-min" label="Min Replicas" error=${fieldError("min_replicas")}>
        <input id="rule-min" type="number" min="0" value=${form.min_replicas} onInput=${set("min_replicas")} /><//>
      <${Field} id="rule-max" label="Max Replicas" error=${fieldError("max_replicas")}>
        <input id="rule-max" type="number" min="0" value=${form.max_replicas} onInput=${set("max_replicas")} /><//>
    </div>
    ${error && !["metric_name", "threshold", "step_size", "cooldown_seconds", "min_replicas", "max_replicas"]
      .some((n) => error.message.startsWith(n + ":")) ? html`<${ErrorBox} error=${error} />` : null}
  <//>`;
}

function Rules({ info }) {
  const [rules, setRules] = useState([]);
  const [error, setError] = useState(null);
  const [editing, setEditing] = useState(undefined);  // undefined: closed, null: new, rule: edit
  const load = async () => {
    try {
      const data = await api.gql(`query($endpoint: String!) { endpoint_auto_scaling_rule_nodes(endpoint: $endpoint) {
        edges { node { ${RULE_FIELDS} } } } }`, { endpoint: info.endpoint_id });
      setRules(data.endpoint_auto_scaling_rule_nodes.edges.map((e) => e.node));
    } catch (err) { setError(err); }
  };
  useEffect(() => { load(); }, [info.endpoint_id]);
  const remove = async (rule) => {
    try {
      await api.gql(`mutation($id: String!) { delete_endpoint_auto_scaling_rule_node(id: $id) { ok msg } }`, { id: rule.id });
      load();
    } catch (err) { setError(err); }
  };
  return html`<section aria-labelledby="rules-title">
    <div class="section-head"><h2 id="rules-title">Autoscaling rules</h2>
      <button type="button" class="primary" onClick=${() => setEditing(null)}>Add Rules</button></div>
    <${ErrorBox} error=${error} />
    <div class="table-wrap"><table class="rules">
      <thead><tr><th scope="col">Type</th><th scope="col">Metric</th><th scope="col">Condition</th>
        <th scope="col">Step</th><th scope="col">Min / Max</th><th scope="col">CoolDown</th>
        <th scope="col">Last triggered</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>${rules.map((r) => html`<tr key=${r.id} data-rule=${r.metric_name}>
        <td data-label="Type">${r.step_size < 0 ? "Scale in" : "Scale out"}</td>
        <td data-label="Metric">${r.metric_source} · ${r.metric_name}</td>
        <td data-label="Condition">${r.comparator} ${r.threshold}</td>
        <td data-label="Step">${r.step_size > 0 ? "+" : ""}${r.step_size}</td>
        <td data-label="Min / Max">${r.min_replicas ?? "—"} / ${r.max_replicas ?? "—"}</td>
        <td data-label="CoolDown">${r.cooldown_seconds} s</td>
        <td data-label="Last triggered">${fmtDate(r.last_triggered_at)}</td>
        <td><button type="button" class="small" aria-label=${"Edit rule " + r.metric_name}
              onClick=${() => setEditing(r)}>Edit</button>
            <button type="button" class="small danger" aria-label=${"Delete rule " + r.metric_name}
              onClick=${() => remove(r)}>Delete</button></td>
      </tr>`)}
      ${rules.length ? null : html`<tr><td colspan="8" class="muted">No rules.</td></tr>`}</tbody>
    </table></div>
    ${editing !== undefined ? html`<${RuleModal} serviceId=${info.endpoint_id} rule=${editing}
        onClose=${() => setEditing(undefined)} onDone=${() => { setEditing(undefined); load(); }} />` : null}
  </section>`;
}

export function curlFor(info) {
  const auth = info.is_public ? "" : ` \\\n  -H 'Authorization: BackendAI <token>'`;
  return `curl -N ${info.service_endpoint || "<endpoint URL>"}/v1/chat/completions${auth} \\\n` +
    `  -H 'Content-Type: application/json' \\\n` +
    `  -d '{"stream": true, "messages": [{"role": "user", "content": "Hello"}]}'`;
}

export function ServiceDetail({ serviceId }) {
  const [info, setInfo] = useState(null);
  const [error, setError] = useState(null);
  const [terminating, setTerminating] = useState(false);
  const load = async () => {
    try { setInfo(await api.get(`/services/${serviceId}`)); setError(null); } catch (err) { setError(err); }
  };
  useEffect(() => {
    load();
    const timer = setInterval(load, POLL_MS);
    return () => clearInterval(timer);
  }, [serviceId]);
  if (!info) return html`<section class="page"><${ErrorBox} error=${error} />${error ? null : html`<p>Loading…</p>`}</section>`;
  const curl = curlFor(info);
  return html`<section class="page">
    <div class="page-head"><h1>${info.name}</h1>
      <div>
        <a class="button small" href=${"#/chat?service=" + info.endpoint_id}>LLM Chat Test</a>
        <a class="icon button" href=${`#/services/${info.endpoint_id}/edit`} aria-label=${"Edit " + info.name}><${Icon} name="wrench" /></a>
        <button type="button" class="icon" aria-label=${"Terminate " + info.name}
                onClick=${() => setTerminating(true)}><${Icon} name="trash" /></button>
      </div></div>
    <${ErrorBox} error=${error} />
    <${Rollout} info=${info} />
    <section aria-labelledby="info-title"><h2 id="info-title">Service info</h2><${Info} info=${info} /></section>
    <${Metrics} info=${info} />
    <${Routes} info=${info} reload=${load} />
    <${Tokens} info=${info} />
    <${Rules} info=${info} />
    <section aria-labelledby="curl-title">
      <div class="section-head"><h2 id="curl-title">Call it</h2><${CopyButton} text=${curl} label="Copy the curl command" /></div>
      <pre class="curl"><code>${curl}</code></pre>
    </section>
    ${terminating ? html`<${TerminateModal} service=${{ id: info.endpoint_id, name: info.name }}
        onClose=${() => setTerminating(false)} onDone=${() => { location.hash = "#/services"; }} />` : null}
  </section>`;
}
