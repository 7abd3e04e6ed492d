// Small shared widgets: modal dialog, status badge, copy button, labelled field with its error.
import { html, useEffect, useRef, useState } from "./lib.js";

let modalCount = 0;

// Inline SVG icons (no icon font, no emoji font needed); the button around each names it for screen readers.
const PATHS = {
  wrench: "M14.7 6.3a4 4 0 0 0-5.4 5.4L3 18l3 3 6.3-6.3a4 4 0 0 0 5.4-5.4l-2.5 2.5-2.4-.6-.6-2.4z",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
  copy: "M9 9h11v11H9zM5 15H4V4h11v1",
  check: "M4 12l5 5L20 6",
  close: "M6 6l12 12M18 6L6 18",
  sync: "M20 11a8 8 0 0 0-14.9-3M4 4v4h4M4 13a8 8 0 0 0 14.9 3M20 20v-4h-4",
};

export function Icon({ name }) {
  return html`<svg class="svg-icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false"
    fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
    <path d=${PATHS[name]} /></svg>`;
}

export function Modal({ title, onClose, children, footer, wide }) {
  const ref = useRef(null);
  const [id] = useState(() => `modal-${++modalCount}`);
  useEffect(() => {
    const before = document.activeElement;
    const node = ref.current;
    const first = node && node.querySelector("input, select, textarea, button:not(.modal-close)");
    (first || node).focus();
    const onKey = (e) => {
      if (e.key === "Escape") { e.preventDefault(); onClose(); }
      if (e.key === "Tab" && node) {  // keep focus inside the dialog
        const items = [...node.querySelectorAll("a[href], button:not([disabled]), input:not([disabled]), select, textarea")];
        if (!items.length) return;
        const [a, b] = [items[0], items[items.length - 1]];
        if (e.shiftKey && document.activeElement === a) { e.preventDefault(); b.focus(); }
        else if (!e.shiftKey && document.activeElement === b) { e.preventDefault(); a.focus(); }
      }
    };
    document.addEventListener("keydown", onKey);
    return () => { document.removeEventListener("keydown", onKey); if (before && before.focus) before.focus(); };
  }, []);
  return html`
    <div class="modal-backdrop" onClick=${(e) => { if (e.target === e.currentTarget) onClose(); }}>
      <div class=${"modal" + (wide ? " modal-wide" : "")} role="dialog" aria-modal="true" aria-labelledby=${id}
           ref=${ref} tabindex="-1">
        <header class="modal-head">
          <h2 id=${id}>${title}</h2>
          <button type="button" class="modal-close icon" aria-label="Close" onClick=${onClose}><${Icon} name="close" /></button>
        </header>
        <div class="modal-body">${children}</div>
        ${footer ? html`<footer class="modal-foot">${footer}</footer>` : null}
      </div>
    </div>`;
}

const STATUS_CLASS = {
  HEALTHY: "ok", READY: "ok", DEGRADED: "warn", PROVISIONING: "info", UNHEALTHY: "bad",
  DESTROYING: "muted", TERMINATING: "muted", DESTROYED: "muted",
};

export function StatusBadge({ status }) {
  const label = status === "DESTROYING" ? "TERMINATING" : (status || "UNKNOWN");
  return html`<span class=${"badge badge-" + (STATUS_CLASS[status] || "info")}>
    <span class="dot" aria-hidden="true"></span>${label}</span>`;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {  // no clipboard permission (plain http on another host): select-and-copy fallback
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
    area.remove();
    return ok;
  }
}

export function CopyButton({ text, label }) {
  const [done, setDone] = useState(false);
  return html`<button type="button" class="icon copy" aria-label=${label || "Copy"} title=${label || "Copy"}
      onClick=${async () => { setDone(await copyText(text)); setTimeout(() => setDone(false), 1500); }}>
      <${Icon} name=${done ? "check" : "copy"} /><span class="sr-only" aria-live="polite">${done ? " copied" : ""}</span></button>`;
}

export function FieldError({ id, error }) {
  return error ? html`<p class="field-error" id=${id} role="alert">${error}</p>` : null;
}

export function Field({ id, label, error, hint, children }) {
  return html`<div class=${"field" + (error ? " has-error" : "")}>
    <label for=${id}>${label}</label>
    ${children}
    ${hint ? html`<p class="hint" id=${id + "-hint"}>${hint}</p>` : null}
    <${FieldError} id=${id + "-error"} error=${error} />
  </div>`;
}

export function ErrorBox({ error }) {
  if (!error) return null;
  return html`<div class="error-box" role="alert">${error.message || String(error)}</div>`;
}

export function fmtDate(value) {
  if (!value) return "—";
  const d = new Date(value);
  return isNaN(d) ? String(value) : d.toLocaleString();
}
