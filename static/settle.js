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

  function setStatus(state, text) {
    const badge = document.getElementById("conn");
    if (!badge) return;
    badge.dataset.state = state;
    badge.textContent = text;
  }

  document.addEventListener("htmx:ws:before:message:incoming", (e) => {
    let message;
    try {
      message = JSON.parse(e.detail.message.data);
    } catch {
      return;
    }
    if (typeof message.seq === "number") {
      const el = e.target;
      el.dataset.since = String(Math.max(message.seq, Number(el.dataset.since || 0)));
    }
    if (message.content) makeRoom(message.content);
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

  document.addEventListener("htmx:ws:after:connection", () => setStatus("live", "Live"));
  document.addEventListener("htmx:ws:close", (e) => {
    if (e.detail.reason === "removed") return;
    if (!navigator.onLine) setStatus("offline", "Offline");
    else if (RECONNECT_CODES.includes(e.detail.code)) setStatus("reconnecting", "Reconnecting…");
    else setStatus("offline", "Offline — reload the page");
  });
  window.addEventListener("offline", () => setStatus("offline", "Offline"));
  window.addEventListener("online", () => setStatus("reconnecting", "Reconnecting…"));

  // A network error leaves the form as it was, with the same idempotency key: sending
  // it again is safe, and the user needs to hear that.
  document.addEventListener("htmx:error", (e) => {
    const form = e.target.closest?.("form");
    const status = form?.querySelector(".form-status");
    if (!status) return;
    status.className = "form-status retry";
    status.textContent =
      "Network problem: we could not confirm the transfer. Press Send again — " +
      "it is safe, the same form is never charged twice.";
  });
})();
