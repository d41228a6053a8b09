// The operator's dashboard: runs in the browser, reads GET /v1/status once a second (RTT, lag,
// divergence, history) and the event stream GET /v1/events (roles and events as they happen), and
// sends POST /v1/switchover with the bearer token the operator types (kept in sessionStorage for
// the tab, never in a URL). Everything the API says is put in the page as text, never as HTML.

interface Summary {
  count: number;
  p50Us: number | null;
}
interface Windowed {
  total: Summary;
  recent: Summary;
}
interface PathRtt {
  handshake?: Windowed;
  data?: Windowed;
}
interface ReplicaStatus {
  id: string;
  address: string;
  state: "active" | "draining";
  health: { state?: string } | string | null;
  connections: { shadowsActive: number; diverged: number; lagging: number };
  totals: { diverged: number; lagging: number; retransmits: number };
  bufferedBytes: number;
  rtt: PathRtt & { srttUs: number | null };
}
interface HistoryEntry {
  at: string;
  kind: string;
  replica: string;
  from?: string;
  to?: string;
  spliced?: number;
  reset?: number;
  stallMs?: number;
  reason?: string;
  address?: string;
  confirmedBy?: string;
}
interface Status {
  service: { address: string };
  original: { address: string; id: string | null; since: string; health: unknown };
  replicas: ReplicaStatus[];
  connections: { active: number; opened: number; diverged: number; lagging: number };
  rtt: { windowMs: number; client: PathRtt; original: PathRtt } | null;
  history: HistoryEntry[];
  state: { connected: boolean; pendingWrites: number };
  failures: {
    hangBudgetMs: number;
    withheld: number;
    falseFailovers: number;
    formerOriginals: Array<{ address: string; state: string }>;
  };
}
interface Roles {
  original: { address: string; id: string | null };
  replicas: Array<{ id: string; address: string; state: string }>;
}

const $ = <T extends HTMLElement>(sel: string): T => {
  const e = document.querySelector<T>(sel);
  if (!e) throw new Error(`dashboard: ${sel} missing`);
  return e;
};
const el = (tag: string, text?: string, cls?: string): HTMLElement => {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
};
const fmtUs = (us: number | null | undefined): string =>
  us === null || us === undefined
    ? "—"
    : us >= 10_000
      ? `${(us / 1000).toFixed(1)} ms`
      : `${us.toFixed(0)} µs`;
const fmtBytes = (b: number): string =>
  b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`;
const healthText = (h: unknown): string => {
  if (h === null || h === undefined) return "unknown";
  if (typeof h === "string") return h;
  if (typeof h === "object" && "state" in h) return String(h.state);
  return JSON.stringify(h);
};

// ------------------------------------------------------------------ RTT history and chart

/** Points kept per series: two minutes at one status per second. */
const HISTORY_POINTS = 120;
const rttHistory = new Map<string, Array<{ t: number; us: number }>>();
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function pathP50(p: PathRtt | undefined): number | null {
  // Data round trips when there are recent ones (the service's own pace), else handshakes.
  const d = p?.data?.recent;
  if (d && d.count > 0 && d.p50Us !== null) return d.p50Us;
  const h = p?.handshake?.recent;
  return h && h.count > 0 ? h.p50Us : null;
}

function recordRtt(s: Status, now: number): void {
  const points: Array<[string, number | null]> = [
    ["client", pathP50(s.rtt?.client)],
    ["original", pathP50(s.rtt?.original)],
    ...s.replicas.map((r): [string, number | null] => [r.id, pathP50(r.rtt)]),
  ];
  for (const [name, us] of points) {
    if (us === null) continue;
    const h = rttHistory.get(name) ?? [];
    h.push({ t: now, us });
    if (h.length > HISTORY_POINTS) h.splice(0, h.length - HISTORY_POINTS);
    rttHistory.set(name, h);
  }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A line per path on a log scale (client µs and WAN replicas' ms side by side). */
function drawRtt(now: number): void {
  const W = 640;
  const H = 220;
  const L = 56;
  const B = 24;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "RTT per path" });
  const all = [...rttHistory.values()].flat();
  const legend = $("#rtt-legend");
  legend.replaceChildren();
  if (all.length === 0) {
    chart.appendChild(
      svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#888" }, "no RTT sample yet"),
    );
    $("#rtt-chart").replaceChildren(chart);
    return;
  }
  const lo = Math.max(1, Math.min(...all.map((p) => p.us)));
  const hi = Math.max(lo * 10, Math.max(...all.map((p) => p.us)));
  const y0 = Math.floor(Math.log10(lo));
  const y1 = Math.ceil(Math.log10(hi));
  const span = HISTORY_POINTS * 1000;
  const x = (t: number) => L + ((t - (now - span)) / span) * (W - L - 8);
  const y = (us: number) => H - B - ((Math.log10(Math.max(us, 1)) - y0) / (y1 - y0)) * (H - B - 8);
  for (let d = y0; d <= y1; d++) {
    const yy = y(10 ** d);
    chart.appendChild(svg("line", { x1: L, x2: W - 8, y1: yy, y2: yy, stroke: "#e3e6ea" }));
    chart.appendChild(
      svg(
        "text",
        { x: L - 6, y: yy + 4, "text-anchor": "end", "font-size": 11, fill: "#666" },
        fmtUs(10 ** d),
      ),
    );
  }
  chart.appendChild(svg("text", { x: L, y: H - 6, "font-size": 11, fill: "#666" }, "−2 min"));
  chart.appendChild(
    svg("text", { x: W - 8, y: H - 6, "font-size": 11, fill: "#666", "text-anchor": "end" }, "now"),
  );
  let i = 0;
  for (const [name, pts] of rttHistory) {
    const color = COLORS[i++ % COLORS.length]!;
    const d = pts.map((p, k) => `${k ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.us).toFixed(1)}`).join("");
    chart.appendChild(
      svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, "data-series": name }),
    );
    const last = pts[pts.length - 1]!;
    const item = el("span", `■ ${name} ${fmtUs(last.us)}`);
    item.style.color = color;
    item.dataset.series = name;
    legend.appendChild(item);
  }
  $("#rtt-chart").replaceChildren(chart);
}

// ------------------------------------------------------------------ topology and tables

let lastStatus: Status | undefined;

function drawRoles(r: Roles, health?: Map<string, string>, trouble?: Map<string, boolean>): void {
  const o = $("#original");
  o.querySelector(".address")!.textContent =
    `${r.original.address}${r.original.id ? ` (${r.original.id})` : ""}`;
  o.dataset.address = r.original.address;
  const oh = health?.get("original") ?? "";
  o.querySelector(".health")!.textContent = oh;
  o.classList.toggle("unhealthy", oh === "down" || oh === "suspect");
  const list = $("#replicas");
  list.replaceChildren(
    ...r.replicas.map((rep) => {
      const n = el("div", undefined, `node replica ${rep.state}`);
      n.dataset.id = rep.id;
      n.dataset.address = rep.address;
      n.appendChild(el("div", `replica ${rep.id}`, "role"));
      n.appendChild(el("div", rep.address, "address"));
      const h = health?.get(rep.id);
      n.appendChild(el("div", `${rep.state}${h ? `, ${h}` : ""}`, "small"));
      if (h === "down" || h === "suspect") n.classList.add("unhealthy");
      if (trouble?.get(rep.id)) n.classList.add("trouble");
      return n;
    }),
  );
  const sel = $<HTMLSelectElement>("#switchover-target");
  const chosen = sel.value;
  sel.replaceChildren(
    Object.assign(el("option", "best (lowest RTT)"), { value: "" }),
    ...r.replicas
      .filter((rep) => rep.state === "active")
      .map((rep) => Object.assign(el("option", `${rep.id} (${rep.address})`), { value: rep.id })),
  );
  if ([...sel.options].some((op) => op.value === chosen)) sel.value = chosen;
}

function drawStatus(s: Status): void {
  $("#service").textContent = `service ${s.service.address}`;
  $("#vip").textContent = s.service.address;
  $("#connections").textContent =
    `${s.connections.active} open, ${s.connections.diverged} diverged, ${s.connections.lagging} lagging`;
  const f = s.failures;
  const lost = f.formerOriginals.filter((x) => x.state === "alive").map((x) => x.address);
  const detector = $("#detector");
  detector.textContent = `hang budget ${f.hangBudgetMs.toFixed(0)} ms, ${f.withheld} withheld, ${f.falseFailovers} false failovers${lost.length > 0 ? ` — lost capacity: ${lost.join(", ")} (needs resync)` : ""}`;
  detector.className = `small${lost.length > 0 ? " bad" : ""}`;
  const store = $("#store");
  store.textContent = s.state.connected
    ? "state stored"
    : `state store away (${s.state.pendingWrites} queued)`;
  store.className = `badge ${s.state.connected ? "ok" : "bad"}`;
  const health = new Map<string, string>([["original", healthText(s.original.health)]]);
  const trouble = new Map<string, boolean>();
  for (const r of s.replicas) {
    health.set(r.id, healthText(r.health));
    trouble.set(r.id, r.connections.diverged + r.connections.lagging > 0);
  }
  drawRoles(
    {
      original: s.original,
      replicas: s.replicas.map((r) => ({ id: r.id, address: r.address, state: r.state })),
    },
    health,
    trouble,
  );
  const body = $("#replica-table").querySelector("tbody")!;
  body.replaceChildren(
    ...s.replicas.map((r) => {
      const tr = el("tr");
      tr.dataset.id = r.id;
      const cells: Array<[string, boolean?, boolean?]> = [
        [r.id],
        [r.address],
        [r.state],
        [healthText(r.health)],
        [String(r.connections.shadowsActive), true],
        [String(r.connections.diverged), true, r.connections.diverged > 0],
        [String(r.connections.lagging), true, r.connections.lagging > 0],
        [fmtBytes(r.bufferedBytes), true],
        [String(r.totals.diverged), true],
        [String(r.totals.lagging), true],
        [String(r.totals.retransmits), true],
        [fmtUs(r.rtt.srttUs), true],
      ];
      for (const [text, num, bad] of cells)
        tr.appendChild(el("td", text, `${num ? "num" : ""}${bad ? " bad" : ""}`));
      return tr;
    }),
  );
  const tl = $("#timeline");
  tl.replaceChildren(
    ...[...s.history].reverse().map((h) => {
      const li = el("li", describeHistory(h));
      li.dataset.kind = h.kind;
      return li;
    }),
  );
  if (s.history.length === 0) tl.appendChild(el("li", "no role change or replica change yet", "small"));
}

function describeHistory(h: HistoryEntry): string {
  const at = new Date(h.at).toLocaleTimeString();
  if (h.from !== undefined)
    return `${at} ${h.kind}: ${h.from} → ${h.to ?? "?"} (${h.replica}), ${h.spliced ?? 0} spliced, ${h.reset ?? 0} reset${h.stallMs !== undefined ? `, stall ${h.stallMs.toFixed(1)} ms` : ""}${h.confirmedBy ? `, confirmed by ${h.confirmedBy}` : ""}${h.reason ? ` — ${h.reason}` : ""}`;
  return `${at} ${h.kind}: ${h.replica || h.address || ""}${h.reason ? ` — ${h.reason}` : ""}`;
}

// ------------------------------------------------------------------ data sources

async function refresh(): Promise<void> {
  try {
    const r = await fetch("/v1/status", { cache: "no-store" });
    if (!r.ok) throw new Error(`status ${r.status}`);
    const s = (await r.json()) as Status;
    lastStatus = s;
    const now = Date.now();
    recordRtt(s, now);
    drawStatus(s);
    drawRtt(now);
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("#service").textContent = `status unavailable: ${(e as Error).message}`;
  }
}

/** The stream's event types: the server writes them into the page (one list, on the server). */
const EVENT_TYPES = (document.body.dataset.eventTypes ?? "").split(" ").filter(Boolean);
/** Lines kept in the live event list. */
const EVENT_LINES = 200;

function connectEvents(): void {
  const stream = $("#stream");
  const es = new EventSource("/v1/events");
  es.onopen = () => {
    stream.textContent = "live";
    stream.className = "badge ok";
  };
  // EventSource reconnects by itself (sending Last-Event-ID); the badge says it is away meanwhile.
  es.onerror = () => {
    stream.textContent = "reconnecting";
    stream.className = "badge bad";
  };
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (ev: MessageEvent<string>) => {
      let data: Record<string, unknown> = {};
      try {
        data = JSON.parse(ev.data) as Record<string, unknown>;
      } catch {
        return;
      }
      if (type === "roles") drawRoles(data as unknown as Roles);
      const list = $("#events");
      const { at, ...rest } = data;
      delete rest.type;
      const li = el(
        "li",
        `${typeof at === "string" ? new Date(at).toLocaleTimeString() : new Date().toLocaleTimeString()} ${type} ${JSON.stringify(rest)}`,
      );
      li.dataset.type = type;
      list.prepend(li);
      while (list.children.length > EVENT_LINES) list.lastElementChild!.remove();
      // Anything that changes roles or the replica set shows at once, not at the next poll.
      if (type !== "diverged" && type !== "lagging") void refresh();
    });
  }
}

// ------------------------------------------------------------------ switchover

const TOKEN_KEY = "tcp-replicator-token";

async function switchover(ev: Event): Promise<void> {
  ev.preventDefault();
  const out = $("#switchover-result");
  const token = $<HTMLInputElement>("#token").value.trim();
  const replica = $<HTMLSelectElement>("#switchover-target").value;
  if (!token) {
    out.textContent = "a token is needed: the API's bearer token (lab up prints it)";
    out.className = "small error";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  const button = $<HTMLButtonElement>("#switchover");
  button.disabled = true;
  out.textContent = "switching over…";
  out.className = "small";
  try {
    const r = await fetch("/v1/switchover", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify(replica ? { replica } : {}),
    });
    const body = (await r.json().catch(() => ({}))) as Record<string, unknown>;
    if (!r.ok) {
      out.textContent = `refused (${r.status}): ${typeof body.message === "string" ? body.message : r.statusText}`;
      out.className = "small error";
    } else {
      out.textContent = `${String(body.replica)} is the original now (${String(body.from)} → ${String(body.to)}): ${Number(body.spliced)} connections continued, ${Number(body.reset)} reset`;
      out.className = "small done";
    }
  } catch (e) {
    out.textContent = `failed: ${(e as Error).message}`;
    out.className = "small error";
  } finally {
    button.disabled = false;
    await refresh();
  }
}

$<HTMLInputElement>("#token").value = sessionStorage.getItem(TOKEN_KEY) ?? "";
$("#switchover-form").addEventListener("submit", (ev) => void switchover(ev));
connectEvents();
void refresh();
setInterval(() => void refresh(), 1000);
// Keeps the chart's time axis moving between polls when the API is away.
setInterval(() => lastStatus && drawRtt(Date.now()), 5000);
