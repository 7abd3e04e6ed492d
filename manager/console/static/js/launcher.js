// Start Service (and Edit, with the wrench): the launcher form, its Validate modal, create or rolling update.
import { api } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";
import { ErrorBox, Field, FieldError, Icon, Modal } from "./ui.js";

// The server's rule (manager/api/fields.py NAME_PATTERN, 4..24 characters), checked here first.
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_-]*[A-Za-z0-9_]$/;
export const NAME_RULE = "4 to 24 characters: letters, digits, '_' and '-', not starting or ending with '-'";
export function nameProblem(name) {
  if (name.length < 4 || name.length > 24 || !NAME_RE.test(name)) return NAME_RULE;
  return null;
}
const ENV_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const DEFAULT_DEFINITION = "model-definition.yaml";
export const PRESETS = [
  { id: "cpu-small", label: "cpu-small (0.25 CPU, 256 MiB)", res: { cpu: "0.25", mem: "256m" } },
  { id: "cpu-medium", label: "cpu-medium (1 CPU, 2 GiB)", res: { cpu: "1", mem: "2g" } },
  { id: "cpu-large", label: "cpu-large (4 CPU, 8 GiB)", res: { cpu: "4", mem: "8g" } },
  { id: "gpu-1", label: "gpu-1 (4 CPU, 16 GiB, 1 GPU)", res: { cpu: "4", mem: "16g", "cuda.device": "1" } },
  { id: "fgpu-half", label: "fgpu-half (2 CPU, 8 GiB, 0.5 fGPU)", res: { cpu: "2", mem: "8g", "cuda.shares": "0.5" } },
  { id: "custom", label: "Custom values" },
];
const MULTI_NODE_REASON = "Not available: this cluster runs every replica on a single node.";

function blankForm() {
  return { name: "", open_to_public: false, model: "", runtime_variant: "custom", mount: "/models",
           definition_path: DEFAULT_DEFINITION, extra_mounts: [], replicas: 1, image: "",
           scaling_group: "default", preset: "cpu-small", cpu: "0.25", mem: "256m", gpu: "", fgpu: "",
           cluster_mode: "single-node", env: [] };
}

function resourcesOf(form) {
  const preset = PRESETS.find((p) => p.id === form.preset);
  if (preset && preset.res) return { ...preset.res };
  const out = {};
  if (form.cpu) out.cpu = String(form.cpu);
  if (form.mem) out.mem = String(form.mem);
  if (form.gpu) out["cuda.device"] = String(form.gpu);
  if (form.fgpu) out["cuda.shares"] = String(form.fgpu);
  return out;
}

function environOf(form) {
  const env = {};
  for (const row of form.env) if (row.key.trim()) env[row.key.trim()] = row.value;
  return env;
}

export function createBody(form) {
  const config = { model: form.model, model_mount_destination: form.mount, scaling_group: form.scaling_group,
                   resources: resourcesOf(form), environ: environOf(form),
                   extra_mounts: Object.fromEntries(form.extra_mounts.map((name) => [name, null])) };
  if (form.definition_path && form.definition_path !== DEFAULT_DEFINITION) {
    config.model_definition_path = form.definition_path;
  }
  const body = { name: form.name, replicas: Number(form.replicas), runtime_variant: form.runtime_variant,
                 open_to_public: form.open_to_public, cluster_mode: form.cluster_mode, cluster_size: 1, config };
  if (form.image.trim()) body.image = form.image.trim();
  return body;
}

// -- pre-fill from the model folder's service-definition.toml (docs/console.md, "Start Service") -----------------
const SERVICE_DEFINITION = "service-definition.toml";
const SLOT_FIELDS = { cpu: "cpu", mem: "mem", "cuda.device": "gpu", "cuda.shares": "fgpu" };

// The file's values for a runtime variant: the root tables < the variant's table, as the server resolves them.
export function resolveDefinition(def, variant) {
  const out = { image: (def.environment && def.environment.image) || "", slots: { ...(def.resource_slots || {}) },
                environ: { ...(def.environ || {}) } };
  const section = def[variant];
  if (section && typeof section === "object" && !Array.isArray(section)) {
    if (section.environment && section.environment.image) out.image = section.environment.image;
    Object.assign(out.slots, section.resource_slots || {});
    Object.assign(out.environ, section.environ || {});
  }
  return out;
}

// Apply the file's values to the fields the user has not touched; `fromFile` names the fields it set (shown as
// such). Fields a previous folder's file set are first put back to their defaults.
export function prefill(form, resolved, touched, previous) {
  const blank = blankForm();
  const next = { ...form, env: form.env.filter((row) => !row.file) };
  for (const key of previous) {
    if (touched.has(key)) continue;
    if (key === "image") next.image = blank.image;
    if (key === "preset") for (const k of ["preset", "cpu", "mem", "gpu", "fgpu"]) next[k] = blank[k];
  }
  const fromFile = new Set();
  if (!resolved) return { form: next, fromFile };
  if (resolved.image && !touched.has("image")) { next.image = resolved.image; fromFile.add("image"); }
  const slots = Object.entries(resolved.slots).filter(([k]) => k in SLOT_FIELDS);
  if (slots.length && !touched.has("preset")) {
    Object.assign(next, { preset: "custom", cpu: "", mem: "", gpu: "", fgpu: "" });
    for (const [k, v] of slots) next[SLOT_FIELDS[k]] = String(v);
    fromFile.add("preset");
  }
  const typed = new Set(next.env.map((row) => row.key.trim()));
  for (const [key, value] of Object.entries(resolved.environ)) {
    if (!typed.has(key)) next.env.push({ key, value: String(value), file: true });
  }
  if (next.env.some((row) => row.file)) fromFile.add("env");
  return { form: next, fromFile };
}

// The folder's service-definition.toml through the folder file API: {definition} (parsed by the server's own
// schema), {errors} when it is invalid, or {} when the folder has none.
async function loadServiceDefinition(folder) {
  const base = `/folders/${encodeURIComponent(folder)}`;
  let text;
  try {
    text = await api.get(`${base}/download?path=${SERVICE_DEFINITION}`);
  } catch (err) {
    if (err.status === 404) return {};
    throw err;
  }
  const out = await api.post(`${base}/definitions/validate`, { path: SERVICE_DEFINITION, content: String(text) });
  return out.valid ? { definition: out.definition || {} } : { errors: out.errors };
}

function sameJson(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

// Edit: only what changed (PATCH /services/{id} keeps every field left out).
export function patchBody(form, initial) {
  const out = {};
  if (Number(form.replicas) !== Number(initial.replicas)) out.replicas = Number(form.replicas);
  if (form.open_to_public !== initial.open_to_public) out.open_to_public = form.open_to_public;
  if (form.model !== initial.model) out.model = form.model;
  if (form.runtime_variant !== initial.runtime_variant) out.runtime_variant = form.runtime_variant;
  if (form.definition_path !== initial.definition_path) out.model_definition_path = form.definition_path;
  if (form.image.trim() !== initial.image.trim()) out.image = form.image.trim();
  if (!sameJson(environOf(form), environOf(initial))) out.environ = environOf(form);
  if (!sameJson(resourcesOf(form), resourcesOf(initial))) out.resources = resourcesOf(form);
  return out;
}

function formFromService(info, folders) {
  const folder = folders.find((f) => f.id === info.model_id);
  const slots = info.resource_slots || {};
  const preset = PRESETS.find((p) => p.res && sameJson(p.res, Object.fromEntries(
    Object.entries(slots).filter(([k]) => k in p.res).map(([k, v]) => [k, String(v)])))
    && Object.keys(slots).length === Object.keys(p.res).length);
  return { ...blankForm(), name: info.name, open_to_public: info.is_public, model: folder ? folder.name : "",
           runtime_variant: info.runtime_variant, definition_path: info.model_definition_path || DEFAULT_DEFINITION,
           mount: info.model_mount_destination || "/models", replicas: info.replicas, image: info.image || "",
           scaling_group: info.scaling_group || "default", preset: preset ? preset.id : "custom",
           cpu: slots.cpu ? String(slots.cpu) : "", mem: slots.mem ? String(slots.mem) : "",
           gpu: slots["cuda.device"] ? String(slots["cuda.device"]) : "",
           fgpu: slots["cuda.shares"] ? String(slots["cuda.shares"]) : "",
           extra_mounts: info.extra_mounts || [],
           env: Object.entries(info.environ || {}).map(([key, value]) => ({ key, value })) };
}

// field keys as the server names them (pydantic locations, "field: reason" details) -> form fields
const SERVER_FIELDS = {
  name: "name", replicas: "replicas", image: "image", runtime_variant: "runtime_variant",
  open_to_public: "open_to_public", model: "model", "config.model": "model",
  "config.model_mount_destination": "mount", "config.model_definition_path": "definition_path",
  model_definition_path: "definition_path", "config.environ": "env", environ: "env",
  "config.resources": "resources", resources: "resources", "config.extra_mounts": "extra_mounts",
  "config.scaling_group": "scaling_group", cluster_mode: "cluster_mode",
};

function mapServerErrors(err) {
  const out = {};
  let placed = false;
  for (const [key, reason] of Object.entries(err.fields || {})) {
    const target = SERVER_FIELDS[key] || SERVER_FIELDS[key.split(".").slice(0, 2).join(".")];
    if (target) { out[target] = reason; placed = true; }
  }
  if (!placed && err.status === 404 && /model folder/.test(err.message)) { out.model = err.message; placed = true; }
  return { fields: out, placed };
}

export function clientErrors(form, editing) {
  const out = {};
  if (!editing) {
    const problem = nameProblem(form.name);
    if (problem) out.name = problem;
  }
  if (!form.model) out.model = "choose a model folder";
  const n = Number(form.replicas);
  if (!Number.isInteger(n) || n < 0) out.replicas = "a whole number, 0 or more";
  if (!form.mount.startsWith("/")) out.mount = "an absolute path, e.g. /models";
  for (const row of form.env) {
    if (row.key.trim() && !ENV_RE.test(row.key.trim())) { out.env = `invalid variable name ${row.key}`; break; }
  }
  return out;
}

function ValidateModal({ body, onClose }) {
  const [events, setEvents] = useState([]);
  const [log, setLog] = useState("");
  const [finished, setFinished] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let source = null;
    let closed = false;
    const add = (kind, data) => setEvents((list) => [...list, { kind, data }]);
    api.post("/services/_/try", body).then(({ task_id }) => {
      if (closed) return;
      source = new EventSource(`/api/events/background-task?task_id=${encodeURIComponent(task_id)}`);
      const handle = (kind) => (e) => {
        let data = {};
        try { data = JSON.parse(e.data); } catch (_) { data = {}; }
        let message = data.message || "";
        let isLog = false;
        try {
          const inner = JSON.parse(message);
          if (inner && inner.event) message = inner.event + (inner.session_id ? ` (session ${inner.session_id})` : "");
          // each container_log event carries the log's latest tail: it replaces what is shown
          if (inner && inner.event === "container_log") { isLog = true; if (inner.log) setLog(inner.log); }
        } catch (_) { /* a plain-text message */ }
        if (data.log) setLog(data.log);
        if (!isLog) add(kind, message);
        if (kind !== "bgtask_updated") {
          setFinished(kind);
          source.close();
        }
      };
      for (const kind of ["bgtask_updated", "bgtask_done", "bgtask_failed", "bgtask_cancelled"]) {
        source.addEventListener(kind, handle(kind));
      }
      source.addEventListener("server_close", () => source.close());
    }).catch((err) => { setError(err); setFinished("bgtask_failed"); });
    return () => { closed = true; if (source) source.close(); };
  }, []);
  const label = { bgtask_updated: "progress", bgtask_done: "done", bgtask_failed: "failed",
                  bgtask_cancelled: "cancelled" };
  return html`<${Modal} title="Validate" wide onClose=${onClose}
      footer=${html`<button type="button" onClick=${onClose}>Close</button>`}>
    <p class="muted">Starts one replica with these settings, waits for its health check, then removes it.</p>
    <${ErrorBox} error=${error} />
    <ol class="events" aria-label="Validation events" aria-live="polite">
      ${events.map((e, i) => html`<li key=${i} class=${"ev-" + e.kind}><span class="tag">${label[e.kind]}</span> ${e.data}</li>`)}
    </ol>
    <h3>Container log</h3>
    <pre class="log" aria-label="Container log" tabindex="0">${log || "(no output yet)"}</pre>
    ${finished ? html`<p class=${"finished " + (finished === "bgtask_done" ? "ok" : "bad")} role="status">
      Finished: ${finished === "bgtask_done" ? "the service started and passed its health check"
                 : "validation failed (see the reason above)"}</p>`
      : html`<p class="muted" role="status">Validating…</p>`}
  <//>`;
}

export function Launcher({ serviceId }) {
  const editing = Boolean(serviceId);
  const [form, setForm] = useState(blankForm());
  const initial = useRef(null);
  const [folders, setFolders] = useState([]);
  const [runtimes, setRuntimes] = useState([]);
  const [errors, setErrors] = useState({});
  const [general, setGeneral] = useState(null);
  const [busy, setBusy] = useState(false);
  const [validating, setValidating] = useState(null);
  const [loaded, setLoaded] = useState(!editing);
  const touched = useRef(new Set());  // fields the user changed: the file never overwrites them
  const [fromFile, setFromFile] = useState(new Set());
  const fromFileRef = useRef(new Set());
  const [fileNote, setFileNote] = useState(null);  // {folder, definition?, errors?}

  useEffect(() => {
    (async () => {
      try {
        const [fs, rt] = await Promise.all([api.get("/folders"), api.get("/services/_/runtimes")]);
        setFolders(fs);
        setRuntimes(rt.runtimes || []);
        if (editing) {
          const info = await api.get(`/services/${serviceId}`);
          const f = formFromService(info, fs);
          initial.current = f;
          setForm(f);
          setLoaded(true);
        } else {
          const models = fs.filter((f) => f.usage_mode === "model");
          if (models.length) setForm((old) => (old.model ? old : { ...old, model: models[0].name }));
        }
      } catch (err) { setGeneral(err); }
    })();
  }, [serviceId]);

  useEffect(() => {  // pre-fill from the chosen folder's service-definition.toml (new services only)
    if (editing || !form.model) return;
    let current = true;
    loadServiceDefinition(form.model).then((file) => {
      if (!current) return;
      setFileNote({ folder: form.model, ...file });
      const resolved = file.definition ? resolveDefinition(file.definition, form.runtime_variant) : null;
      const previous = fromFileRef.current;
      setForm((old) => {
        const out = prefill(old, resolved, touched.current, previous);
        fromFileRef.current = out.fromFile;
        return out.form;
      });
      setFromFile(resolved ? prefill(form, resolved, touched.current, previous).fromFile : new Set());
    }).catch(() => { if (current) setFileNote(null); });
    return () => { current = false; };
  }, [form.model, form.runtime_variant]);

  const set = (key) => (e) => {
    const value = e.target.type === "checkbox" ? e.target.checked : e.target.value;
    if (!["model", "runtime_variant"].includes(key)) touched.current.add(["cpu", "mem", "gpu", "fgpu"].includes(key) ? "preset" : key);
    setForm((old) => ({ ...old, [key]: value }));
    if (key === "name") setErrors((old) => ({ ...old, name: value && nameProblem(value) }));
  };
  const setEnv = (i, key, value) => setForm((old) => ({
    ...old, env: old.env.map((row, j) => (i === j ? { ...row, [key]: value, file: false } : row)) }));
  const fileHint = (key, other) => (fromFile.has(key) ? `From ${SERVICE_DEFINITION}` : other);
  const toggleMount = (name) => setForm((old) => ({ ...old, extra_mounts: old.extra_mounts.includes(name)
    ? old.extra_mounts.filter((n) => n !== name) : [...old.extra_mounts, name] }));

  const check = () => {
    const found = clientErrors(form, editing);
    setErrors(found);
    return Object.keys(found).length === 0;
  };
  const fail = (err) => {
    const { fields, placed } = mapServerErrors(err);
    setErrors(fields);
    setGeneral(placed ? null : err);
  };
  const submit = async (e) => {
    e.preventDefault();
    setGeneral(null);
    if (!check()) return;
    setBusy(true);
    try {
      if (editing) {
        const body = patchBody(form, initial.current);
        if (!Object.keys(body).length) { location.hash = `#/services/${serviceId}`; return; }
        await api.patch(`/services/${serviceId}`, body);
        location.hash = `#/services/${serviceId}`;
      } else {
        const info = await api.post("/services", createBody(form));
        location.hash = `#/services/${info.endpoint_id}`;
      }
    } catch (err) {
      fail(err);
    } finally {
      setBusy(false);
    }
  };
  const validate = () => {
    setGeneral(null);
    if (!check()) return;
    setValidating(createBody(form));
  };
  if (!loaded) return html`<section class="page"><${ErrorBox} error=${general} /><p>Loading…</p></section>`;
  const models = folders.filter((f) => f.usage_mode === "model");
  const others = folders.filter((f) => f.usage_mode !== "model");
  const described = (id) => (errors[id] ? `${id}-error` : null);
  const custom = form.preset === "custom";
  return html`<section class="page">
    <h1>${editing ? `Edit ${form.name}` : "Start Service"}</h1>
    <form class="card launcher" onSubmit=${submit} novalidate>
      ${fileNote && fileNote.folder === form.model && (fileNote.definition || fileNote.errors) ? html`
        <p class=${fileNote.errors ? "error-box" : "hint file-note"} role="status">${fileNote.errors
          ? `${form.model}/${SERVICE_DEFINITION} has errors (${fileNote.errors.map((e) => `${e.field}: ${e.reason}`).join("; ")}): the server will refuse the service until it is fixed.`
          : fromFile.size ? `Pre-filled from ${form.model}/${SERVICE_DEFINITION}: ${[...fromFile].map((k) => ({ image: "image", preset: "resources", env: "variables" })[k]).join(", ")} (marked below; what you change wins).`
          : `${form.model}/${SERVICE_DEFINITION} sets nothing this form shows.`}</p>` : null}
      <${Field} id="name" label="Service name" error=${errors.name} hint=${editing ? "The name cannot change." : NAME_RULE}>
        <input id="name" value=${form.name} onInput=${set("name")} disabled=${editing} required
               aria-invalid=${errors.name ? "true" : "false"} aria-describedby=${described("name") || "name-hint"} />
      <//>
      <div class="field switch-field">
        <label><input type="checkbox" role="switch" id="open-to-public" checked=${form.open_to_public}
               onChange=${set("open_to_public")} /> Open To Public</label>
        <p class="hint">Public endpoints answer without a token.</p>
      </div>
      <${Field} id="model" label="Model Storage To Mount" error=${errors.model}>
        <select id="model" value=${form.model} onChange=${set("model")} aria-describedby=${described("model")}>
          <option value="" disabled>Choose a model folder</option>
          ${models.map((f) => html`<option value=${f.name}>${f.name}</option>`)}
        </select>
      <//>
      <${Field} id="runtime_variant" label="Inference Runtime Variant" error=${errors.runtime_variant}>
        <select id="runtime_variant" value=${form.runtime_variant} onChange=${set("runtime_variant")}>
          ${runtimes.map((r) => html`<option value=${r.name}>${r.human_readable_name}</option>`)}
        </select>
      <//>
      <div class="grid2">
        <${Field} id="mount" label="Model Destination For Model Folder" error=${errors.mount}>
          <input id="mount" value=${form.mount} onInput=${set("mount")} disabled=${editing} />
        <//>
        <${Field} id="definition_path" label="Model Definition File Path" error=${errors.definition_path}>
          <input id="definition_path" value=${form.definition_path} onInput=${set("definition_path")} />
        <//>
      </div>
      <fieldset class="field" disabled=${editing}>
        <legend>Additional Mounts</legend>
        ${others.length ? others.map((f) => html`<label class="check"><input type="checkbox"
            checked=${form.extra_mounts.includes(f.name)} onChange=${() => toggleMount(f.name)} />
            ${f.name} <span class="muted">(${f.usage_mode})</span></label>`)
          : html`<p class="hint">No general or data folders.</p>`}
        <${FieldError} id="extra_mounts-error" error=${errors.extra_mounts} />
      </fieldset>
      <div class="grid2">
        <${Field} id="replicas" label="Number of replicas" error=${errors.replicas}>
          <input id="replicas" type="number" min="0" step="1" value=${form.replicas} onInput=${set("replicas")} />
        <//>
        <${Field} id="image" label="Environment / Version" error=${errors.image}
                  hint=${fileHint("image", "Image; empty: the runtime's default")}>
          <input id="image" value=${form.image} onInput=${set("image")} placeholder="default" />
        <//>
      </div>
      <div class="grid2">
        <${Field} id="scaling_group" label="Resource Group" error=${errors.scaling_group}>
          <select id="scaling_group" value=${form.scaling_group} onChange=${set("scaling_group")} disabled=${editing}>
            <option value="default">default</option>
          </select>
        <//>
        <${Field} id="preset" label="Resource Presets" error=${errors.resources} hint=${fileHint("preset", null)}>
          <select id="preset" value=${form.preset} onChange=${set("preset")}>
            ${PRESETS.map((p) => html`<option value=${p.id}>${p.label}</option>`)}
          </select>
        <//>
      </div>
      ${custom ? html`<div class="grid4">
        <${Field} id="cpu" label="CPU"><input id="cpu" value=${form.cpu} onInput=${set("cpu")} placeholder="1" /><//>
        <${Field} id="mem" label="Memory"><input id="mem" value=${form.mem} onInput=${set("mem")} placeholder="1g" /><//>
        <${Field} id="gpu" label="GPU"><input id="gpu" value=${form.gpu} onInput=${set("gpu")} placeholder="0" /><//>
        <${Field} id="fgpu" label="Fractional GPU"><input id="fgpu" value=${form.fgpu} onInput=${set("fgpu")} placeholder="0.5" /><//>
      </div>` : null}
      <fieldset class="field" disabled=${editing}>
        <legend>Cluster mode</legend>
        <label class="check"><input type="radio" name="cluster_mode" value="single-node"
               checked=${form.cluster_mode === "single-node"} onChange=${set("cluster_mode")} /> Single Node</label>
        <label class="check"><input type="radio" name="cluster_mode" value="multi-node" disabled
               aria-describedby="multi-node-reason" /> Multi Node</label>
        <p class="hint" id="multi-node-reason">${MULTI_NODE_REASON}</p>
      </fieldset>
      <fieldset class="field">
        <legend>Variables</legend>
        ${form.env.map((row, i) => html`<div class="env-row" key=${i}>
          <input aria-label=${"Variable name " + (i + 1)} placeholder="NAME" value=${row.key}
                 onInput=${(e) => setEnv(i, "key", e.target.value)} />
          <input aria-label=${"Variable value " + (i + 1)} placeholder="value" value=${row.value}
                 onInput=${(e) => setEnv(i, "value", e.target.value)} />
          ${row.file ? html`<span class="from-file" title=${"From " + SERVICE_DEFINITION}>file</span>` : null}
          <button type="button" class="icon" aria-label=${"Remove variable " + (i + 1)}
                  onClick=${() => setForm((old) => ({ ...old, env: old.env.filter((_, j) => j !== i) }))}><${Icon} name="close" /></button>
        </div>`)}
        <button type="button" onClick=${() => setForm((old) => ({ ...old, env: [...old.env, { key: "", value: "" }] }))}>
          Add variable</button>
        <${FieldError} id="env-error" error=${errors.env} />
      </fieldset>
      <${ErrorBox} error=${general} />
      <div class="form-actions">
        ${editing ? html`<span></span>` : html`<button type="button" onClick=${validate}>Validate</button>`}
        <div>
          <a class="button" href=${editing ? `#/services/${serviceId}` : "#/services"}>Cancel</a>
          <button type="submit" class="primary" disabled=${busy}>${editing ? "Confirm" : "Create"}</button>
        </div>
      </div>
    </form>
    ${validating ? html`<${ValidateModal} body=${validating} onClose=${() => setValidating(null)} />` : null}
  </section>`;
}
