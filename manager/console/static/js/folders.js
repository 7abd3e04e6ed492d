// Data / model folders (docs/console.md, "Data / model folders"): the folders by usage mode, create one, and the
// folder explorer: browse with breadcrumbs, upload files and whole directories (picker or drag-and-drop) in
// resumable chunks with a progress bar, download, rename, delete, new folder; definition files open the editor.
import { ApiError, api } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";
import { ErrorBox, Field, Modal, fmtDate } from "./ui.js";

const MODES = [["model", "Model"], ["general", "General"], ["data", "Data"]];
const PARALLEL_FILES = 3;  // files sent at once in a directory upload (each in order, chunk by chunk)
export const DEFINITION_FILES = ["model-definition.yaml", "model-definition.yml", "service-definition.toml"];

export function joinPath(dir, name) { return dir ? `${dir}/${name}` : name; }
const enc = encodeURIComponent;

function fmtSize(n) {
  if (n == null) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// One file through the chunked upload API (docs/console-api.md, "Chunked uploads"): open, then PUT chunks at
// their offsets; a 409 that names where the staged data ends resumes from there.
export async function uploadFile(folderId, path, file, onBytes) {
  const opened = await api.post(`/folders/${folderId}/uploads`, { path, size: file.size });
  if (opened.complete) return;
  const chunk = opened.max_chunk_bytes || 8 * 1024 * 1024;
  let offset = 0;
  while (offset < file.size) {
    const end = Math.min(file.size, offset + chunk);
    try {
      const out = await api.putRaw(`/folders/${folderId}/uploads/${opened.upload_id}?offset=${offset}`,
                                   file.slice(offset, end));
      onBytes(out.offset - offset);
      offset = out.offset;
      if (out.complete) return;
    } catch (err) {
      const where = err instanceof ApiError && err.status === 409 && err.problem.data && err.problem.data.offset;
      if (typeof where !== "number") throw err;
      onBytes(where - offset);
      offset = where;
    }
  }
}

// Drag-and-drop: walk dropped directories (webkitGetAsEntry) into [relative path, File] pairs.
async function entriesOf(dataTransfer) {
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push([prefix + entry.name, file]);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/");
      }
    }
  };
  const roots = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (roots.length) for (const root of roots) await walk(root, "");
  else for (const file of dataTransfer.files) out.push([file.name, file]);
  return out;
}

function NewFolderModal({ onClose, onDone, mode }) {
  const [name, setName] = useState("");
  const [usage, setUsage] = useState(mode);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    try { await api.post("/folders", { name, usage_mode: usage }); onDone(); } catch (err) { setError(err); }
  };
  const fields = error ? error.fields || {} : {};
  return html`<${Modal} title="Create folder" onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} id="folder-name" label="Folder name" error=${fields.name}>
        <input id="folder-name" value=${name} required maxlength="64" onInput=${(e) => setName(e.target.value)} /><//>
      <${Field} id="folder-usage" label="Usage mode" error=${fields.usage_mode}
          hint="Model folders can be mounted as a service's model; general and data folders as additional mounts.">
        <select id="folder-usage" value=${usage} onChange=${(e) => setUsage(e.target.value)}>
          ${MODES.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select><//>
      ${error && !fields.name && !fields.usage_mode ? html`<${ErrorBox} error=${error} />` : null}
      <div class="form-actions"><span></span><div>
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="submit" class="primary">Create</button></div></div>
    </form><//>`;
}

export function FolderList({ user }) {
  const admin = user && user.role !== "user";
  const [mode, setMode] = useState("model");
  const [everyone, setEveryone] = useState(false);
  const [folders, setFolders] = useState(null);
  const [error, setError] = useState(null);
  const [creating, setCreating] = useState(false);
  const asked = useRef("");  // the latest query: an older answer arriving late is dropped
  const load = async () => {
    const query = `/folders?usage_mode=${mode}${everyone ? "&all=true" : ""}`;
    asked.current = query;
    try {
      const out = await api.get(query);
      if (asked.current === query) { setFolders(out); setError(null); }
    } catch (err) { if (asked.current === query) setError(err); }
  };
  useEffect(() => { load(); }, [mode, everyone]);
  const cols = everyone ? 4 : 3;
  return html`<section class="page">
    <div class="page-head"><h1>Data / model folders</h1>
      <button type="button" class="primary" onClick=${() => setCreating(true)}>Create folder</button></div>
    <div class="toolbar"><div role="radiogroup" aria-label="Usage mode" class="segmented">
      ${MODES.map(([value, label]) => html`<label><input type="radio" name="usage" value=${value}
        checked=${mode === value} onChange=${() => setMode(value)} />${label}</label>`)}</div>
      ${admin ? html`<label class="check"><input type="checkbox" checked=${everyone}
        onChange=${(e) => setEveryone(e.target.checked)} /> Every user's folders</label>` : null}</div>
    <${ErrorBox} error=${error} />
    <div class="table-wrap"><table class="folders">
      <caption class="sr-only">Folders</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Usage mode</th>
        ${everyone ? html`<th scope="col">Owner</th>` : null}<th scope="col">Created at</th></tr></thead>
      <tbody>
        ${(folders || []).map((f) => html`<tr key=${f.id} data-folder=${f.name}>
          <td data-label="Name"><a href=${`#/folders/${f.id}`}>${f.name}</a></td>
          <td data-label="Usage mode">${f.usage_mode}</td>
          ${everyone ? html`<td data-label="Owner">${f.owner_email || f.user}</td>` : null}
          <td data-label="Created at">${fmtDate(f.created_at)}</td></tr>`)}
        ${folders && !folders.length ? html`<tr><td colspan=${cols} class="muted">No ${mode} folders.</td></tr>` : null}
      </tbody></table></div>
    ${creating ? html`<${NewFolderModal} mode=${mode} onClose=${() => setCreating(false)}
        onDone=${() => { setCreating(false); load(); }} />` : null}
  </section>`;
}

function RenameModal({ folderId, dir, entry, onClose, onDone }) {
  const [name, setName] = useState(entry.name);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    try {
      await api.post(`/folders/${folderId}/move-file`, { src: joinPath(dir, entry.name), dst: joinPath(dir, name) });
      onDone();
    } catch (err) { setError(err); }
  };
  return html`<${Modal} title=${"Rename " + entry.name} onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} id="rename-to" label="New name" error=${error && error.message}>
        <input id="rename-to" value=${name} required onInput=${(e) => setName(e.target.value)} /><//>
      <div class="form-actions"><span></span><div>
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="submit" class="primary">Rename</button></div></div>
    </form><//>`;
}

function DeleteModal({ folderId, dir, entry, onClose, onDone }) {
  const [error, setError] = useState(null);
  const del = async () => {
    const rec = entry.type === "dir" ? "&recursive=true" : "";
    try { await api.del(`/folders/${folderId}/files?path=${enc(joinPath(dir, entry.name))}${rec}`); onDone(); }
    catch (err) { setError(err); }
  };
  return html`<${Modal} title="Delete" onClose=${onClose} footer=${html`
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="button" class="danger" onClick=${del}>Delete</button>`}>
    <p>Delete <strong>${entry.name}</strong>${entry.type === "dir" ? " and everything in it" : ""}?</p>
    <${ErrorBox} error=${error} /><//>`;
}

function MkdirModal({ folderId, dir, onClose, onDone }) {
  const [name, setName] = useState("");
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    try { await api.post(`/folders/${folderId}/mkdir`, { path: joinPath(dir, name) }); onDone(); }
    catch (err) { setError(err); }
  };
  return html`<${Modal} title="New folder" onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} id="mkdir-name" label="Directory name" error=${error && error.message}>
        <input id="mkdir-name" value=${name} required onInput=${(e) => setName(e.target.value)} /><//>
      <div class="form-actions"><span></span><div>
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="submit" class="primary">Create</button></div></div>
    </form><//>`;
}

export function FolderExplorer({ folderId, path }) {
  const dir = path || "";
  const [folder, setFolder] = useState(null);
  const [listing, setListing] = useState(null);
  const [error, setError] = useState(null);
  const [modal, setModal] = useState(null);
  const [progress, setProgress] = useState(null);  // {done, total, files, failed: [..]}
  const [dragging, setDragging] = useState(false);
  const fileInput = useRef(null);
  const dirInput = useRef(null);
  const load = async () => {
    try {
      setListing(await api.get(`/folders/${folderId}/files?path=${enc(dir)}&limit=1000`));
      setError(null);
    } catch (err) { setError(err); }
  };
  useEffect(() => {
    api.get(`/folders/${folderId}`).then(setFolder).catch(setError);
    load();
  }, [folderId, dir]);

  const upload = async (pairs) => {
    if (!pairs.length) return;
    const total = pairs.reduce((n, [, f]) => n + f.size, 0);
    const state = { done: 0, total, files: pairs.length, finished: 0, failed: [] };
    setProgress({ ...state });
    const queue = [...pairs];
    const worker = async () => {
      while (queue.length) {
        const [rel, file] = queue.shift();
        try {
          await uploadFile(folderId, joinPath(dir, rel), file, (n) => { state.done += n; setProgress({ ...state }); });
        } catch (err) {
          state.failed.push(`${rel}: ${err.message}`);
        }
        state.finished += 1;
        setProgress({ ...state });
      }
    };
    await Promise.all(Array.from({ length: PARALLEL_FILES }, worker));
    state.complete = true;
    setProgress({ ...state });
    load();
  };
  const fromInput = (e) => {
    const files = [...e.target.files].map((f) => [f.webkitRelativePath || f.name, f]);
    e.target.value = "";
    upload(files);
  };
  const onDrop = async (e) => {
    e.preventDefault();
    setDragging(false);
    upload(await entriesOf(e.dataTransfer));
  };

  const parts = dir ? dir.split("/") : [];
  const here = (i) => `#/folders/${folderId}` + (i >= 0 ? `?path=${enc(parts.slice(0, i + 1).join("/"))}` : "");
  const done = () => { setModal(null); load(); };
  const name = folder ? folder.name : "…";
  const present = new Set((listing ? listing.entries : []).map((e) => e.name));
  const missing = !dir && listing && folder && folder.usage_mode === "model"
    ? ["model-definition.yaml", "service-definition.toml"].filter((n) => !present.has(n)) : [];
  return html`<section class="page">
    <div class="page-head"><h1>${name}</h1>
      <div class="actions">
        <button type="button" onClick=${() => fileInput.current.click()}>Upload files</button>
        <button type="button" onClick=${() => dirInput.current.click()}>Upload folder</button>
        <button type="button" onClick=${() => setModal({ kind: "mkdir" })}>New folder</button>
      </div></div>
    <input type="file" multiple hidden ref=${fileInput} aria-label="Files to upload" onChange=${fromInput} />
    <input type="file" multiple webkitdirectory hidden ref=${dirInput} aria-label="Folder to upload" onChange=${fromInput} />
    <nav aria-label="Breadcrumbs" class="breadcrumbs">
      <a href="#/folders">Folders</a> / <a href=${here(-1)}>${name}</a>
      ${parts.map((p, i) => html` / <a href=${here(i)} aria-current=${i === parts.length - 1 ? "page" : null}>${p}</a>`)}
    </nav>
    ${missing.length ? html`<p class="actions">${missing.map((n) => html`<a class="button small"
        href=${`#/folders/${folderId}/edit?path=${enc(n)}`}>Create ${n}</a>`)}</p>` : null}
    ${progress ? html`<div class="upload-progress" role="status">
      <label>${progress.complete ? "Upload finished" : "Uploading"}: ${progress.finished} of ${progress.files} files, ${fmtSize(progress.done)} of ${fmtSize(progress.total)}
        <progress max=${progress.total || 1} value=${progress.total ? progress.done : progress.complete ? 1 : 0}></progress></label>
      ${progress.failed.map((f) => html`<p class="field-error">${f}</p>`)}
    </div>` : null}
    <${ErrorBox} error=${error} />
    <div class=${"table-wrap dropzone" + (dragging ? " dragging" : "")}
         onDragOver=${(e) => { e.preventDefault(); setDragging(true); }}
         onDragLeave=${() => setDragging(false)} onDrop=${onDrop}>
    <table class="files">
      <caption class="sr-only">Files in ${dir || "the folder root"}</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Size</th><th scope="col">Modified</th><th scope="col">Actions</th></tr></thead>
      <tbody>
        ${(listing ? listing.entries : []).map((e) => {
          const rel = joinPath(dir, e.name);
          const editable = e.type === "file" && DEFINITION_FILES.includes(e.name);
          return html`<tr key=${e.name} data-entry=${e.name}>
            <td data-label="Name">${e.type === "dir"
              ? html`<a href=${`#/folders/${folderId}?path=${enc(rel)}`}>${e.name}/</a>`
              : html`<span>${e.name}</span>`}</td>
            <td data-label="Size">${e.type === "file" ? fmtSize(e.size) : e.type === "dir" ? "—" : e.type}</td>
            <td data-label="Modified">${fmtDate(e.mtime)}</td>
            <td data-label="Actions" class="control">
              ${editable ? html`<a class="button small" href=${`#/folders/${folderId}/edit?path=${enc(rel)}`}
                  aria-label=${"Edit " + e.name}>Edit</a>` : null}
              ${e.type === "file" ? html`<a class="button small" download=${e.name}
                  href=${`/api/folders/${folderId}/download?path=${enc(rel)}`} aria-label=${"Download " + e.name}>Download</a>` : null}
              <button type="button" class="small" aria-label=${"Rename " + e.name}
                  onClick=${() => setModal({ kind: "rename", entry: e })}>Rename</button>
              <button type="button" class="small danger" aria-label=${"Delete " + e.name}
                  onClick=${() => setModal({ kind: "delete", entry: e })}>Delete</button></td></tr>`;
        })}
        ${listing && !listing.entries.length ? html`<tr><td colspan="4" class="muted">Empty. Drop files or folders here.</td></tr>` : null}
      </tbody></table>
    <p class="hint drop-hint">Drag files or folders here to upload them into ${dir || "the folder root"}.</p>
    </div>
    ${modal && modal.kind === "rename" ? html`<${RenameModal} folderId=${folderId} dir=${dir} entry=${modal.entry}
        onClose=${() => setModal(null)} onDone=${done} />` : null}
    ${modal && modal.kind === "delete" ? html`<${DeleteModal} folderId=${folderId} dir=${dir} entry=${modal.entry}
        onClose=${() => setModal(null)} onDone=${done} />` : null}
    ${modal && modal.kind === "mkdir" ? html`<${MkdirModal} folderId=${folderId} dir=${dir}
        onClose=${() => setModal(null)} onDone=${done} />` : null}
  </section>`;
}
