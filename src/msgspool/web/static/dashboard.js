// msgspool dashboard: every page is drawn here from the JSON API (/api/...), live over SSE.
// No framework and no build step. Text from the API is only ever set as text (textContent), never
// parsed as HTML; a message's HTML is shown by the server's sandboxed /messages/ID/html in an
// <iframe sandbox>. A state-changing request carries the session's CSRF token (X-CSRF-Token).
"use strict";

const PAGE_SIZE = 50;
const STATUSES = ["queued", "active", "deferred", "held", "delivered", "failed", "expired"];
const SEARCH_TERMS = [  // query parameters of GET /api/queue the form offers, when the API takes them
  ["sender", "Sender", "address or @domain"], ["recipient", "Recipient", "address or @domain"],
  ["subject", "Subject", "words"], ["destination", "Destination", "host"],
  ["status", "Status", null], ["older_than", "Older than", "1h, 2d"], ["newer_than", "Newer than", "30m"],
  ["folder", "Folder", "outbox"],
];
// A search's parameters as selector terms (domain/selector.py): a bulk action is offered only when
// every filter of the search is one, so that it acts on exactly the messages the search shows.
const SELECTOR_TERMS = {destination: "destination", sender: "sender", recipient: "recipient", status: "status",
                        transport: "transport", older_than: "older-than", newer_than: "newer-than",
                        subject: "subject", folder: "folder", mailbox: "mailbox"};
const ACTIONS = ["hold", "release", "flush", "requeue", "delete"];

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(3)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function cookie(name) {
  const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  const method = options.method || "GET";
  const init = {method, credentials: "same-origin", headers: {Accept: "application/json"}};
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = cookie("msgspool_csrf");
    init.body = JSON.stringify(options.body || {});
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, "log in again");
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, (data && (data.detail || data.title)) || response.statusText);
  return {data, headers: response.headers};
}

function enc(value) { return encodeURIComponent(value); }

function present(...nodes) { return nodes.filter((n) => n !== null && n !== undefined && n !== false); }

function when(iso) {
  if (!iso) return "";
  return iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "");
}

function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  if (s < 86400) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1 << 20)).toFixed(1)} MB`;
}

function badge(text) { return h("span", {class: `badge ${text}`}, text); }

function notice(text, error) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = error ? "error" : "";
  el.hidden = !text;
}

// Live redraws: at most one call of `fn` per `ms`, the next only once the last one's answer is in
// (so a slow listing is never asked twice at once), and one more after a burst. Not a debounce: a
// page under steady traffic still redraws, where a debounce waits for a quiet moment that never comes.
function throttle(fn, ms) {
  let timer = null;
  let busy = false;
  let again = false;
  let last = 0;
  const run = async () => {
    timer = null;
    busy = true;
    try { await fn(); } catch { /* each page shows its own errors */ }
    busy = false;
    last = Date.now();
    if (again) { again = false; schedule(); }
  };
  const schedule = () => {
    if (busy) { again = true; return; }
    if (!timer) timer = setTimeout(run, Math.max(0, last + ms - Date.now()));
  };
  return schedule;
}

function table(headings, rows, empty) {
  if (!rows.length) return h("p", {class: "muted"}, empty || "Nothing here.");
  return h("table", {}, h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

function dl(pairs) {
  return h("dl", {class: "grid"}, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// ---- live updates: one EventSource for the page ----------------------------------------------

const live = {
  source: null, listeners: [],
  on(fn) { this.listeners.push(fn); this.open(); },
  open() {
    if (this.source) return;
    const dot = document.getElementById("live");
    this.source = new EventSource("/api/events");
    this.source.onopen = () => { dot.className = "live on"; };
    this.source.onerror = () => { dot.className = "live off"; };
    const types = ["submitted", "delivered", "deferred", "failed", "expired", "report", "new_mail",
                   "transport_status", "held", "read"];
    for (const type of types) {
      this.source.addEventListener(type, (e) => {
        let data = {};
        try { data = JSON.parse(e.data); } catch { /* a comment or a broken line: ignore */ }
        for (const fn of this.listeners) fn(type, data);
      });
    }
  },
};

// ---- the frame: navigation, who is signed in, the counters -------------------------------------

async function drawSession() {
  try {
    const {data} = await api("/session");
    const who = document.getElementById("who");
    if (data.token) {
      who.textContent = `${data.token} (${data.scopes.join(", ")})`;
      document.getElementById("logout").hidden = false;
    } else {
      who.textContent = "no tokens: open on loopback";
    }
    window.msgspoolScopes = data.scopes;
  } catch (err) { /* the page says what failed */ }
}

async function drawCounters() {
  const box = document.getElementById("counters");
  try {
    const {data} = await api("/api/status");
    const q = data.queue || {};
    const item = (key, label, href) => h("a", {class: "counter", href, "data-count": key},
      h("b", {}, String(q[key] ?? 0)), h("span", {}, label));
    box.replaceChildren(item("messages", "messages", "/"),
      ...STATUSES.map((s) => item(s, s, `/?status=${s}`)));
  } catch (err) {
    box.replaceChildren(h("span", {class: "error"}, `status: ${err.message}`));
  }
}

function markNav(name) {
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("current", a.dataset.nav === name);
}

// ---- the queue -------------------------------------------------------------------------------

let queueTerms = null;  // the GET /api/queue parameters the API declares (its OpenAPI document)

async function searchTerms() {
  if (queueTerms) return queueTerms;
  try {
    const {data} = await api("/api/openapi.json");
    const op = data.paths["/api/queue"].get;
    queueTerms = new Set((op.parameters || []).map((p) => p.name));
  } catch { queueTerms = new Set(["sender", "recipient", "destination", "status", "older_than"]); }
  return queueTerms;
}

function recipientsCell(m) {
  return m.recipients.map((r) => h("div", {}, badge(r.status), " ", r.address));
}

function destinations(m) {
  return [...new Set(m.recipients.map((r) => r.destination).filter(Boolean))].join(", ");
}

function messageRow(m, fresh, subjects, selection) {
  const last = m.recipients.map((r) => r.last_reply).filter(Boolean)[0] || "";
  return h("tr", {"data-id": m.id, class: fresh ? "new" : null},
    selection ? h("td", {}, h("input", {type: "checkbox", "aria-label": `select ${m.id}`, "data-select": m.id,
                                        checked: selection.ids.has(m.id), onchange: (e) => selection.toggle(m.id, e.target.checked)})) : null,
    h("td", {class: "mono"}, h("a", {href: `/messages/${enc(m.id)}`}, m.id)),
    h("td", {title: when(m.submitted_at)}, age(m.submitted_at)),
    h("td", {}, m.sender || "<>"),
    subjects ? h("td", {}, m.subject ?? "") : null,
    h("td", {}, recipientsCell(m)),
    h("td", {}, destinations(m)),
    h("td", {}, m.held ? badge("held") : ""),
    h("td", {}, size(m.size)),
    h("td", {class: "reply"}, last));
}

function messageTable(messages, seen, selection) {
  const subjects = messages.some((m) => "subject" in m);  // when the API's listing carries them
  const rows = messages.map((m) => messageRow(m, seen && !seen.has(m.id), subjects, selection));
  return table(present(selection ? "" : null, "id", "age", "sender", subjects ? "subject" : null, "recipients",
                       "destination", "", "size", "last reply"), rows, "No messages match.");
}

// The messages ticked on this page, and the actions on them (one request per message, as
// `msgspool queue hold ID...` does; a search's every message is the bulk panel's).
class Selection {
  constructor(reload) {
    this.ids = new Set();
    this.reload = reload;
    this.count = h("span", {class: "muted"});
    this.bar = h("div", {class: "actions", id: "selection"}, this.count,
      ACTIONS.map((name) => h("button", {type: "button", "data-selected": name, onclick: () => this.act(name)},
                              name)));
    this.draw();
  }
  toggle(id, on) { if (on) this.ids.add(id); else this.ids.delete(id); this.draw(); }
  keep(ids) { for (const id of [...this.ids]) if (!ids.has(id)) this.ids.delete(id); this.draw(); }
  draw() {
    this.count.textContent = this.ids.size ? `${this.ids.size} selected:` : "Tick messages to act on them:";
    for (const b of this.bar.querySelectorAll("button")) b.disabled = this.ids.size === 0;
  }
  async act(name) {
    const ids = [...this.ids];
    let done = 0;
    const failed = [];
    for (const id of ids) {
      try { await api(`/api/queue/${enc(id)}/${name}`, {method: "POST", body: {}}); done++; }
      catch (err) { failed.push(`${id}: ${err.message}`); }
    }
    if (name === "delete") for (const id of ids) this.ids.delete(id);
    notice(`${name}: ${done} of ${ids.length} message(s)${failed.length ? `; ${failed.join("; ")}` : ""}`,
           failed.length > 0);
    this.draw();
    drawCounters();
    await this.reload();
  }
}

function queueFilters() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const [name] of SEARCH_TERMS) if (params.get(name)) filters[name] = params.get(name);
  return filters;
}

async function queuePage() {
  markNav("queue");
  const params = new URLSearchParams(location.search);
  const filters = queueFilters();
  const terms = await searchTerms();
  // Newest first unless asked otherwise: new mail, live, lands on the first page (not a filter:
  // the bulk panel still acts on every message the search matches).
  const order = params.get("order") === "oldest" ? "oldest" : "newest";
  const form = h("form", {class: "search", method: "get", action: "/"},
    SEARCH_TERMS.filter(([name]) => terms.has(name)).map(([name, label, hint]) => h("label", {}, label,
      name === "status"
        ? h("select", {name}, h("option", {value: ""}, "any"),
            STATUSES.map((s) => h("option", {value: s, selected: filters.status === s}, s)))
        : h("input", {name, value: filters[name] || "", placeholder: hint, size: name === "subject" ? 18 : 14}))),
    terms.has("order") ? h("label", {}, "Order", h("select", {name: "order"},
      h("option", {value: "newest", selected: order === "newest"}, "newest first"),
      h("option", {value: "oldest", selected: order === "oldest"}, "oldest first"))) : null,
    h("button", {type: "submit", class: "primary"}, "Search"),
    Object.keys(filters).length ? h("a", {href: "/"}, "clear") : null);
  const list = h("div", {id: "queue-list"});
  const selection = new Selection(() => load());
  const pager = h("div", {class: "pager"});
  const feed = h("ul", {class: "feed", id: "feed"});
  const page = document.getElementById("page");
  page.replaceChildren(h("h1", {}, "Queue"), form,
    h("div", {class: "columns"}, h("div", {}, selection.bar, list, pager, bulkPanel(filters)),
      h("aside", {class: "card"}, h("h2", {style: "margin-top:0"}, "Live"), feed)));
  let seen = null;
  const load = async () => {
    const query = new URLSearchParams({limit: String(PAGE_SIZE), ...filters});
    if (terms.has("order")) query.set("order", order);
    if (params.get("cursor")) query.set("cursor", params.get("cursor"));
    try {
      const {data, headers} = await api(`/api/queue?${query}`);
      list.replaceChildren(messageTable(data, seen, selection));
      seen = new Set(data.map((m) => m.id));
      selection.keep(seen);
      const next = headers.get("Next-Cursor");
      const here = new URLSearchParams(location.search);
      pager.replaceChildren(...present(
        params.get("cursor") ? h("a", {href: `/?${withCursor(here, null)}`}, "« first page") : null,
        h("span", {class: "muted"}, `${data.length} on this page`),
        next ? h("a", {href: `/?${withCursor(here, next)}`, id: "next-page"}, "next page »") : null));
    } catch (err) {
      list.replaceChildren(h("p", {class: "error"}, err.message));
    }
  };
  await load();
  const refresh = throttle(load, 300);
  live.on((type, data) => {
    feed.prepend(h("li", {}, badge(type), " ", data.recipient || data.mailbox || "", " ",
      data.message_id ? h("a", {href: `/messages/${enc(data.message_id)}`, class: "mono"}, data.message_id) : ""));
    while (feed.children.length > 30) feed.lastChild.remove();
    refresh();
  });
}

function withCursor(params, cursor) {
  const copy = new URLSearchParams(params);
  if (cursor) copy.set("cursor", cursor); else copy.delete("cursor");
  return copy.toString();
}

function selectorOf(filters) {
  const where = {};
  for (const [name, value] of Object.entries(filters)) {
    if (!SELECTOR_TERMS[name]) return null;
    where[SELECTOR_TERMS[name]] = value;
  }
  return where;
}

function bulkPanel(filters) {
  const where = selectorOf(filters);
  const terms = Object.entries(where || {}).map(([k, v]) => `${k}=${v}`).join(",");
  const box = h("div", {class: "card bulk", id: "bulk"});
  if (!terms) {
    box.append(h("span", {class: "muted"}, "Search by sender, recipient, subject, destination, status or age to act on"
                                           + " every message that matches (hold, release, flush, requeue, delete)."));
    return box;
  }
  const action = h("select", {name: "action"}, ACTIONS.map((a) => h("option", {value: a}, a)));
  const result = h("span", {class: "result"});
  const confirm = h("button", {type: "button", class: "danger", hidden: true, id: "bulk-run"});
  const count = h("button", {type: "button", id: "bulk-count"}, "Count first (dry run)");
  const run = async (dryRun) => {
    const body = {action: action.value, where, dry_run: dryRun};
    try {
      const {data} = await api("/api/queue/actions", {method: "POST", body});
      if (dryRun) {
        result.textContent = `${data.matched} message${data.matched === 1 ? "" : "s"} match`;
        confirm.textContent = `${action.value} ${data.matched} message${data.matched === 1 ? "" : "s"}`;
        confirm.hidden = data.matched === 0;
      } else {
        confirm.hidden = true;
        result.textContent = `${action.value}: ${data.count ?? data.flushed ?? data.matched} done`;
        notice(`${action.value} on ${terms}: ${data.count ?? data.flushed ?? data.matched} message(s)`);
        drawCounters();
      }
    } catch (err) { result.textContent = ""; notice(err.message, true); }
  };
  count.addEventListener("click", () => run(true));
  confirm.addEventListener("click", () => run(false));
  action.addEventListener("change", () => { confirm.hidden = true; result.textContent = ""; });
  box.append(h("b", {}, "Every message matching "), h("code", {}, terms), ": ", action, " ", count, " ", confirm, result);
  return box;
}

// ---- one message -----------------------------------------------------------------------------

async function allEvents(id) {
  const events = [];
  let cursor = null;
  for (let pages = 0; pages < 20; pages++) {  // 20,000 events at most: a message with more is a story of its own
    const {data} = await api(`/api/queue/${enc(id)}/events?limit=1000${cursor ? `&cursor=${enc(cursor)}` : ""}`);
    events.push(...data.events);
    cursor = data.next_cursor;
    if (!cursor) break;
  }
  return events;
}

async function messagePage(id) {
  markNav("queue");
  const page = document.getElementById("page");
  // What the operator started survives a redraw (a live update redraws the whole page): a delete
  // asked for stays offered for confirmation.
  const asked = {delete: false};
  const draw = async () => {
    let m, parsed = null, events = [];
    try {
      m = (await api(`/api/queue/${enc(id)}`)).data;
    } catch (err) {
      page.replaceChildren(h("h1", {}, "Message ", h("span", {class: "mono"}, id)), h("p", {class: "error"}, err.message));
      return;
    }
    try { parsed = (await api(`/api/queue/${enc(id)}/parsed`)).data; } catch { /* no content: deleted meanwhile */ }
    try { events = await allEvents(id); } catch { /* shown as none */ }
    page.replaceChildren(
      h("h1", {}, parsed && parsed.subject ? parsed.subject : "(no subject)"),
      messageFacts(m), messageActions(m, draw, asked),
      h("h2", {}, "Recipients"), recipientsTable(m),
      h("h2", {}, "Attempts"), attemptsTable(events),
      h("h2", {}, "Hooks and history"), historyTable(m.history || []),
      parsed ? contentTabs(m, parsed) : h("p", {class: "muted"}, "No content stored."));
  };
  await draw();
  const redraw = throttle(draw, 500);
  live.on((type, data) => { if (data.message_id === id) redraw(); });
}

function link(id) { return h("a", {href: `/messages/${enc(id)}`, class: "mono"}, id); }

function messageFacts(m) {
  const mailboxLink = m.mailbox ? h("a", {href: `/mailboxes/${enc(m.mailbox)}/folders/${enc(m.folder)}`},
                                    `${m.mailbox} / ${m.folder}`) : m.folder;
  return h("div", {class: "card"}, dl([
    ["id", h("span", {class: "mono", id: "message-id"}, m.id)], ["sender", m.sender || "<>"],
    ["submitted", `${when(m.submitted_at)} (${age(m.submitted_at)} ago)`], ["finished", when(m.finished_at)],
    ["folder", mailboxLink], ["size", size(m.size)], ["origin", m.origin], ["class", m.message_class],
    ["held", m.held ? badge("held") : ""], ["deliver after", when(m.deliver_after)], ["expires", when(m.expires_at)],
    ["copy of", m.copy_of ? link(m.copy_of) : ""], ["resend of", m.resend_of ? link(m.resend_of) : ""],
    ["resent as", (m.resends || []).length ? m.resends.map((r) => [link(r), " "]) : ""],
    ["copies", (m.copies || []).length ? m.copies.map((c) => h("div", {}, link(c.id), ` in `,
      h("a", {href: `/mailboxes/${enc(c.mailbox)}/folders/${enc(c.folder)}`}, `${c.mailbox} / ${c.folder}`))) : ""],
  ]));
}

function messageActions(m, redraw, asked) {
  const box = h("div", {class: "actions", id: "actions"});
  const act = async (name) => {
    try {
      const {data} = await api(`/api/queue/${enc(m.id)}/${name}`, {method: "POST", body: {}});
      notice(name === "flush" ? `flush: ${data.flushed} recipient(s) retried now` : `${name}: done`);
      drawCounters();
      if (name === "delete") { box.replaceChildren(h("span", {class: "muted"}, "deleted")); return; }
      redraw();
    } catch (err) { notice(`${name}: ${err.message}`, true); }
  };
  for (const name of ["hold", "release", "flush", "requeue"]) {
    const disabled = (name === "hold" && m.held) || (name === "release" && !m.held);
    box.append(h("button", {type: "button", "data-action": name, disabled, onclick: () => act(name)}, name));
  }
  const sure = h("button", {type: "button", class: "danger", hidden: !asked.delete, "data-action": "delete-confirm",
                            onclick: () => act("delete")}, "really delete");
  const ask = () => { asked.delete = true; sure.hidden = false; };
  box.append(h("button", {type: "button", "data-action": "delete", onclick: ask}, "delete"), sure);
  return box;
}

function recipientsTable(m) {
  return table(["address", "type", "transport", "destination", "status", "attempts", "next attempt", "last reply"],
    m.recipients.map((r) => h("tr", {},
      h("td", {}, r.address), h("td", {}, r.type), h("td", {}, r.transport || ""),
      h("td", {}, r.destination ? h("a", {href: `/?destination=${enc(r.destination)}`}, r.destination) : ""),
      h("td", {}, badge(r.status)), h("td", {}, String(r.attempts)), h("td", {}, when(r.next_attempt_at)),
      h("td", {class: "reply"}, r.last_reply || ""))));
}

function attemptsTable(events) {
  return table(["time", "event", "recipient", "transport", "reply", "dsn"],
    events.map((e) => h("tr", {},
      h("td", {}, when(e.time)), h("td", {}, badge(e.type)), h("td", {}, e.recipient || ""),
      h("td", {}, e.transport || ""), h("td", {class: "reply"}, e.reply || e.detail || ""), h("td", {}, e.dsn || ""))),
    "No attempts yet.");
}

function historyTable(history) {
  return table(["time", "stage", "hook", "outcome", "detail"],
    history.map((e) => h("tr", {}, h("td", {}, when(e.time)), h("td", {}, e.stage), h("td", {}, e.hook || ""),
      h("td", {}, e.outcome), h("td", {class: "reply"}, e.detail || ""))),
    "No hook ran on it and nothing held it.");
}

function contentTabs(m, parsed) {
  const views = {
    text: () => h("pre", {id: "text-body"}, parsed.text ?? "(no text part)"),
    html: () => parsed.html !== null
      ? h("iframe", {class: "mail", sandbox: "", referrerpolicy: "no-referrer", title: "the message's HTML, sandboxed",
                     src: `/messages/${enc(m.id)}/html`})
      : h("p", {class: "muted"}, "No HTML part."),
    headers: () => table(["name", "value"], parsed.headers.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v)))),
    raw: () => {
      const pre = h("pre", {id: "raw"}, "loading…");
      fetch(`/api/queue/${enc(m.id)}/content`, {credentials: "same-origin"})
        .then((r) => r.text()).then((t) => { pre.textContent = t; });
      return pre;
    },
    attachments: () => table(["#", "file", "type", "size"], parsed.attachments.map((a) => h("tr", {},
      h("td", {}, String(a.index)),
      h("td", {}, h("a", {href: `/api/queue/${enc(m.id)}/attachments/${a.index}`}, a.filename || "(unnamed)")),
      h("td", {}, a.content_type), h("td", {}, size(a.size)))), "No attachments."),
  };
  const body = h("div", {class: "tab", id: "content"});
  const tabs = h("div", {class: "tabs"});
  const show = (name) => {
    for (const b of tabs.children) b.classList.toggle("current", b.dataset.tab === name);
    body.replaceChildren(views[name]());
  };
  for (const name of Object.keys(views)) {
    const label = name === "attachments" ? `attachments (${parsed.attachments.length})` : name;
    tabs.append(h("button", {type: "button", "data-tab": name, onclick: () => show(name)}, label));
  }
  show(parsed.html !== null ? "html" : "text");
  return h("div", {}, h("h2", {}, "Content"), tabs, body);
}

// ---- destinations and the status table --------------------------------------------------------

function counts(obj) {
  return Object.entries(obj || {}).filter(([, v]) => v !== 0 && v !== null).map(([k, v]) => `${k} ${v}`).join(", ");
}

async function destinationsPage() {
  markNav("destinations");
  const page = document.getElementById("page");
  const draw = async () => {
    const {data} = await api("/api/status");
    const rows = [];
    for (const t of data.transports) {
      for (const d of t.destinations || []) {
        rows.push(h("tr", {"data-destination": d.name},
          h("td", {}, t.name), h("td", {}, h("a", {href: `/?destination=${enc(d.name)}`}, d.name)),
          h("td", {}, badge(d.health || d.status)), h("td", {}, String(d.backlog ? d.backlog.total : 0)),
          h("td", {}, counts(Object.fromEntries(Object.entries(d.backlog || {}).filter(([k]) => k !== "total")))),
          h("td", {}, String(d.connections ?? 0)), h("td", {}, String(d.delivered ?? 0)),
          h("td", {}, String(d.deferred ?? 0)), h("td", {}, String(d.failed ?? 0)),
          h("td", {class: "reply"}, d.last_error || "")));
      }
    }
    const transports = data.transports.map((t) => h("tr", {},
      h("td", {}, t.name), h("td", {}, badge(t.offline ? "offline" : t.status)), h("td", {class: "reply"}, t.status_string),
      h("td", {}, h("button", {type: "button", "data-transport": t.name, onclick: async () => {
        try {
          await api(`/api/transports/${enc(t.name)}/${t.offline ? "online" : "offline"}`, {method: "POST", body: {}});
          draw();
        } catch (err) { notice(err.message, true); }
      }}, t.offline ? "bring online" : "take offline"))));
    page.replaceChildren(h("h1", {}, "Destinations"),
      table(["transport", "destination", "health", "backlog", "by status", "connections", "delivered", "deferred",
             "failed", "last error"], rows, "No destination has had mail since the daemon started."),
      h("h2", {}, "Transports"), table(["transport", "status", "", ""], transports));
  };
  try { await draw(); } catch (err) { page.replaceChildren(h("p", {class: "error"}, err.message)); }
  live.on(throttle(draw, 500));
}

function statusRow(row) {
  const dir = (d) => (d ? `${d.enabled ? "on" : "off"}${d.active ? ", active" : ""}` : "");
  return h("tr", {}, h("td", {}, row.name || row.owner || ""), h("td", {}, row.kind || "node"),
    h("td", {}, badge(row.status || (row.alive ? "online" : "down"))), h("td", {class: "reply"}, row.status_string || ""),
    h("td", {}, dir(row.inbound)), h("td", {}, dir(row.outbound)), h("td", {class: "reply"}, counts(row.counts)));
}

async function statusPage() {
  markNav("status");
  const page = document.getElementById("page");
  const draw = async () => {
    const {data} = await api("/api/status");
    const rows = [data.spooler, ...data.transports, ...data.listeners, ...data.fetch].map(statusRow);
    const nodes = (data.nodes || []).map((n) => h("tr", {}, h("td", {class: "mono"}, n.owner), h("td", {}, n.host),
      h("td", {}, String(n.pid)), h("td", {}, badge(n.alive ? "online" : "down")), h("td", {}, String(n.leases)),
      h("td", {}, n.draining ? "draining" : "")));
    const queue = Object.entries(data.queue).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, String(v))));
    page.replaceChildren(h("h1", {}, "Status"),
      table(["row", "kind", "status", "status string", "inbound", "outbound", "counts"], rows),
      h("h2", {}, "Queue"), table(["status", "recipients"], queue),
      h("h2", {}, "Delivery nodes"), table(["owner", "host", "pid", "status", "leases", ""], nodes));
  };
  try { await draw(); } catch (err) { page.replaceChildren(h("p", {class: "error"}, err.message)); }
  live.on(throttle(draw, 500));
}

// ---- mailboxes -------------------------------------------------------------------------------

function recentMailboxes(add) {
  let list = [];
  try { list = JSON.parse(localStorage.getItem("msgspool.mailboxes") || "[]"); } catch { list = []; }
  if (add) {
    list = [add, ...list.filter((m) => m !== add)].slice(0, 12);
    localStorage.setItem("msgspool.mailboxes", JSON.stringify(list));
  }
  return list;
}

async function mailboxesPage() {
  markNav("mailboxes");
  const input = h("input", {name: "mailbox", placeholder: "alice@example.org", size: 30, required: true});
  const form = h("form", {class: "search", onsubmit: (e) => {
    e.preventDefault();
    location.assign(`/mailboxes/${enc(input.value.trim())}`);
  }}, h("label", {}, "Mailbox", input), h("button", {type: "submit", class: "primary"}, "Open"));
  const recent = recentMailboxes();
  const listed = h("div", {id: "mailbox-list"});
  const params = new URLSearchParams(location.search);
  document.getElementById("page").replaceChildren(h("h1", {}, "Mailboxes"), form, listed,
    h("div", {}, recent.length ? [h("h2", {}, "Opened lately"), h("ul", {}, recent.map((m) => h("li", {},
      h("a", {href: `/mailboxes/${enc(m)}`}, m))))] : null),
    h("p", {class: "muted"}, "A mailbox exists once mail was filed into it or sent from it; a message's page links"
                             + " the copies filed for its local recipients."));
  const query = new URLSearchParams({limit: String(PAGE_SIZE)});
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  try {
    const {data} = await api(`/api/mailboxes?${query}`);
    listed.replaceChildren(
      data.mailboxes.length ? h("ul", {id: "mailboxes"}, data.mailboxes.map((m) => h("li", {"data-mailbox": m.address},
        h("a", {href: `/mailboxes/${enc(m.address)}`}, m.address), " ",
        h("span", {class: "muted"}, m.folders.length ? "" : "no messages"),
        ...m.folders.flatMap((f) => [" ", h("a", {href: `/mailboxes/${enc(m.address)}/folders/${enc(f)}`}, f)]))))
        : h("p", {class: "muted"}, "No mailbox yet."),
      h("div", {class: "pager"}, ...present(
        params.get("cursor") ? h("a", {href: location.pathname}, "« first page") : null,
        data.next_cursor ? h("a", {href: `${location.pathname}?cursor=${enc(data.next_cursor)}`, id: "more-mailboxes"},
                             "more »") : null)));
  } catch (err) { listed.replaceChildren(h("p", {class: "error"}, err.message)); }
}

async function mailboxPage(mailbox) {
  markNav("mailboxes");
  const page = document.getElementById("page");
  try {
    const {data} = await api(`/api/mailboxes/${enc(mailbox)}/folders`);
    recentMailboxes(mailbox);
    page.replaceChildren(h("h1", {}, mailbox), h("h2", {}, "Folders"),
      h("ul", {id: "folders"}, data.folders.map((f) => h("li", {},
        h("a", {href: `/mailboxes/${enc(mailbox)}/folders/${enc(f)}`}, f)))));
  } catch (err) {
    page.replaceChildren(h("h1", {}, mailbox), h("p", {class: "error"}, err.message));
  }
}

async function folderPage(mailbox, folder) {
  markNav("mailboxes");
  const page = document.getElementById("page");
  const params = new URLSearchParams(location.search);
  const list = h("div", {id: "folder-list"});
  const pager = h("div", {class: "pager"});
  page.replaceChildren(h("h1", {}, h("a", {href: `/mailboxes/${enc(mailbox)}`}, mailbox), ` / ${folder}`), list, pager);
  let seen = null;
  const load = async () => {
    const query = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (params.get("cursor")) query.set("cursor", params.get("cursor"));
    try {
      const {data} = await api(`/api/mailboxes/${enc(mailbox)}/folders/${enc(folder)}/messages?${query}`);
      list.replaceChildren(messageTable(data.messages, seen));
      seen = new Set(data.messages.map((m) => m.id));
      pager.replaceChildren(...present(
        params.get("cursor") ? h("a", {href: location.pathname}, "« first page") : null,
        data.next_cursor ? h("a", {href: `${location.pathname}?cursor=${enc(data.next_cursor)}`, id: "next-page"},
                             "next page »") : null));
    } catch (err) { list.replaceChildren(h("p", {class: "error"}, err.message)); }
  };
  await load();
  recentMailboxes(mailbox);
  const refresh = throttle(load, 300);
  live.on((type, data) => { if (type === "new_mail" || data.mailbox === mailbox) refresh(); });
}

// ---- start -----------------------------------------------------------------------------------

const PAGES = [
  [/^\/$/, queuePage],
  [/^\/messages\/([^/]+)$/, messagePage],
  [/^\/destinations$/, destinationsPage],
  [/^\/status$/, statusPage],
  [/^\/mailboxes$/, mailboxesPage],
  [/^\/mailboxes\/([^/]+)$/, mailboxPage],
  [/^\/mailboxes\/([^/]+)\/folders\/([^/]+)$/, folderPage],
];

async function start() {
  drawSession();
  drawCounters();
  live.on(throttle(drawCounters, 400));
  for (const [pattern, draw] of PAGES) {
    const found = location.pathname.match(pattern);
    if (found) {
      await draw(...found.slice(1).map(decodeURIComponent));
      document.body.dataset.ready = "true";
      return;
    }
  }
  document.getElementById("page").replaceChildren(h("p", {class: "error"}, "No such page."));
}

document.addEventListener("DOMContentLoaded", start);
