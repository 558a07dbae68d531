// The live view: renders what the admin tool pushes (Server-Sent Events on /events).
// No polling: the only timer re-renders "N s ago" labels from data already here.
"use strict";

const LINES_SHOWN = 30; // batch lines per card
const EVENTS_SHOWN = 60; // lines in "What happened"

let skew = 0; // the tool's clock minus this browser's, in ms
let state = { servers: [], diff: null, unaddressed: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const count = (n, one, many) => `${n.toLocaleString("en")} ${n === 1 ? one : many}`;
const nowTool = () => Date.now() + skew;
function ago(ms) {
  const s = Math.max(0, (nowTool() - ms) / 1000);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function clock(ms) {
  return new Date(ms - skew).toLocaleTimeString([], { hour12: false });
}
function since(ms) {
  const s = Math.max(0, (nowTool() - ms) / 1000);
  return `${s.toFixed(s < 10 ? 1 : 0)} s`;
}
// An element whose text is re-rendered every second from `at`.
function live(at, render) {
  const span = el("span", { className: "live", "data-at": at });
  span.render = render;
  span.textContent = render(at);
  return span;
}
setInterval(() => {
  for (const span of document.querySelectorAll(".live")) span.textContent = span.render(Number(span.dataset.at));
}, 1000);

function healthBadge(s) {
  if (s.serving) return el("span", { className: "badge ok health" }, "✔ SERVING");
  if (s.answered && s.caught_up === false) return el("span", { className: "badge warn health" }, "↻ CATCHING UP");
  if (s.answered) return el("span", { className: "badge bad health" }, `✖ ${s.health}`);
  return el("span", { className: "badge bad health" }, `✖ NOT SERVING (${s.health.toLowerCase()})`);
}

function agreementBadge(s) {
  const a = s.agrees;
  if (!a) return null;
  if (!a.same.length && !a.differs.length) return el("span", { className: "badge warn agree" }, "? no other replica to compare");
  if (!a.differs.length) return el("span", { className: "badge ok agree" }, "= digest agrees with all");
  return el("span", { className: "badge bad agree" }, `≠ DIFFERS from ${a.differs.join(", ")} for `,
    live(a.since, since));
}

function card(s) {
  const kind = s.serving ? "serving" : s.answered && s.caught_up === false ? "joining" : "down";
  const rows = [];
  const row = (name, ...value) => rows.push(el("dt", {}, name), el("dd", { "data-field": name }, ...value));
  if (s.answered) {
    row("keys", el("span", { className: "keys" }, s.keys.toLocaleString("en")));
    row("digest", el("span", { className: "mono" }, s.digest.slice(0, 8)));
    row("peers seen", s.peers.length ? `${s.peers.length}: ${s.peers.join(", ")}` : "none");
    row("broker", s.connected ? "⇄ connected" : "✖ NOT connected", s.broker ? ` to ${s.broker}` : "");
    row("last repair", s.last_repair_ms ? live(s.last_repair_ms, ago) : "never");
  } else if (s.error) {
    rows.push(el("dt", {}, "why"), el("dd", { className: "why" }, s.error));
    row("last answer", s.answered_at ? live(s.answered_at, ago) : "never, since this view started");
  }
  row("lag", s.lag_ms === null ? "not timed yet (Put through this page)"
    : el("span", {}, `${s.lag_ms.toFixed(0)} ms, timed `, live(s.lag_at, ago)));
  row("applied", `${count(s.batches, "batch", "batches")} (${count(s.batch_keys, "key", "keys")}) from peers`);
  if (s.joining_since) row("catch-up", "↻ catching up for ", live(s.joining_since, since));
  else if (s.caught_up_after !== null) row("catch-up", `✔ caught up within ${s.caught_up_after} s`);
  return el("article", {
    className: `card ${kind}`, "data-address": s.address, "data-id": s.id, "data-health": s.health,
    "data-keys": s.answered ? s.keys : "", "data-agrees": s.agrees ? String(!s.agrees.differs.length) : "",
  },
  el("h3", {}, s.id),
  el("div", { className: "addr" }, s.address === s.id ? "" : s.address, s.cluster ? ` cluster ${s.cluster}` : ""),
  el("div", {}, healthBadge(s), agreementBadge(s)),
  el("dl", {}, rows),
  el("h4", {}, "Batches applied from peers (newest first)"),
  el("ul", { className: "batches", "aria-live": "off" }));
}

const cards = new Map(); // address -> {node, list}

function renderState(next) {
  state = next;
  const container = document.getElementById("cards");
  const seen = new Set();
  for (const s of state.servers) {
    seen.add(s.address);
    const fresh = card(s);
    const old = cards.get(s.address);
    if (old) {
      // Keep the card's batch list (and its scroll) across updates.
      fresh.replaceChild(old.list, fresh.querySelector(".batches"));
      container.replaceChild(fresh, old.node);
      old.node = fresh;
    } else {
      cards.set(s.address, { node: fresh, list: fresh.querySelector(".batches") });
      container.append(fresh);
    }
  }
  for (const [address, c] of cards) {
    if (!seen.has(address)) { c.node.remove(); cards.delete(address); }
  }
  // Keep the DOM order the state's order.
  for (const s of state.servers) container.append(cards.get(s.address).node);
  renderSummary();
  renderDiff();
  renderServerChoice();
  const un = document.getElementById("unaddressed");
  un.hidden = !state.unaddressed.length;
  un.textContent = `Also seen as peers, but their ids are not addresses (name them on the command line): ${state.unaddressed.join(", ")}`;
}

function renderSummary() {
  const all = state.servers.length;
  const serving = state.servers.filter((s) => s.serving).length;
  const summary = document.getElementById("summary");
  summary.replaceChildren(`${all} server${all === 1 ? "" : "s"} · ${serving} serving · `,
    state.disagree_since ? el("span", { className: "badge bad" }, "≠ replicas differ for ", live(state.disagree_since, since))
      : el("span", { className: "badge ok" }, "= all replicas that answer agree"));
}

function renderDiff() {
  const box = document.getElementById("diff");
  const diff = state.diff;
  box.hidden = !diff;
  if (!diff) return;
  const summary = document.getElementById("diff-summary");
  const head = document.getElementById("diff-head");
  const rows = document.getElementById("diff-rows");
  if (diff.too_many) {
    summary.textContent = `A server holds ${diff.too_many.toLocaleString("en")} keys: too many to compare here; use scripts/admin.sh compare.`;
    head.replaceChildren(); rows.replaceChildren();
    return;
  }
  if (diff.error) {
    summary.textContent = `Could not compare the dumps: ${diff.error}`;
    head.replaceChildren(); rows.replaceChildren();
    return;
  }
  const shown = diff.keys.length;
  summary.replaceChildren(`${diff.total} key${diff.total === 1 ? "" : "s"} differ`,
    shown < diff.total ? ` (the first ${shown} shown)` : "", " — compared ", live(diff.at, ago),
    "; this box clears when the digests agree again.");
  head.replaceChildren(el("th", {}, "key"), ...diff.servers.map((n) => el("th", {}, n)));
  rows.replaceChildren(...diff.keys.map((k) => el("tr", { "data-key": k.key },
    el("td", { className: "key" }, k.key), ...diff.servers.map((n) => el("td", {}, k.states[n])))));
}

function renderServerChoice() {
  const select = document.getElementById("kv-server");
  const chosen = select.value;
  const options = state.servers.map((s) => el("option", { value: s.address },
    `${s.id}${s.id === s.address ? "" : ` (${s.address})`}${s.serving ? "" : " — not serving"}`));
  const same = options.length === select.options.length &&
    options.every((o, i) => o.value === select.options[i].value && o.textContent === select.options[i].textContent);
  if (same) return;
  select.replaceChildren(...options);
  if (chosen && state.servers.some((s) => s.address === chosen)) select.value = chosen;
}

function lineNode(line) {
  const origins = Object.entries(line.origins);
  const from = origins.map(([o, n]) => (line.batches > 1 ? `${o} ×${n}` : o)).join(", ");
  const keys = line.sample.join(", ") + (line.keys > line.sample.length ? ` … (${line.keys.toLocaleString("en")} keys)` : "");
  const lag = line.lag_ms === null ? "" : ` · lag ${line.lag_ms.toFixed(0)} ms`;
  const text = line.folded
    ? `⋯ ${line.folded.toLocaleString("en")} batches folded, from ${from}: ${keys}${lag}`
    : `← ${from}: ${keys}${lag}`;
  return el("li", { className: line.folded ? "folded fresh" : "fresh", "data-at": line.at }, el("span", { className: "t" }, clock(line.at)), " ", text);
}

function addLine(address, line, fresh = true) {
  const c = cards.get(address);
  if (!c) return;
  const node = lineNode(line);
  if (!fresh) node.classList.remove("fresh");
  else setTimeout(() => node.classList.remove("fresh"), 1500);
  c.list.prepend(node);
  while (c.list.children.length > LINES_SHOWN) c.list.lastChild.remove();
}

function addEvent(e) {
  const list = document.getElementById("events");
  list.prepend(el("li", {}, el("span", { className: "t mono" }, clock(e.at)), " ", e.text));
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
}

function connect() {
  const source = new EventSource("events");
  const link = document.getElementById("link");
  source.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    skew = hello.now - Date.now();
    link.hidden = true;
    for (const c of cards.values()) c.node.remove();
    cards.clear();
    document.getElementById("events").replaceChildren();
    renderState(hello.state);
    for (const [address, lines] of Object.entries(hello.lines)) for (const line of lines) addLine(address, line, false);
    for (const e2 of hello.events) addEvent(e2);
  });
  source.addEventListener("state", (e) => {
    const next = JSON.parse(e.data);
    skew = next.now - Date.now();
    renderState(next);
  });
  source.addEventListener("batch", (e) => {
    const b = JSON.parse(e.data);
    addLine(b.address, b.line);
  });
  source.addEventListener("event", (e) => addEvent(JSON.parse(e.data)));
  source.onerror = () => { link.hidden = false; };
}

document.getElementById("kv").addEventListener("submit", async (e) => {
  e.preventDefault();
  const op = e.submitter ? e.submitter.value : "put";
  const result = document.getElementById("kv-result");
  const body = {
    op, server: document.getElementById("kv-server").value,
    key: document.getElementById("kv-key").value, value: document.getElementById("kv-value").value,
  };
  result.className = "";
  result.textContent = `${op}…`;
  try {
    const reply = await fetch("api/kv", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = reply.ok ? await reply.json() : { ok: false, text: await reply.text() };
    result.className = answer.ok ? "ok" : "bad";
    result.textContent = `${answer.ok ? "✔" : "✖"} ${answer.text}`;
  } catch (error) {
    result.className = "bad";
    result.textContent = `✖ ${error}`;
  }
});

connect();
