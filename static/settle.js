// settle.js: what the pages add on top of htmx and its WebSocket extension (hx-ws).
// No framework, no build step. The server renders every piece of UI; this file only
// (1) sends the CSRF token with htmx requests, (2) never lets an older render replace
// a newer one, (3) makes room for new history rows, (4) resumes the stream from the
// last event seen, and (5) shows the connection state and network errors.
(() => {
  "use strict";

  const RECONNECT_CODES = [1001, 1005, 1006, 1011, 1012, 1013, 1014];

  document.addEventListener("htmx:config:request", (e) => {
    const token = document.querySelector('meta[name="csrf-token"]');
    if (token) e.detail.ctx.request.headers["X-CSRF-Token"] = token.content;
  });

  // Out-of-band swaps replace elements by id, so a brand-new transfer needs an empty
  // row to land in. Responses and events name their rows as id="row-...".
  function makeRoom(html) {
    const list = document.getElementById("history");
    if (!list || typeof html !== "string") return;
    for (const match of html.matchAll(/id="row-([A-Za-z0-9_-]+)"/g)) {
      const id = "row-" + match[1];
      if (document.getElementById(id)) continue;
      const row = document.createElement("li");
      row.id = id;
      list.prepend(row);
      document.getElementById("history-empty")?.remove();
    }
  }

  document.addEventListener("htmx:after:request", (e) => makeRoom(e.detail.ctx.text));

  // An HTTP response and a stream event may arrive in either order: keep the newest.
  // Balance cards carry the account's event seq, rows 0 (pending) or 1 (final).
  document.addEventListener("htmx:before:swap", (e) => {
    const tasks = e.detail.tasks;
    for (let i = tasks.length - 1; i >= 0; i--) {
      const incoming = tasks[i].fragment?.firstElementChild?.dataset?.version;
      const current = tasks[i].target?.dataset?.version;
      if (incoming !== undefined && current !== undefined && +incoming < +current) {
        tasks.splice(i, 1);
      }
    }
  });

  // The connection indicator: Live (with the time of the last update), Reconnecting or
  // Offline; never "Live" while no stream is open, never "Reconnecting" while one is.
  let openSockets = 0;
  let lastUpdate = null;
  const clock = (d) => d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function setStatus(state, text) {
    const badge = document.getElementById("conn");
    if (!badge) return;
    badge.dataset.state = state;
    badge.querySelector(".conn-text").textContent = text;
    const time = badge.querySelector(".conn-time");
    const said = state === "live" ? "updated" : "last update";
    if (time) time.textContent = lastUpdate ? `· ${said} ${clock(lastUpdate)}` : "";
  }

  function live() {
    lastUpdate = new Date();
    setStatus("live", "Live");
  }

  if (document.querySelector("[hx-ws\\:connect]")) setStatus("connecting", "Connecting…");

  // Times are rendered in UTC by the server; show them in the reader's own time zone.
  function localTimes(root) {
    for (const el of root.querySelectorAll("time[data-local]")) {
      const when = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(when.getTime())) continue;
      const style = el.dataset.local === "full"
        ? { dateStyle: "medium", timeStyle: "medium" }
        : { dateStyle: "medium", timeStyle: "short" };
      const text = when.toLocaleString(undefined, style);
      if (el.textContent !== text) el.textContent = text;
      el.title = el.getAttribute("datetime");
    }
  }
  localTimes(document);
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) {
        if (node.nodeType === 1) localTimes(node.parentNode || node);
      }
    }
  }).observe(document.body, { childList: true, subtree: true });

  // After a send, focus moves to its result: the duplicate question, the first field in
  // error, or the status line (so a second Enter does not submit the fresh form).
  // The form's status line follows its transfer. A stream event may come before the
  // form that shows the transfer: keep the newest status line of each transfer, and
  // apply it when the form lands.
  const statuses = new Map();

  function keepStatuses(html) {
    if (typeof html !== "string" || !html.includes('id="status-')) return;
    const box = document.createElement("template");
    box.innerHTML = html;
    for (const el of box.content.querySelectorAll('[id^="status-"]')) {
      const known = statuses.get(el.id);
      if (!known || +known.dataset.version <= +el.dataset.version) statuses.set(el.id, el);
    }
  }

  function applyStatuses(root) {
    for (const el of root.querySelectorAll('[id^="status-"]')) {
      const newer = statuses.get(el.id);
      if (newer && +newer.dataset.version > +el.dataset.version) {
        el.replaceWith(newer.cloneNode(true));
      }
    }
  }

  document.addEventListener("htmx:after:swap", () => {
    const send = document.getElementById("send");
    if (!send || !send.dataset.swapped) return;
    delete send.dataset.swapped;
    applyStatuses(send);
    const target =
      send.querySelector("#duplicate") ||
      send.querySelector('[aria-invalid="true"]') ||
      send.querySelector("#form-error") ||
      send.querySelector("#form-status");
    target?.focus();
  });
  document.addEventListener("htmx:before:swap", (e) => {
    for (const task of e.detail.tasks) {
      const el = task.fragment?.firstElementChild;
      if (el?.id === "send") el.dataset.swapped = "1";
    }
  });

  document.addEventListener("htmx:ws:before:message:incoming", (e) => {
    let message;
    try {
      message = JSON.parse(e.detail.message.data);
    } catch {
      return;
    }
    if (message.type !== "ping") live();
    if (typeof message.seq === "number") {
      const el = e.target;
      el.dataset.since = String(Math.max(message.seq, Number(el.dataset.since || 0)));
    }
    if (message.content) {
      makeRoom(message.content);
      keepStatuses(message.content);
    }
    else if (message.type === "snapshot") {
      // Too far behind to replay: re-render the balance and history from the server.
      const account = e.target.dataset.account;
      htmx.ajax("GET", `/accounts/${account}/history`, {
        target: "#history-section",
        swap: "outerHTML",
      });
    }
  });

  // Each reconnect asks for what happened after the last event this page applied,
  // so nothing is missed and nothing is applied twice.
  document.addEventListener("htmx:ws:before:connection", (e) => {
    const since = e.target.dataset.since;
    if (since === undefined) return;
    const url = new URL(e.detail.connection.url);
    url.searchParams.set("since", since);
    e.detail.connection.url = url.toString();
  });

  document.addEventListener("htmx:ws:after:connection", () => {
    openSockets += 1;
    live();
  });
  document.addEventListener("htmx:ws:close", (e) => {
    if (e.detail.reason === "removed") return;
    openSockets = Math.max(0, openSockets - 1);
    if (openSockets > 0) return;
    if (!navigator.onLine) setStatus("offline", "Offline");
    else if (RECONNECT_CODES.includes(e.detail.code)) setStatus("reconnecting", "Reconnecting…");
    else setStatus("offline", "Offline — reload the page");
  });
  window.addEventListener("offline", () => setStatus("offline", "Offline"));
  window.addEventListener("online", () => {
    if (openSockets > 0) setStatus("live", "Live");
    else setStatus("reconnecting", "Reconnecting…");
  });

  // A network error leaves the form as it was, with the same idempotency key: sending
  // it again is safe, and the user needs to hear that.
  document.addEventListener("htmx:error", (e) => {
    if (e.target.matches?.("input")) return; // a preview: nothing was sent
    const form = e.target.closest?.("form");
    const status = form?.querySelector(".form-status");
    if (!status) return;
    status.className = "form-status retry";
    status.textContent =
      "Network problem: we could not confirm the transfer. Press Send again — " +
      "it is safe, the same form is never charged twice.";
  });
})();
