// The definition editor (docs/console.md, "Definition editor"): model-definition.yaml / service-definition.toml,
// checked by the server as you type (POST /folders/{id}/definitions/validate) with each error shown by line and
// field before saving; Save writes the file atomically (PUT /folders/{id}/content), which the server refuses
// while the file has errors.
import { api } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";
import { ErrorBox } from "./ui.js";

const CHECK_DELAY_MS = 400;  // after the last keystroke: one request per pause, not per key

export function DefinitionEditor({ folderId, path }) {
  const [text, setText] = useState(null);
  const [saved, setSaved] = useState(null);
  const [check, setCheck] = useState(null);  // {valid, errors: [{field, reason, line}]}
  const [error, setError] = useState(null);
  const [status, setStatus] = useState("");
  const timer = useRef(null);
  const enc = encodeURIComponent;

  const validate = async (content) => {
    try {
      setCheck(await api.post(`/folders/${folderId}/definitions/validate`, { path, content }));
    } catch (err) { setError(err); }
  };
  useEffect(() => {
    api.get(`/folders/${folderId}/download?path=${enc(path)}`)
      .then((body) => {
        const content = typeof body === "string" ? body : JSON.stringify(body, null, 2);
        setText(content); setSaved(content); validate(content);
      })
      .catch((err) => { if (err.status === 404) { setText(""); setSaved(""); validate(""); } else setError(err); });
    return () => clearTimeout(timer.current);
  }, [folderId, path]);

  const onInput = (e) => {
    const value = e.target.value;
    setText(value);
    setStatus("");
    clearTimeout(timer.current);
    timer.current = setTimeout(() => validate(value), CHECK_DELAY_MS);
  };
  const save = async () => {
    setError(null);
    try {
      await api.putRaw(`/folders/${folderId}/content?path=${enc(path)}`, text);
      setSaved(text);
      setStatus("Saved.");
    } catch (err) {
      const errors = err.problem && err.problem.data && err.problem.data.errors;
      if (Array.isArray(errors)) setCheck({ valid: false, errors });
      setError(err);
    }
  };
  if (text === null) return html`<section class="page"><${ErrorBox} error=${error} /><p class="muted">Loading…</p></section>`;
  const lines = text.split("\n");
  const errorLines = new Set((check ? check.errors : []).map((e) => e.line).filter(Boolean));
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
  return html`<section class="page editor-page">
    <div class="page-head"><h1>Edit ${path}</h1>
      <div class="actions">
        <a class="button" href=${`#/folders/${folderId}` + (dir ? `?path=${enc(dir)}` : "")}>Back to the folder</a>
        <button type="button" class="primary" onClick=${save} disabled=${text === saved}>Save</button></div></div>
    <div class="editor">
      <pre class="gutter" aria-hidden="true">${lines.map((_, i) => html`<span
        class=${errorLines.has(i + 1) ? "err" : null}>${i + 1}\n</span>`)}</pre>
      <textarea id="definition-text" aria-label=${"Contents of " + path} spellcheck="false" wrap="off"
        rows=${Math.max(lines.length + 1, 12)} value=${text} onInput=${onInput}
        aria-describedby="definition-check"></textarea>
    </div>
    <div id="definition-check" class="definition-check" aria-live="polite">
      ${check && check.valid ? html`<p class="finished ok">No errors: the ${check.kind} definition is valid.</p>` : null}
      ${check && !check.valid ? html`<ul class="def-errors">${check.errors.map((e) => html`<li>
        <span class="line">${e.line ? `Line ${e.line}` : "Line ?"}</span> <code>${e.field}</code>: ${e.reason}</li>`)}</ul>` : null}
    </div>
    ${status ? html`<p class="finished ok" role="status">${status}</p>` : null}
    <${ErrorBox} error=${error} />
  </section>`;
}
