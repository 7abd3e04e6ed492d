// Live metrics on the service detail: samples GET /services/{id}/metrics every 2 s while the page is open
// (up to the last hour) and draws small SVG line charts. No chart library: a polyline is all it takes.
import { api } from "./api.js";
import { html, useEffect, useRef, useState } from "./lib.js";

const SAMPLE_MS = 2000;
const KEEP = 1800;  // one hour of samples at 2 s
// token counters of the engines Moorage knows (replica /metrics, scraped by the app proxies)
const TOKEN_COUNTERS = ["llamacpp:tokens_predicted_total", "vllm:generation_tokens_total",
                        "sglang:generation_tokens_total", "tgi_request_generated_tokens_sum",
                        "echo_completion_tokens_total"];  // the last: configs/models/echo (the tests' fixture)

export function rate(prev, cur, name) {
  if (!prev || !cur || prev.collected_at == null || cur.collected_at == null) return null;
  const dt = cur.collected_at - prev.collected_at;
  const a = prev.metrics[name], b = cur.metrics[name];
  if (!(dt > 0) || a == null || b == null || b < a) return null;  // no new scrape, or a counter reset
  return (b - a) / dt;
}

const LATENCY_WINDOW = 30;  // samples (60 s at 2 s): the percentiles are of the requests that ended in that window

// Prometheus' histogram_quantile over per-bucket counts (not cumulative; the last one is above the highest
// bound): linear inside the bucket that holds the q-th request; the highest bound when it lies above it.
export function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (seen + counts[i] >= rank && counts[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lo = i === 0 ? 0 : bounds[i - 1];
      return lo + (bounds[i] - lo) * ((rank - seen) / counts[i]);
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

// The histogram of the requests between two samples (null when either has none or the proxies restarted).
export function latencyDelta(before, now) {
  const a = before && before.latency, b = now && now.latency;
  if (!b) return null;
  if (!a || a.bounds.join() !== b.bounds.join()) return null;
  const counts = b.counts.map((n, i) => n - a.counts[i]);
  return counts.some((n) => n < 0) ? null : { bounds: b.bounds, counts };
}

function Chart({ title, unit, points }) {
  const values = points.map((p) => p.v).filter((v) => v != null);
  const last = values.length ? values[values.length - 1] : null;
  const max = values.length ? Math.max(...values, 1e-9) : 1;
  const w = 300, h = 60;
  const t0 = points.length ? points[0].t : 0, t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => (t1 > t0 ? ((t - t0) / (t1 - t0)) * w : w);
  const y = (v) => h - 2 - (v / max) * (h - 4);
  const line = points.filter((p) => p.v != null).map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  const fmt = (v) => (v == null ? "—" : v >= 100 ? v.toFixed(0) : v.toFixed(2).replace(/\.?0+$/, ""));
  const minutes = Math.max(1, Math.round((t1 - t0) / 60000));
  return html`<figure class="chart">
    <figcaption><span>${title}</span><strong>${fmt(last)}${unit && last != null ? " " + unit : ""}</strong></figcaption>
    <svg viewBox=${`0 0 ${w} ${h}`} preserveAspectRatio="none" role="img"
         aria-label=${`${title}: now ${fmt(last)}, highest ${fmt(values.length ? Math.max(...values) : null)} over the last ${minutes} min`}>
      <line x1="0" y1=${h - 2} x2=${w} y2=${h - 2} class="axis" />
      ${line ? html`<polyline points=${line} class="series" />` : null}
    </svg>
    <span class="muted chart-max">max ${fmt(values.length ? Math.max(...values) : null)}</span>
  </figure>`;
}

export function Metrics({ info }) {
  const [samples, setSamples] = useState([]);
  const [error, setError] = useState(null);
  const serving = useRef(0);
  serving.current = info.active_routes.length;  // the detail page refreshes info every 2 s
  useEffect(() => {
    let stopped = false;
    const sample = async () => {
      try {
        const m = await api.get(`/services/${info.endpoint_id}/metrics`);
        if (stopped) return;
        setSamples((old) => [...old.slice(-(KEEP - 1)), { t: Date.now(), m, serving: serving.current }]);
        setError(null);
      } catch (err) { setError(err); }
    };
    sample();
    const timer = setInterval(sample, SAMPLE_MS);
    return () => { stopped = true; clearInterval(timer); };
  }, [info.endpoint_id]);
  const counter = TOKEN_COUNTERS.find((name) => samples.some((s) => name in s.m.metrics));
  // without a replica token counter: the tokens the gateway metered for this service
  const metered = !counter && samples.some((s) => s.m.tokens && s.m.tokens.completion > 0);
  const series = (f) => samples.map((s, i) => ({ t: s.t, v: f(s, i) }));
  const pct = (q) => series((s, i) => {
    const h = latencyDelta(samples[Math.max(0, i - LATENCY_WINDOW)].m, s.m);
    const v = h && quantile(h.bounds, h.counts, q);
    return v == null ? null : v * 1000;
  });
  const meteredRate = (s, i) => {
    const p = samples[i - 1];
    if (!p || !p.m.tokens || !s.m.tokens || s.t <= p.t) return null;
    const d = s.m.tokens.completion - p.m.tokens.completion;
    return d < 0 ? null : d / ((s.t - p.t) / 1000);
  };
  return html`<section aria-labelledby="metrics-title">
    <div class="section-head"><h2 id="metrics-title">Metrics</h2>
      <span class="muted">live, sampled every 2 s while this page is open</span></div>
    ${error ? html`<p class="muted" role="status">Metrics unavailable: ${error.message}</p>` : null}
    <div class="charts">
      <${Chart} title="Requests/s" points=${series((s) => s.m.rps)} />
      <${Chart} title="In flight" points=${series((s) => s.m.in_flight)} />
      <${Chart} title="Replicas serving" points=${series((s) => s.serving)} />
      <${Chart} title="Latency p50" unit="ms" points=${pct(0.5)} />
      <${Chart} title="Latency p95" unit="ms" points=${pct(0.95)} />
      <${Chart} title="Latency p99" unit="ms" points=${pct(0.99)} />
      ${counter ? html`<${Chart} title="Tokens/s" points=${series((s, i) => rate(samples[i - 1] && samples[i - 1].m, s.m, counter))} />`
        : metered ? html`<${Chart} title="Tokens/s" points=${series(meteredRate)} />` : null}
    </div>
    <p class="hint">Latency: time from a request's arrival at the app proxy to the end of its answer (a streamed
      answer's last byte), over the requests that ended in the last minute; the app proxies' histogram buckets
      bound its precision.</p>
  </section>`;
}
