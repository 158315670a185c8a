// settle.js: what the pages add to htmx and its WebSocket extension (hx-ws); no build
// step. The server renders all UI and words; this only (1) sends the CSRF token, (2)
// never lets an older render replace a newer one, (3) makes room for new rows, (4)
// resumes the stream from the last event seen, (5) shows the connection state, (6)
// announces each event once, (7) gives each tab its own form key, asks what became of
// a send whose answer was lost, and keeps previews from its sends, (8) loads the
// passkey ceremonies when a transfer is confirmed in place.
(() => {
  "use strict";

  const RECONNECT_CODES = [1001, 1005, 1006, 1011, 1012, 1013, 1014];
  const on = (name, handler) => document.addEventListener(name, handler);
  const sendForm = () => document.getElementById("transfer-form");
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content;
  const posts = (ctx, path) => (ctx?.request?.action || "").endsWith(path);

  // (8) The passkey ceremonies (passkeys.js) load on first use only.
  on("click", (e) => {
    const link = e.target.closest?.("[data-passkey-confirm]");
    if (!link || window.settlePasskeys || !window.PublicKeyCredential) return;
    e.preventDefault();
    const script = document.createElement("script");
    script.src = "/static/passkeys.js";
    script.onload = () => link.click();
    document.head.append(script);
  });

  on("htmx:config:request", (e) => {
    if (!sendAllowed(e.detail.ctx) || !previewAllowed(e.detail.ctx)) {
      e.preventDefault();
      return;
    }
    const token = csrf();
    if (token) e.detail.ctx.request.headers["X-CSRF-Token"] = token;
  });

  const isSend = (ctx) => posts(ctx, "/transfers");
  const isFate = (ctx) => posts(ctx, "/sent");
  // A preview answered after a send would be about the send itself ("Already sent
  // with this form"): none is asked while a send is on its way, none shown after one.
  let sends = 0;
  function previewAllowed(ctx) {
    if (!posts(ctx, "/preview")) return true;
    ctx.sends = sends;
    const form = sendForm();
    return !form?.dataset.sending && !form?.dataset.asking;
  }
  on("htmx:before:swap", (e) => {
    const sent = e.detail.ctx?.sends;
    if (sent !== undefined && sent !== sends) e.preventDefault();
  });

  // A second Enter on a slow machine lands on the fresh, empty form the first brought
  // back: it would only replace "Sent — pending" with errors. One send at a time.
  function sendAllowed(ctx) {
    if (!isSend(ctx)) return true;
    const form = sendForm();
    if (!form) return true;
    if (form.dataset.sending) return false;
    const body = ctx.request.body;
    const empty = !`${body?.get("to") || ""}`.trim() && !`${body?.get("amount") || ""}`.trim();
    const status = form.querySelector("#form-status");
    if (empty && status?.textContent.trim()) {
      status.focus();
      return false;
    }
    form.dataset.sending = "1";
    sends += 1;
    return true;
  }
  on("htmx:finally:request", (e) => {
    const form = sendForm();
    if (isSend(e.detail.ctx)) {
      delete form?.dataset.sending;
      if (!form?.dataset.asking) releaseHeldBack();
    }
    if (isFate(e.detail.ctx)) {
      delete form?.dataset.asking;
      releaseHeldBack();
    }
  });

  // Out-of-band swaps replace elements by id: a new transfer needs an empty row
  // (id="row-...") to land in.
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

  on("htmx:after:request", (e) => makeRoom(e.detail.ctx.text));

  // An HTTP response and a stream event may arrive in either order: keep the newest.
  // Balance cards carry the account's event seq, rows 0 (pending) or 1 (final). And an
  // event is announced once: an announcement about the event the region already said
  // (the answer to a send, then the stream; two accounts of one person) is dropped.
  on("htmx:before:swap", (e) => {
    const tasks = e.detail.tasks;
    for (let i = tasks.length - 1; i >= 0; i--) {
      const fragment = tasks[i].fragment?.firstElementChild;
      const incoming = fragment?.dataset?.version;
      const current = tasks[i].target?.dataset?.version;
      if (incoming !== undefined && current !== undefined && +incoming < +current) {
        tasks.splice(i, 1);
      } else if (fragment?.id === "announce" && !announceNow(fragment, tasks[i].target)) {
        tasks.splice(i, 1);
      }
    }
  });

  // While a send is on its way, a transfer.pending announcement may be that very send
  // (the stream can outrun its answer, whose status line gets the focus): hold it
  // until the answer lands, and say it only if it was about something else.
  let heldBack = null;

  function announceNow(incoming, region) {
    const said = incoming.querySelector("[data-event]");
    const event = said?.dataset.event;
    if (!event) return true;
    if (region?.querySelector?.("[data-event]")?.dataset.event === event) return false;
    const form = sendForm();
    const sending = form?.dataset.sending || form?.dataset.asking;
    if (sending && !said.hidden && event.endsWith(":transfer.pending")) {
      heldBack = { event, html: incoming.innerHTML };
      return false;
    }
    return true;
  }

  function releaseHeldBack() {
    const held = heldBack;
    heldBack = null;
    const region = document.getElementById("announce");
    if (!held || !region) return;
    if (region.querySelector("[data-event]")?.dataset.event !== held.event) {
      region.innerHTML = held.html;
    }
  }

  // The connection indicator: Live (with the time of the last update), Reconnecting or
  // Offline; never "Live" while no stream is open, never "Reconnecting" while one is.
  let openSockets = 0;
  let lastUpdate = null;
  const clock = (d) => d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function setStatus(state, text) {
    const badge = document.getElementById("conn");
    if (!badge) return;
    badge.dataset.state = state;
    // The state is a live region: said when it changes, not on every message.
    const said = badge.querySelector(".conn-text");
    if (said.textContent !== text) said.textContent = text;
    const time = badge.querySelector(".conn-time");
    const what = state === "live" ? "updated" : "last update";
    if (time) time.textContent = lastUpdate ? `· ${what} ${clock(lastUpdate)}` : "";
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

  // After a send, focus moves to its result (so a second Enter does not submit the
  // fresh form). A stream event may come before the form that shows its transfer: keep
  // the newest status line of each transfer, and apply it when the form lands.
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

  on("htmx:after:swap", () => {
    const send = document.getElementById("send");
    if (!send || !send.dataset.swapped) return;
    delete send.dataset.swapped;
    tabKey(false);
    applyStatuses(send);
    releaseHeldBack();
    // A send refused because the account was frozen meanwhile: its one notice says so.
    const frozen = send.querySelector("#send-button[disabled]")
      ? document.querySelector('[data-testid="frozen"]')
      : null;
    const target =
      send.querySelector("#confirm-recipient") ||
      send.querySelector("#duplicate") ||
      send.querySelector('[aria-invalid="true"]') ||
      send.querySelector("#form-error") ||
      frozen ||
      send.querySelector("#form-status");
    target?.focus();
  });
  on("htmx:before:swap", (e) => {
    for (const task of e.detail.tasks) {
      const el = task.fragment?.firstElementChild;
      if (el?.id === "send") el.dataset.swapped = "1";
    }
  });

  on("htmx:ws:before:message:incoming", (e) => {
    let message;
    try {
      message = JSON.parse(e.detail.message.data);
    } catch {
      return;
    }
    if (message.type !== "ping") {
      live();
      refreshStatement();
    }
    if (typeof message.seq === "number") {
      const el = e.target;
      el.dataset.since = String(Math.max(message.seq, Number(el.dataset.since || 0)));
    }
    if (message.content) {
      makeRoom(message.content);
      keepStatuses(message.content);
      // A transfer sent from here while the form says it was not (its request still on
      // its way when the server was asked): ask again, quietly (an answer only if sent).
      const state = formState();
      if (message.content.includes('id="status-')) {
        if (state?.contains("unreachable")) askFate(false);
        else if (state?.contains("not-sent")) askFate(true);
      }
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

  // Each reconnect asks for what came after the last event applied here: nothing
  // missed, nothing applied twice.
  on("htmx:ws:before:connection", (e) => {
    const since = e.target.dataset.since;
    if (since === undefined) return;
    const url = new URL(e.detail.connection.url);
    url.searchParams.set("since", since);
    e.detail.connection.url = url.toString();
  });

  on("htmx:ws:after:connection", () => {
    openSockets += 1;
    live();
  });
  on("htmx:ws:close", (e) => {
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

  // A statement page repaints its body on each burst of the account's events.
  let statementTimer = null;
  function refreshStatement() {
    const body = document.getElementById("statement-body");
    if (!body) return;
    clearTimeout(statementTimer);
    statementTimer = setTimeout(() => {
      htmx.ajax("GET", body.dataset.refresh, { target: "#statement-body", swap: "outerHTML" });
    }, 100);
  }

  // The reader's time zone, said on a first visit: statements cut months there.
  const zoneMeta = document.querySelector('meta[name="settle-time-zone"]');
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zoneMeta && !zoneMeta.content && zone) {
    fetch("/settings/time-zone", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf() || "" },
      body: new URLSearchParams({ time_zone: zone }),
    })
      .then((r) => {
        if (!r.ok) return;
        zoneMeta.content = zone;
        refreshStatement();
      })
      .catch(() => {});
  }

  // Each tab keeps a form key of its own (sessionStorage): a reload or the back button
  // sends the same key (a replay), and two tabs never share one. The key the server
  // renders is the browser's (a cookie, shared by its tabs: for pages without scripts).
  function tabKeyName(form) {
    return "settle:form-key:" + form.getAttribute("action");
  }

  function newKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function tabKey(adopt) {
    const form = sendForm();
    const input = form?.querySelector('input[name="idempotency_key"]');
    if (!input) return;
    try {
      if (adopt) input.value = sessionStorage.getItem(tabKeyName(form)) || newKey();
      sessionStorage.setItem(tabKeyName(form), input.value);
    } catch {
      // No storage: the key the server rendered stays.
    }
  }
  tabKey(true);

  // A send whose answer never arrived may or may not have gone through: only the server
  // knows, so ask it (POST …/sent, the same form): the form sent, or "Not sent". If it
  // cannot be reached either, say so and ask again once the connection is back.
  function formSays(tone) {
    const form = sendForm();
    const status = form?.querySelector("#form-status");
    if (!status) return;
    status.className = `form-status ${tone}`;
    status.textContent = form.dataset[tone];
  }

  function askFate(quiet) {
    const form = sendForm();
    if (!form) return;
    if (!quiet) {
      form.dataset.asking = "1";
      formSays("checking");
    }
    const url = form.getAttribute("action").replace(/\/transfers$/, "/sent");
    htmx.ajax("POST", url, {
      source: form,
      target: "#send",
      swap: "outerHTML",
      values: quiet ? { quiet: "1" } : {},
    });
  }

  const formState = () => document.querySelector("#transfer-form #form-status")?.classList;

  on("htmx:error", (e) => {
    const ctx = e.detail.ctx;
    if (isSend(ctx)) askFate(false);
    else if (isFate(ctx)) formSays("unreachable");
  });

  // Back online, or the stream open again: an unanswered question is asked again.
  function reconnected() {
    if (formState()?.contains("unreachable")) askFate(false);
  }
  window.addEventListener("online", reconnected);
  on("htmx:ws:after:connection", reconnected);
})();
