// Model Serving: the list of services, updated every 2 s; filter, search, pages; edit and terminate.
import { api } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";
import { CopyButton, ErrorBox, Icon, Modal, StatusBadge, fmtDate } from "./ui.js";

const PAGE_SIZE = 20;
const POLL_MS = 2000;  // the issue's bound: live updates at most every 2 s

export function TerminateModal({ service, onClose, onDone }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const del = async () => {
    setBusy(true);
    try { await api.del(`/services/${service.id}`); onDone(); } catch (err) { setError(err); setBusy(false); }
  };
  return html`<${Modal} title="Terminate service" onClose=${onClose} footer=${html`
      <button type="button" onClick=${onClose}>Cancel</button>
      <button type="button" class="danger" disabled=${busy} onClick=${del}>Delete</button>`}>
    <p>Terminate <strong>${service.name}</strong>? Its replicas stop and its endpoint URL stops answering.</p>
    <${ErrorBox} error=${error} />
  <//>`;
}

export function ServiceList() {
  const [lifecycle, setLifecycle] = useState("active");
  const [search, setSearch] = useState("");
  const [page, setPage] = useState(0);
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [terminating, setTerminating] = useState(null);
  const query = useRef({});
  query.current = { lifecycle, search, page };

  const load = async () => {
    const q = query.current;
    const body = { lifecycle: q.lifecycle, offset: q.page * PAGE_SIZE, limit: PAGE_SIZE };
    if (q.search.trim()) body.filter = { name: { i_contains: q.search.trim() } };
    try {
      const out = await api.post("/services/_/search", body);
      if (query.current === q) { setData(out); setError(null); }
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => {
    load();
    const timer = setInterval(load, POLL_MS);
    return () => clearInterval(timer);
  }, [lifecycle, search, page]);

  const total = data ? data.pagination.total : 0;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  const rows = data ? data.items : [];
  return html`<section class="page">
    <div class="page-head">
      <h1>Model Serving</h1>
      <a class="button primary" href="#/services/new">Start Service</a>
    </div>
    <div class="toolbar">
      <div role="radiogroup" aria-label="Show" class="segmented">
        ${["active", "destroyed"].map((value) => html`<label>
          <input type="radio" name="lifecycle" value=${value} checked=${lifecycle === value}
                 onChange=${() => { setLifecycle(value); setPage(0); }} />
          ${value === "active" ? "Active" : "Destroyed"}</label>`)}
      </div>
      <label class="search"><span class="sr-only">Search by name</span>
        <input type="search" placeholder="Search by name" aria-label="Search by name" value=${search}
               onInput=${(e) => { setSearch(e.target.value); setPage(0); }} /></label>
    </div>
    <${ErrorBox} error=${error} />
    <div class="table-wrap">
    <table class="services">
      <caption class="sr-only">Services</caption>
      <thead><tr>
        <th scope="col">Name</th><th scope="col">Status</th><th scope="col">Replicas</th>
        <th scope="col">Service endpoint</th><th scope="col">Access</th><th scope="col">Owner</th>
        <th scope="col">Created at</th><th scope="col">Control</th>
      </tr></thead>
      <tbody>
        ${rows.map((s) => html`<tr key=${s.id} data-service=${s.name}>
          <td data-label="Name">${lifecycle === "active"
            ? html`<a href=${"#/services/" + s.id}>${s.name}</a>` : s.name}</td>
          <td data-label="Status"><${StatusBadge} status=${s.status} /></td>
          <td data-label="Replicas"><span aria-label=${`${s.active_route_count} healthy of ${s.replicas} desired`}>
            ${s.active_route_count} / ${s.replicas}</span></td>
          <td data-label="Service endpoint" class="endpoint">${s.service_endpoint ? html`
            <code>${s.service_endpoint}</code>
            <${CopyButton} text=${s.service_endpoint} label=${"Copy the endpoint URL of " + s.name} />
            <a class="button small" href=${"#/chat?service=" + s.id}
               aria-label=${"LLM Chat Test with " + s.name}>LLM Chat Test</a>` : "—"}</td>
          <td data-label="Access">${s.open_to_public ? "Public" : "Token"}</td>
          <td data-label="Owner">${s.owner || "—"}</td>
          <td data-label="Created at">${fmtDate(s.created_at)}</td>
          <td data-label="Control" class="control">${lifecycle === "active" && s.status !== "DESTROYING" ? html`
            <a class="icon" href=${"#/services/" + s.id + "/edit"} aria-label=${"Edit " + s.name}
               title="Edit"><${Icon} name="wrench" /></a>
            <button type="button" class="icon" aria-label=${"Terminate " + s.name} title="Terminate"
                    onClick=${() => setTerminating(s)}><${Icon} name="trash" /></button>` : null}</td>
        </tr>`)}
        ${data && !rows.length ? html`<tr><td colspan="8" class="muted">No services${search ? " match" : ""}.</td></tr>` : null}
      </tbody>
    </table>
    </div>
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled=${page === 0} onClick=${() => setPage(page - 1)}>Previous</button>
      <span aria-live="polite">Page ${page + 1} of ${pages} · ${total} service${total === 1 ? "" : "s"}</span>
      <button type="button" disabled=${page + 1 >= pages} onClick=${() => setPage(page + 1)}>Next</button>
    </nav>
    ${terminating ? html`<${TerminateModal} service=${terminating} onClose=${() => setTerminating(null)}
        onDone=${() => { setTerminating(null); load(); }} />` : null}
  </section>`;
}
