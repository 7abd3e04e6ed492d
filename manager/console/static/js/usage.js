// Usage: the gateway's usage records summed by GET /usage (docs/gateway.md, docs/console.md "Usage"): bar charts
// per day and per model (tokens, requests), a table grouped by day / model / key (/ user for admins), a time
// range, and a CSV download of the table. Columns the API adds (cost, when prices are set) are shown as they come.
import { api } from "./api.js";
import { html, useEffect, useState } from "./lib.js";
import { ErrorBox } from "./ui.js";

const RANGES = [["1d", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["90d", "Last 90 days"],
                ["365d", "Last 365 days"], ["custom", "Custom dates"]];
const today = () => new Date().toISOString().slice(0, 10);

// The query's since/until for a range: a duration, or whole UTC days From..To (To included); null when invalid.
export function rangeQuery(range, from, to) {
  if (range !== "custom") return { query: `since=${range}`, days: parseInt(range, 10), end: Date.now() };
  const a = Date.parse(from + "T00:00:00Z"), b = Date.parse(to + "T00:00:00Z");
  if (isNaN(a) || isNaN(b) || b < a || b - a > 365 * 86400e3) return null;
  const until = new Date(b + 86400e3).toISOString();
  return { query: `since=${encodeURIComponent(new Date(a).toISOString())}&until=${encodeURIComponent(until)}`,
           days: Math.round((b - a) / 86400e3) + 1, end: b };
}
const GROUPS = ["day", "model", "key", "user"];
const METRICS = ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors"];
const LABELS = { day: "Day", model: "Model", key: "API key", user: "User", requests: "Requests",
                 prompt_tokens: "Prompt tokens", completion_tokens: "Completion tokens", total_tokens: "Total tokens",
                 errors: "Errors", cost: "Cost", input_cost: "Input cost", output_cost: "Output cost" };

const label = (col) => LABELS[col] || col.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

// The table's columns: the groups, the known sums, then whatever else the rows carry (cost columns).
export function usageColumns(by, rows) {
  const extra = [];
  for (const row of rows) {
    for (const k of Object.keys(row)) if (!GROUPS.includes(k) && !METRICS.includes(k) && !extra.includes(k)) extra.push(k);
  }
  return [...by, ...METRICS, ...extra];
}

// RFC 4180: quote a field holding a comma, quote or line break; a leading = + - @ is prefixed with ' so that a
// spreadsheet does not run a model or key name as a formula.
export function toCsv(columns, rows) {
  const cell = (v) => {
    let s = v == null ? "" : String(v);
    if (/^[=+\-@]/.test(s) && isNaN(Number(s))) s = "'" + s;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [columns.join(","), ...rows.map((r) => columns.map((c) => cell(r[c])).join(","))].join("\r\n") + "\r\n";
}

// Sum rows (grouped by day and model) into one series by `dim`: [{name, requests, total_tokens, ...}]
export function sumBy(rows, dim, extra) {
  const out = new Map();
  for (const row of rows) {
    const name = row[dim];
    const acc = out.get(name) || { name, requests: 0, total_tokens: 0 };
    acc.requests += row.requests || 0;
    acc.total_tokens += row.total_tokens || 0;
    for (const k of extra) if (typeof row[k] === "number") acc[k] = (acc[k] || 0) + row[k];
    out.set(name, acc);
  }
  return [...out.values()];
}

// Every UTC day of the range, so that a quiet day shows as an empty bar (at most 366 of them).
export function fillDays(items, days, now) {
  const have = new Map(items.map((i) => [i.name, i]));
  const out = [];
  for (let n = Math.min(days, 366) - 1; n >= 0; n--) {
    const day = new Date(now - n * 86400e3).toISOString().slice(0, 10);
    out.push(have.get(day) || { name: day, requests: 0, total_tokens: 0 });
  }
  return out;
}

const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString() : v.toFixed(4)) : v ?? "—");

function Bars({ title, items, field }) {
  const max = Math.max(1, ...items.map((i) => i[field] || 0));
  const w = 300, h = 90, gap = 2;
  const bw = items.length ? Math.min(40, Math.max(1, (w - gap * items.length) / items.length)) : w;
  const summary = items.map((i) => `${i.name}: ${fmt(i[field] || 0)}`).join("; ");
  return html`<figure class="chart bars">
    <figcaption><span>${title}</span><strong>${fmt(items.reduce((s, i) => s + (i[field] || 0), 0))}</strong></figcaption>
    <svg viewBox=${`0 0 ${w} ${h}`} preserveAspectRatio="none" role="img"
         aria-label=${`${title}: ${summary || "no usage"}`}>
      <line x1="0" y1=${h - 1} x2=${w} y2=${h - 1} class="axis" />
      ${items.map((i, n) => {
        const bh = ((i[field] || 0) / max) * (h - 4);
        return html`<rect key=${i.name} class="bar" x=${n * (bw + gap)} y=${h - 1 - bh} width=${bw} height=${bh}>
          <title>${i.name}: ${fmt(i[field] || 0)}</title></rect>`;
      })}
    </svg>
    <span class="muted chart-max">${!items.length ? "no usage" : items.length === 1 ? items[0].name
      : `${items[0].name} … ${items[items.length - 1].name}`}</span>
  </figure>`;
}

export function UsagePage({ user }) {
  const admin = user && user.role !== "user";
  const [range, setRange] = useState("7d");
  const [from, setFrom] = useState(() => new Date(Date.now() - 6 * 86400e3).toISOString().slice(0, 10));
  const [to, setTo] = useState(today);
  const span = rangeQuery(range, from, to);
  const [by, setBy] = useState(["day", "model"]);
  const [chartRows, setChartRows] = useState(null);
  const [table, setTable] = useState(null);
  const [keyNames, setKeyNames] = useState({});
  const [userNames, setUserNames] = useState({});  // every usage record has a key, so its owner is listed
  const [error, setError] = useState(null);
  useEffect(() => {
    api.get("/api-keys" + (admin ? "?all=true" : ""))
      .then((out) => {
        setKeyNames(Object.fromEntries(out.api_keys.map((k) => [k.id, k.name])));
        setUserNames(Object.fromEntries(out.api_keys.filter((k) => k.owner_email).map((k) => [k.owner_id, k.owner_email])));
      }).catch(() => {});
  }, []);
  useEffect(() => {
    if (!span) { setError(new Error("Custom dates: From must be a day on or before To, at most a year apart")); return undefined; }
    let current = true;
    const q = (groups) => api.get(`/usage?by=${groups.join(",")}&${span.query}`);
    Promise.all([q(["day", "model"]), by.length ? q(by) : q([])])
      .then(([charts, grouped]) => { if (current) { setChartRows(charts.rows); setTable(grouped); setError(null); } })
      .catch((err) => { if (current) setError(err); });
    return () => { current = false; };
  }, [span && span.query, by.join()]);

  const groups = admin ? GROUPS : GROUPS.filter((g) => g !== "user");
  const toggle = (g) => setBy(by.includes(g) ? by.filter((x) => x !== g) : GROUPS.filter((x) => x === g || by.includes(x)));
  const named = (r) => ({ ...r, ...(r.key ? { key_name: keyNames[r.key] || "" } : {}),
                          ...(r.user ? { user_email: userNames[r.user] || "" } : {}) });
  const rows = table ? table.rows.map(named) : [];
  const columns = table ? usageColumns(table.by, rows).filter((c) => c !== "key_name" && c !== "user_email") : [];
  const csvColumns = columns.flatMap((c) => (c === "key" ? ["key", "key_name"] : c === "user" ? ["user", "user_email"] : [c]));
  const extra = chartRows ? usageColumns([], chartRows).filter((c) => !METRICS.includes(c)) : [];
  const byDay = chartRows && span ? fillDays(sumBy(chartRows, "day", extra), span.days, span.end) : [];
  const byModel = chartRows ? sumBy(chartRows, "model", extra).sort((a, b) => b.total_tokens - a.total_tokens) : [];
  const download = () => {
    const blob = new Blob([toCsv(csvColumns, rows)], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `moorage-usage-${by.join("-") || "total"}-${range === "custom" ? `${from}-${to}` : range}.csv`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };
  const cell = (r, c) => (c === "key" && r.key ? html`${r.key_name || html`<code>${r.key.slice(0, 8)}</code>`}`
    : c === "user" && r.user ? html`${r.user_email || html`<code>${r.user.slice(0, 8)}</code>`}` : fmt(r[c]));
  return html`<section class="page">
    <div class="page-head"><h1>Usage</h1>
      <button type="button" disabled=${!table} onClick=${download}>Download CSV</button></div>
    <p class="muted">Requests through the gateway's API keys${admin ? " (every user's you may act for)" : ""}; days
      are UTC.</p>
    <div class="toolbar">
      <label>Time range <select value=${range} onChange=${(e) => setRange(e.target.value)}>
        ${RANGES.map(([v, text]) => html`<option value=${v}>${text}</option>`)}</select></label>
      ${range === "custom" ? html`<label>From <input type="date" value=${from} max=${to}
          onInput=${(e) => setFrom(e.target.value)} /></label>
        <label>To <input type="date" value=${to} min=${from} onInput=${(e) => setTo(e.target.value)} /></label>` : null}
      <fieldset class="segmented" aria-label="Group the table by"><legend class="sr-only">Group the table by</legend>
        ${groups.map((g) => html`<label key=${g}><input type="checkbox" checked=${by.includes(g)}
          onChange=${() => toggle(g)} /> ${label(g)}</label>`)}</fieldset>
    </div>
    <${ErrorBox} error=${error} />
    <div class="charts">
      <${Bars} title="Tokens per day" items=${byDay} field="total_tokens" />
      <${Bars} title="Requests per day" items=${byDay} field="requests" />
      <${Bars} title="Tokens per model" items=${byModel} field="total_tokens" />
      <${Bars} title="Requests per model" items=${byModel} field="requests" />
      ${extra.includes("cost") ? html`<${Bars} title="Cost per day" items=${byDay} field="cost" />` : null}
    </div>
    <div class="table-wrap"><table class="usage">
      <caption class="sr-only">Usage grouped by ${by.join(", ") || "nothing (totals)"}</caption>
      <thead><tr>${columns.map((c) => html`<th scope="col" key=${c}>${label(c)}</th>`)}</tr></thead>
      <tbody>${rows.map((r, i) => html`<tr key=${i}>${columns.map((c) => html`<td data-label=${label(c)}
          class=${GROUPS.includes(c) ? "" : "num"}>${cell(r, c)}</td>`)}</tr>`)}
        ${table && !rows.length ? html`<tr><td colspan=${columns.length || 1} class="muted">No usage in this range.</td></tr>` : null}
      </tbody></table></div>
  </section>`;
}
