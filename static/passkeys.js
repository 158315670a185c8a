// passkeys.js: the WebAuthn ceremonies of the Security page (adding a passkey) and of
// confirming a transfer awaiting one (the confirm page, and the send form's status line,
// in place). The server words everything and checks everything; this file only moves
// the options and the browser's answer between the JSON API and navigator.credentials.
// Without it the confirm page says confirming needs JavaScript and offers Cancel. The
// Security and confirm pages load it; other pages (settle.js) on first use.
(() => {
  "use strict";

  window.settlePasskeys = true;

  const fromB64 = (text) => {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0)).buffer;
  };
  const toB64 = (buffer) => {
    if (!buffer) return null;
    const bytes = new Uint8Array(buffer);
    let raw = "";
    for (const b of bytes) raw += String.fromCharCode(b);
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(method, url, body) {
    const headers = { "X-CSRF-Token": csrf(), Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = data?.error?.message || `the server answered ${response.status}`;
      throw new Error(message);
    }
    return data;
  }

  // PublicKeyCredential.toJSON(), written out: older browsers lack it.
  function credentialJSON(cred) {
    const r = cred.response;
    const response = { clientDataJSON: toB64(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toB64(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toB64(r.authenticatorData);
      response.signature = toB64(r.signature);
      response.userHandle = toB64(r.userHandle);
    }
    return {
      id: cred.id,
      rawId: toB64(cred.rawId),
      type: cred.type,
      response,
      authenticatorAttachment: cred.authenticatorAttachment || null,
      clientExtensionResults: cred.getClientExtensionResults(),
    };
  }

  function say(element, text, tone) {
    if (!element) return;
    element.textContent = text;
    element.className = `form-status ${tone || ""}`;
  }

  const failed = (err) =>
    err?.name === "NotAllowedError"
      ? "The passkey prompt was closed or timed out: nothing was confirmed. Try again."
      : `Not confirmed: ${err?.message || err}`;

  async function confirm(transferId, status, then) {
    say(status, "Waiting for your passkey…");
    try {
      const path = `/api/transfers/${encodeURIComponent(transferId)}/confirmation`;
      const { publicKey } = await api("GET", path);
      publicKey.challenge = fromB64(publicKey.challenge);
      for (const c of publicKey.allowCredentials || []) c.id = fromB64(c.id);
      const cred = await navigator.credentials.get({ publicKey });
      await api("POST", path, credentialJSON(cred));
      // The stream repaints every page; this line only says the step is done.
      say(status, "Confirmed: on its way.", "sent");
      if (then) window.location.assign(then);
    } catch (err) {
      say(status, failed(err), "failed");
    }
  }

  async function addPasskey(form) {
    const status = form.querySelector("#passkey-status");
    say(status, "Waiting for your device…");
    try {
      const { publicKey } = await api("POST", "/api/passkeys/options");
      publicKey.challenge = fromB64(publicKey.challenge);
      publicKey.user.id = fromB64(publicKey.user.id);
      for (const c of publicKey.excludeCredentials || []) c.id = fromB64(c.id);
      const cred = await navigator.credentials.create({ publicKey });
      const name = form.querySelector('input[name="name"]').value.trim() || "Passkey";
      const password = form.querySelector('input[name="password"]').value;
      const credential = credentialJSON(cred);
      await api("POST", "/api/passkeys", { name, credential, password });
      window.location.assign("/security");
    } catch (err) {
      const text =
        err?.name === "NotAllowedError"
          ? "The passkey prompt was closed or timed out: no passkey was added."
          : `No passkey was added: ${err?.message || err}`;
      say(status, text, "failed");
    }
  }

  function reveal() {
    for (const el of document.querySelectorAll("[data-passkey-confirm][hidden]")) el.hidden = false;
  }

  document.addEventListener("click", (e) => {
    const link = e.target.closest?.("[data-passkey-confirm]");
    if (!link || !window.PublicKeyCredential) return;
    e.preventDefault();
    const id = link.dataset.passkeyConfirm;
    const status = document.getElementById(`confirm-status-${id}`);
    // From the confirm page, on to the transfer's own (live) page once confirmed.
    const then = link.closest(".confirm-page") ? `/transfers/${encodeURIComponent(id)}` : "";
    confirm(id, status, then);
  });

  document.addEventListener("submit", (e) => {
    const form = e.target.closest?.("[data-passkey-add]");
    if (!form) return;
    e.preventDefault();
    addPasskey(form);
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", reveal);
  else reveal();
})();
