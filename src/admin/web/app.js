// brokk's web console: a single page over the admin API (/v1, bearer token from the login
// form, kept in sessionStorage). Everything a client sent (client ids, users, topics,
// payloads) is put in the page as text, never as HTML.

import { MqttClient } from "/console/mqtt.js";

const TOKEN_KEY = "brokk.token";
const $ = (selector) => document.querySelector(selector);

// h("tag.class", {attr: value, onclick: f}, child, ...): an element; strings become text.
function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else if (key === "style") el.style.cssText = value; // CSSOM: allowed by the page's CSP

    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false || child === "") continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// On a narrow screen a table's rows become cards: each cell is labelled with its column
// (style.css shows the label before the value).
function cards(table) {
  const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of table.querySelectorAll("tbody tr")) {
    [...row.children].forEach((td, i) => td.setAttribute("data-label", heads[i] ?? ""));
  }
  table.classList.add("cards");
  return table;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// null: not logged in; "": the API wants no token (a loopback bind without token_file).
function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, { method = "GET", tokenOverride } = {}) {
  const t = tokenOverride ?? token() ?? "";
  const headers = t ? { Authorization: `Bearer ${t}` } : {};
  const response = await fetch(path, { method, headers, cache: "no-store" });
  if (response.status === 204) return null;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body?.error ?? `${response.status} ${response.statusText}`;
    if (response.status === 401 && tokenOverride === undefined) showLogin(`Refused: ${message}`);
    throw new ApiError(response.status, message);
  }
  return body;
}

const q = (params) => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") s.set(k, v);
  const text = s.toString();
  return text ? `?${text}` : "";
};
const enc = encodeURIComponent;

// ---- close reasons, from docs/close-reasons.md (compiled into the binary) ----
let reasons = [];
async function loadReasons() {
  if (reasons.length) return reasons;
  const response = await fetch("/console/close-reasons.json");
  reasons = await response.json();
  return reasons;
}
const reasonDoc = (label) => reasons.find((r) => r.label === label);
function reasonBadge(label) {
  const doc = reasonDoc(label);
  return h("span.badge.reason", { title: doc ? doc.summary : "", "data-reason": label, text: label });
}

// ---- formatting ----
function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}
function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return duration(s * 1000) + " ago";
}
function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
const num = (n) => (typeof n === "number" ? n.toLocaleString() : "–");

// ---- the confirmation dialog ----
function confirmAction(text, okLabel) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

// The newest close's position in the history, before an action (-1: none yet). Positions, not
// times: the browser's clock need not agree with the broker's.
async function historyMark() {
  const page = await api("/v1/closes?limit=1");
  return page.closes.length ? page.closes[0].seq : -1;
}

// The closes a kick or revoke produced, as the history has it (polled for a few seconds).
async function resultingCloses(params, mark) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const page = await api(`/v1/closes${q({ ...params, limit: 20 })}`);
    const fresh = page.closes.filter((c) => c.seq > mark);
    if (fresh.length || Date.now() > deadline) return fresh;
    await new Promise((r) => setTimeout(r, 250));
  }
}

function closeResult(closes, emptyText) {
  if (!closes.length) return h("div.result", { id: "action-result" }, emptyText);
  return h("div.result", { id: "action-result" },
    h("strong", {}, "In the close history: "),
    h("ul", {}, closes.map((c) => h("li", {},
      h("span.mono", {}, c.client_id ?? "(no client id)"), " ", reasonBadge(c.reason), " ",
      h("span.muted", {}, `${when(c.at)} — ${reasonDoc(c.reason)?.summary ?? ""}`)))),
    h("a", { href: `#/closes?reason=${enc(closes[0].reason)}` }, "see the history"));
}

// ---- pages ----
let timer = null;
let liveClient = null;

const pages = {
  overview: overviewPage,
  sessions: sessionsPage,
  session: sessionPage,
  closes: closesPage,
  users: usersPage,
  live: livePage,
};

function route() {
  clearInterval(timer);
  timer = null;
  if (token() === null) {
    showLogin();
    return;
  }
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  const page = pages[name] ? name : "overview";
  if (page !== "live" && liveClient) {
    liveClient.disconnect();
    liveClient = null;
  }
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = false;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === (page === "session" ? "sessions" : page));
  }
  const root = $("#page");
  root.replaceChildren();
  document.body.dataset.page = page;
  const params = Object.fromEntries(new URLSearchParams(query ?? ""));
  pages[page](root, params, rest.map(decodeURIComponent)).catch((e) => {
    if (e instanceof ApiError && e.status === 401) return;
    root.append(h("p.error", { role: "alert" }, `Error: ${e.message}`));
  });
}

function showLogin(message) {
  clearInterval(timer);
  $("#page").replaceChildren();
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  const error = $("#login-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  document.body.dataset.page = "login";
  $("#token").focus();
}

async function overviewPage(root) {
  await loadReasons();
  let minutes = 5;
  const figures = h("div.grid", { id: "figures" });
  const spark = h("div.card");
  const windowSelect = h("select", { id: "window", onchange: () => { minutes = Number(windowSelect.value); draw(); } },
    [1, 5, 15].map((m) => h("option", { value: m, selected: m === minutes }, `last ${m} min`)));
  const closes = h("div.card", { id: "closes-by-reason" });
  const refusals = h("div.card", { id: "refusals-by-code" });
  root.append(
    h("div.actions", { style: "justify-content: space-between; align-items: center" },
      h("h1", {}, "Overview"), h("label", {}, "Window", windowSelect)),
    figures, spark, h("div.columns", {}, closes, refusals));
  let stats = null;
  function figure(label, value, id) {
    return h("div.figure", { id }, h("div.value", {}, value), h("div.label", {}, label));
  }
  function bars(title, counts, explain) {
    const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
    const max = Math.max(1, ...entries.map(([, n]) => n));
    return [h("h2", {}, title),
      entries.length === 0 ? h("p.muted", {}, "None.") :
        h("ul.bars", {}, entries.map(([key, n]) => h("li", { "data-key": key },
          h("span.mono", {}, key),
          h("div", {}, h("div.bar", { style: `width: ${(100 * n) / max}%` })),
          h("span.n", {}, num(n)),
          explain ? h("span.why", {}, explain(key)) : null)))];
  }
  function draw() {
    if (!stats) return;
    const w = stats.windows.find((x) => x.minutes === minutes) ?? stats.windows[0];
    const one = stats.windows.find((x) => x.minutes === 1) ?? w;
    figures.replaceChildren(
      figure("connections", num(stats.connections), "fig-connections"),
      figure("sessions connected", num(stats.sessions_connected), "fig-connected"),
      figure("sessions waiting", num(stats.sessions_disconnected), "fig-disconnected"),
      figure("messages in /s (1 min)", one.received_per_s.toFixed(1), "fig-in"),
      figure("messages out /s (1 min)", one.sent_per_s.toFixed(1), "fig-out"),
      figure("subscriptions", num(stats.subscriptions)),
      figure("queued", num(stats.queued)),
      figure("retained", num(stats.retained)),
      figure("dropped (window)", num(w.dropped)),
      figure("uptime", duration(stats.uptime_s * 1000)));
    const covered = w.span_s < minutes * 60 - 1 ? ` (samples cover ${duration(w.span_s * 1000)})` : "";
    closes.replaceChildren(...bars(`Closes by reason, last ${minutes} min${covered}`, w.closes,
      (key) => reasonDoc(key)?.summary ?? ""));
    closes.append(h("p.muted", {}, `Since the start: ${num(Object.values(stats.closes).reduce((a, b) => a + b, 0))} closes. `,
      h("a", { href: "#/closes" }, "Close history")));
    refusals.replaceChildren(...bars(`Refused CONNECTs by code, last ${minutes} min`, w.refusals),
      h("p.muted", {}, `Accepted in the window: ${num(w.connects_accepted)}.`));
    spark.replaceChildren(h("h2", {}, "Messages per second, last 15 min"),
      stats.rates.length < 2 ? h("p.muted", {}, "Collecting samples…") : sparkline(stats.rates),
      h("div.legend", {}, h("span.in", {}, "■ in"), h("span.out", {}, "■ out"),
        h("span.muted", {}, `one point every ${stats.sample_every_s}s · brokk ${stats.version}`)));
  }
  async function refresh() {
    stats = await api("/v1/stats");
    draw();
  }
  await refresh();
  timer = setInterval(() => refresh().catch(() => {}), 5000);
}

function sparkline(rates) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 300 60");
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...rates.map((r) => Math.max(r.received_per_s, r.sent_per_s)));
  const line = (key, cls) => {
    const points = rates.map((r, i) => `${rates.length < 2 ? 0 : (300 * i) / (rates.length - 1)},${58 - (56 * r[key]) / max}`);
    const p = document.createElementNS(ns, "polyline");
    p.setAttribute("class", cls);
    p.setAttribute("points", points.join(" "));
    p.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(p);
  };
  line("received_per_s", "in");
  line("sent_per_s", "out");
  return svg;
}

async function sessionsPage(root, params) {
  const form = h("form.inline", { id: "session-search" },
    h("label", {}, "Client id starts with", h("input", { name: "prefix", value: params.prefix ?? "" })),
    h("label", {}, "User", h("input", { name: "user", value: params.user ?? "" })),
    h("label", {}, "State", h("select", { name: "state" },
      ["", "connected", "disconnected"].map((s) => h("option", { value: s, selected: (params.state ?? "") === s }, s || "any")))),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    location.hash = `#/sessions${q(data)}`;
  });
  const table = h("div.scroll");
  const pager = h("div.pager");
  root.append(h("h1", {}, "Sessions"), h("div.card", {}, form, table, pager));
  const limit = 25;
  const cursors = [params.after ?? ""];
  async function load() {
    const after = cursors[cursors.length - 1];
    const page = await api(`/v1/sessions${q({ prefix: params.prefix, user: params.user, state: params.state, limit, after })}`);
    table.replaceChildren(page.sessions.length === 0 ? h("p.muted", {}, "No session matches.") : cards(
      h("table", { id: "sessions" },
        h("thead", {}, h("tr", {}, ["client id", "state", "user", "peer", "protocol", "listener", "since"].map((t) => h("th", {}, t)),
          ["subs", "queued", "in flight"].map((t) => h("th.num", {}, t)))),
        h("tbody", {}, page.sessions.map((s) => h("tr.clickable", {
          "data-client-id": s.client_id,
          onclick: () => { location.hash = `#/session/${enc(s.client_id)}`; },
        },
        h("td", {}, h("a.mono", { href: `#/session/${enc(s.client_id)}` }, s.client_id)),
        h("td", {}, h(`span.badge.${s.state}`, {}, s.state)),
        h("td", {}, s.user ?? h("span.muted", {}, "—")),
        h("td.mono", {}, s.peer), h("td", {}, s.protocol), h("td", {}, s.listener),
        h("td", { title: when(s.connected_since) }, s.state === "connected" ? ago(s.connected_since) : `waiting ${ago(s.disconnected_since)}`),
        h("td.num", {}, num(s.subscriptions)), h("td.num", {}, num(s.queued)), h("td.num", {}, num(s.inflight))))))));
    pager.replaceChildren(
      h("button.quiet", { type: "button", disabled: cursors.length === 1, onclick: () => { cursors.pop(); load(); } }, "← Previous"),
      h("span.muted", {}, `page ${cursors.length}`),
      h("button.quiet", { type: "button", id: "next-page", disabled: !page.next, onclick: () => { cursors.push(page.next); load(); } }, "Next →"));
  }
  await load();
}

async function sessionPage(root, _params, [clientId]) {
  await loadReasons();
  root.append(h("p", {}, h("a", { href: "#/sessions" }, "← Sessions")));
  let s;
  try {
    s = await api(`/v1/sessions/${enc(clientId ?? "")}`);
  } catch (e) {
    if (e.status !== 404) throw e;
    root.append(h("h1.mono", {}, clientId), h("p", {}, "No such session (it may have ended). ",
      h("a", { href: `#/closes?client_id=${enc(clientId)}` }, "Its closes")));
    return;
  }
  const keep = h("input", { type: "checkbox", id: "keep-session" });
  const result = h("div");
  const kick = h("button.danger", {
    id: "kick", type: "button", onclick: async () => {
      const ok = await confirmAction(
        `Kick ${clientId}? Its connection is closed with closed_by_controller` +
        (keep.checked ? "; the session waits for the client." : " and its session is discarded."), "Kick");
      if (!ok) return;
      const started = await historyMark();
      kick.disabled = true;
      await api(`/v1/sessions/${enc(clientId)}${keep.checked ? "?keep_session=true" : ""}`, { method: "DELETE" });
      const closes = await resultingCloses({ client_id: clientId }, started);
      result.replaceChildren(closeResult(closes, "Kicked (the session was waiting: no connection to close)."));
    },
  }, "Kick");
  const fact = (k, v) => [h("dt", {}, k), h("dd", {}, v ?? "—")];
  root.append(
    h("h1.mono", {}, s.client_id),
    h("div.columns", {},
      h("div.card", {}, h("dl.facts", { id: "session-facts" },
        fact("state", h(`span.badge.${s.state}`, {}, s.state)), fact("user", s.user), fact("peer", s.peer),
        fact("listener", s.listener), fact("protocol", s.protocol),
        fact("connected since", when(s.connected_since)),
        s.disconnected_since ? fact("waiting since", when(s.disconnected_since)) : null,
        s.expires_at ? fact("expires at", when(s.expires_at)) : null,
        fact("session expiry", `${s.expiry_s}s`),
        fact("queued", num(s.queued)), fact("in flight", num(s.inflight)))),
      h("div.card", {}, h("h2", {}, "Act"),
        h("label.check", {}, keep, "keep the session (close the connection only)"),
        h("div.actions", { style: "justify-content: flex-start; margin-top: .5rem" }, kick,
          h("a", { href: `#/closes?client_id=${enc(clientId)}` }, "its close history")),
        result)),
    h("div.card", {}, h("h2", {}, `Subscriptions (${s.subscription_list.length})`),
      s.subscription_list.length === 0 ? h("p.muted", {}, "None.") :
        h("div.scroll", {}, cards(h("table", { id: "subscriptions" },
          h("thead", {}, h("tr", {}, ["filter", "QoS", "no local", "retain as published", "identifier"].map((t) => h("th", {}, t)))),
          h("tbody", {}, s.subscription_list.map((x) => h("tr", {},
            h("td.mono", {}, x.filter), h("td", {}, x.qos), h("td", {}, x.no_local ? "yes" : "no"),
            h("td", {}, x.retain_as_published ? "yes" : "no"), h("td", {}, x.subscription_identifier ?? "—")))))))));
}

async function closesPage(root, params) {
  await loadReasons();
  const form = h("form.inline", { id: "close-filter" },
    h("label", {}, "Reason", h("select", { name: "reason" },
      h("option", { value: "" }, "any"),
      reasons.map((r) => h("option", { value: r.label, selected: params.reason === r.label }, r.label)))),
    h("label", {}, "Client id", h("input", { name: "client_id", value: params.client_id ?? "" })),
    h("label", {}, "User", h("input", { name: "user", value: params.user ?? "" })),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/closes${q(Object.fromEntries(new FormData(form)))}`;
  });
  const explain = h("p.muted", { id: "reason-explained" });
  const doc = params.reason ? reasonDoc(params.reason) : null;
  if (doc) explain.append(reasonBadge(doc.label), " ", doc.summary, ` (v5: ${doc.v5_code}; session survives: ${doc.session_survives})`);
  const table = h("div.scroll");
  const pager = h("div.pager");
  root.append(h("h1", {}, "Close history"), h("div.card", {}, form, explain, table, pager));
  const befores = [""];
  async function load() {
    const before = befores[befores.length - 1];
    const page = await api(`/v1/closes${q({ reason: params.reason, client_id: params.client_id, user: params.user, limit: 50, before })}`);
    table.replaceChildren(page.closes.length === 0 ? h("p.muted", {}, "No close matches.") : cards(
      h("table", { id: "closes" },
        h("thead", {}, h("tr", {}, ["at", "client id", "user", "peer", "reason", "why", "detail", "lasted"].map((t) => h("th", {}, t)))),
        h("tbody", {}, page.closes.map((c) => h("tr", { "data-reason": c.reason, "data-client-id": c.client_id ?? "" },
          h("td", { title: c.at }, when(c.at)),
          h("td.mono", {}, c.client_id ? h("a", { href: `#/closes?client_id=${enc(c.client_id)}` }, c.client_id) : h("span.muted", {}, "—")),
          h("td", {}, c.user ?? h("span.muted", {}, "—")),
          h("td.mono", {}, c.peer),
          h("td", {}, h("a", { href: `#/closes?reason=${enc(c.reason)}` }, reasonBadge(c.reason))),
          h("td.muted", {}, reasonDoc(c.reason)?.summary ?? ""),
          h("td", {}, c.detail ?? ""),
          h("td", {}, duration(c.duration_ms))))))));
    pager.replaceChildren(
      h("button.quiet", { type: "button", disabled: befores.length === 1, onclick: () => { befores.pop(); load(); } }, "← Newer"),
      h("button.quiet", { type: "button", disabled: page.next === null, onclick: () => { befores.push(page.next); load(); } }, "Older →"));
  }
  await load();
  root.append(h("div.card", {}, h("h2", {}, "Every reason"), h("ul.bars", { id: "reason-list" },
    reasons.map((r) => h("li", {}, h("a", { href: `#/closes?reason=${enc(r.label)}` }, reasonBadge(r.label)),
      h("span", {}), h("span", {}), h("span.why", {}, r.summary))))));
}

async function usersPage(root) {
  await loadReasons();
  const result = h("div");
  async function revoke(user) {
    const ok = await confirmAction(`Revoke ${user}? Every session of ${user} is closed with revoked and discarded, ` +
      "and its CONNECTs are refused until restored (kept across restarts).", "Revoke");
    if (!ok) return;
    const started = await historyMark();
    await api(`/v1/users/${enc(user)}/revoke`, { method: "POST" });
    const closes = await resultingCloses({ user, reason: "revoked" }, started);
    await draw();
    result.replaceChildren(closeResult(closes, `${user} is revoked (no session of theirs was connected).`));
  }
  async function restore(user) {
    const ok = await confirmAction(`Restore ${user}? Their CONNECTs are accepted again.`, "Restore");
    if (!ok) return;
    await api(`/v1/users/${enc(user)}/restore`, { method: "POST" });
    await draw();
    result.replaceChildren(h("div.result", { id: "action-result" }, `${user} is restored.`));
  }
  const form = h("form.inline", { id: "revoke-form" },
    h("label", {}, "User", h("input", { name: "user", required: true })),
    h("button.danger", { type: "submit" }, "Revoke…"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const user = new FormData(form).get("user").trim();
    if (user) revoke(user);
  });
  const revokedBox = h("div", { id: "revoked" });
  const seenBox = h("div", { id: "users-seen" });
  root.append(h("h1", {}, "Users"), h("div.card", {}, form, result),
    h("div.columns", {}, h("div.card", {}, h("h2", {}, "Revoked"), revokedBox),
      h("div.card", {}, h("h2", {}, "Users with sessions"), seenBox)));
  async function draw() {
    const [revoked, sessions] = await Promise.all([api("/v1/users/revoked"), api("/v1/sessions?limit=1000")]);
    revokedBox.replaceChildren(revoked.users.length === 0 ? h("p.muted", {}, "Nobody is revoked.") :
      h("table", {}, h("tbody", {}, revoked.users.map((u) => h("tr", { "data-user": u },
        h("td", {}, u), h("td", {}, h("button.quiet", { type: "button", onclick: () => restore(u) }, "Restore")))))));
    const counts = new Map();
    for (const s of sessions.sessions) if (s.user) counts.set(s.user, (counts.get(s.user) ?? 0) + 1);
    seenBox.replaceChildren(counts.size === 0 ? h("p.muted", {}, "No session has a user name.") :
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "user"), h("th.num", {}, "sessions"), h("th", {}))),
        h("tbody", {}, [...counts].sort().map(([u, n]) => h("tr", { "data-user": u },
          h("td", {}, h("a", { href: `#/sessions?user=${enc(u)}` }, u)), h("td.num", {}, n),
          h("td", {}, h("button.danger", { type: "button", onclick: () => revoke(u) }, "Revoke")))))),
      ...(sessions.next ? [h("p.muted", {}, "(from the first 1,000 sessions)")] : []));
  }
  await draw();
}

async function livePage(root) {
  const { listeners } = await api("/v1/listeners");
  const ws = listeners.filter((l) => l.websocket_path);
  root.append(h("h1", {}, "Live topics"));
  if (ws.length === 0) {
    root.append(h("div.card", { id: "no-websocket" },
      h("p", {}, "No MQTT-over-WebSocket listener is configured, so the browser cannot speak MQTT to this broker."),
      h("p", {}, "Add one to broker.toml, e.g. ", h("code", {}, '[listeners.ws] bind = "0.0.0.0:8080", websocket = { path = "/mqtt" }'), ".")));
    return;
  }
  const url = (l) => `${l.tls ? "wss" : "ws"}://${location.hostname}:${l.port}${l.websocket_path}`;
  const listenerSelect = h("select", { name: "listener" }, ws.map((l, i) => h("option", { value: i }, `${l.name} (${url(l)})`)));
  const status = h("span.status.muted", { id: "live-status" }, "not connected");
  const action = h("span.status.muted", { id: "live-action" });
  const messages = h("tbody");
  const count = h("span.muted", { id: "message-count" }, "0 messages");
  let received = 0;
  const connectForm = h("form.inline", { id: "live-connect" },
    h("label", {}, "Listener", listenerSelect),
    h("label", {}, "User (optional)", h("input", { name: "username", autocomplete: "off" })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "off" })),
    h("button", { type: "submit", id: "live-connect-button" }, "Connect"));
  const subscribeForm = h("form.inline", { id: "live-subscribe" },
    h("label", {}, "Filter", h("input", { name: "filter", value: "#", required: true })),
    h("label", {}, "QoS", h("select", { name: "qos" }, [0, 1, 2].map((n) => h("option", { value: n }, n)))),
    h("button", { type: "submit" }, "Subscribe"));
  const publishForm = h("form", { id: "live-publish" },
    h("div.inline", { style: "display: flex; gap: .5rem; flex-wrap: wrap; align-items: end" },
      h("label", { style: "flex: 1" }, "Topic", h("input", { name: "topic", required: true })),
      h("label", {}, "QoS", h("select", { name: "qos" }, [0, 1].map((n) => h("option", { value: n }, n)))),
      h("label.check", {}, h("input", { type: "checkbox", name: "retain" }), "retain")),
    h("label", {}, "Payload", h("textarea", { name: "payload" })),
    h("div.actions", {}, h("button", { type: "submit" }, "Publish")));
  const subs = h("ul", { id: "live-subscriptions" });
  root.append(
    h("div.card", {}, connectForm, h("p", {}, status), h("p", {}, action)),
    h("div.columns", {},
      h("div.card", {}, h("h2", {}, "Subscribe"), subscribeForm, subs),
      h("div.card", {}, h("h2", {}, "Publish"), publishForm)),
    h("div.card", {}, h("div.actions", { style: "justify-content: space-between" }, h("h2", {}, "Messages"), count,
      h("button.quiet", { type: "button", onclick: () => { messages.replaceChildren(); received = 0; count.textContent = "0 messages"; } }, "Clear")),
    h("div.scroll", { id: "messages" }, h("table", {},
      h("thead", {}, h("tr", {}, ["time", "topic", "QoS", "retain", "payload"].map((t) => h("th", {}, t)))), messages))));
  const setStatus = (text, cls) => { status.textContent = text; status.className = `status ${cls}`; };
  const setAction = (text, cls) => { action.textContent = text; action.className = `status ${cls}`; };
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const show = (payload) => {
    try {
      return decoder.decode(payload);
    } catch {
      return `0x${[...payload.slice(0, 256)].map((b) => b.toString(16).padStart(2, "0")).join("")}${payload.length > 256 ? "…" : ""}`;
    }
  };
  connectForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (liveClient) liveClient.disconnect();
    const data = Object.fromEntries(new FormData(connectForm));
    const l = ws[Number(data.listener)];
    const client = new MqttClient(url(l));
    liveClient = client;
    subs.replaceChildren();
    client.onmessage = (m) => {
      received += 1;
      count.textContent = `${received} message${received === 1 ? "" : "s"}`;
      messages.prepend(h("tr", { "data-topic": m.topic },
        h("td", {}, new Date().toLocaleTimeString()), h("td.mono", {}, m.topic), h("td", {}, m.qos),
        h("td", {}, m.retain ? "yes" : ""), h("td.payload", {}, show(m.payload))));
      while (messages.childElementCount > 500) messages.lastElementChild.remove();
    };
    client.onclose = (why) => setStatus(`disconnected: ${why}`, "error");
    setStatus("connecting…", "muted");
    const clientId = `brokk-console-${Math.random().toString(36).slice(2, 10)}`;
    try {
      await client.connect({ clientId, username: data.username, password: data.password, keepAlive: 30 });
      setStatus(`connected to ${url(l)} as ${clientId}`, "ok");
    } catch (err) {
      setStatus(`not connected: ${err.message}`, "error");
    }
  });
  subscribeForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(subscribeForm));
    if (!liveClient?.connected) { setAction("connect first", "error"); return; }
    try {
      const granted = await liveClient.subscribe(data.filter, Number(data.qos));
      const item = h("li", { "data-filter": data.filter }, h("span.mono", {}, data.filter), ` (QoS ${granted}) `,
        h("button.quiet", { type: "button", onclick: async () => { await liveClient?.unsubscribe(data.filter); item.remove(); } }, "Unsubscribe"));
      subs.append(item);
    } catch (err) {
      setAction(err.message, "error");
    }
  });
  publishForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(publishForm);
    if (!liveClient?.connected) { setAction("connect first", "error"); return; }
    try {
      await liveClient.publish(data.get("topic"), data.get("payload"), { qos: Number(data.get("qos")), retain: data.get("retain") === "on" });
      setAction(`published to ${data.get("topic")}`, "ok");
    } catch (err) {
      setAction(err.message, "error");
    }
  });
  // Connect at once with no credentials: most brokers with a WebSocket listener for people
  // on the console allow that; a refusal shows in the status line.
  connectForm.requestSubmit();
}

// ---- start ----
$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const candidate = $("#token").value.trim();
  try {
    await api("/v1/stats", { tokenOverride: candidate });
  } catch (err) {
    const error = $("#login-error");
    error.hidden = false;
    error.textContent = err.status === 401 ? `Refused: ${err.message}` : `Error: ${err.message}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $("#token").value = "";
  if (!location.hash || location.hash === "#/login") location.hash = "#/overview";
  else route();
});
$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (liveClient) { liveClient.disconnect(); liveClient = null; }
  showLogin();
});
window.addEventListener("hashchange", route);
if (token() === null) {
  // Without a configured token the API answers anyone: no login needed then.
  api("/v1/stats", { tokenOverride: "" })
    .then(() => sessionStorage.setItem(TOKEN_KEY, ""))
    .catch(() => {})
    .finally(route);
} else {
  route();
}
