// The account page's "signed-in view": the balance is shown only to the account's owner, who
// proves it by signing this very GET with NIP-98 (kind 27235) through a NIP-07 extension.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const button = $("sign-in");
  if (!button) return;
  if (!window.nostr) {
    button.hidden = true;
    return;
  }

  function sats(msat) {
    return msat % 1000 === 0 ? (msat / 1000).toLocaleString() + " sats" : msat.toLocaleString() + " msat";
  }

  // One plan, several keys: each link is signed by both keys (NIP-98 for this link's URL),
  // each unlink by either. The extension holds one key at a time: the consent is signed
  // first with the key to link, then the link itself with this account's key.
  let me = null;  // this account's hex key, once signed in
  let consent = null;

  async function signed(url, method, body) {
    const tags = [["u", url], ["method", method]];
    if (body !== undefined) {
      const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(body));
      tags.push(["payload", Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("")]);
    }
    return window.nostr.signEvent({ kind: 27235, created_at: Math.floor(Date.now() / 1000), tags, content: "" });
  }

  async function send(url, method, body) {
    const event = await signed(url, method, body);
    const res = await fetch(url, {
      method,
      headers: { Accept: "application/json", "Content-Type": "application/json", Authorization: "Nostr " + btoa(JSON.stringify(event)) },
      body,
    });
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    return doc;
  }

  function unlinkButton(owner, key, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", async () => {
      try {
        await send(window.location.origin + "/account/" + owner + "/links/" + key, "DELETE");
        $("link-state").textContent = "unlinked";
        b.parentElement.remove();
      } catch (err) { $("link-state").textContent = String(err.message || err); }
    });
    return b;
  }

  function showLinks(doc) {
    me = doc.pubkey;
    const list = $("link-list");
    list.textContent = "";
    if (doc.linked_to) {
      const li = document.createElement("li");
      li.textContent = "This key writes under the plan of " + doc.linked_to + " ";
      li.appendChild(unlinkButton(doc.linked_to, me, "Leave that plan"));
      list.appendChild(li);
      $("links").hidden = false;
      $("link-consent").hidden = $("link-confirm").hidden = true;
      return;
    }
    for (const key of doc.linked_keys || []) {
      const li = document.createElement("li");
      li.textContent = key + " ";
      li.appendChild(unlinkButton(me, key, "Unlink"));
      list.appendChild(li);
    }
    $("acct-links").textContent = (doc.linked_keys || []).length + " of " + doc.linked_keys_max + " linked";
    $("links").hidden = !(doc.linked_keys_max > 0);
  }

  $("link-consent").addEventListener("click", async () => {
    try {
      const key = await window.nostr.getPublicKey();
      if (key === me) throw new Error("switch your extension to the key you want to link first");
      consent = await signed(window.location.origin + "/account/" + me + "/links/" + key, "POST");
      $("link-state").textContent = "consent signed by " + key + "; now switch back to this account's key and press 2";
      $("link-confirm").disabled = false;
    } catch (err) { $("link-state").textContent = String(err.message || err); }
  });

  $("link-confirm").addEventListener("click", async () => {
    try {
      if ((await window.nostr.getPublicKey()) !== me) throw new Error("switch your extension back to this account's key");
      const doc = await send(window.location.origin + "/account/" + me + "/links/" + consent.pubkey, "POST",
        JSON.stringify({ consent }));
      consent = null;
      $("link-confirm").disabled = true;
      $("link-state").textContent = "linked " + doc.linked;
      showLinks(doc);
    } catch (err) { $("link-state").textContent = String(err.message || err); }
  });

  button.addEventListener("click", async () => {
    $("sign-in-error").textContent = "";
    try {
      const url = window.location.href.split("#")[0];
      const event = await window.nostr.signEvent({
        kind: 27235,
        created_at: Math.floor(Date.now() / 1000),
        tags: [["u", url], ["method", "GET"]],
        content: "",
      });
      const res = await fetch(url, {
        headers: { Accept: "application/json", Authorization: "Nostr " + btoa(JSON.stringify(event)) },
      });
      const doc = await res.json();
      if (!res.ok) throw new Error(doc.error || res.statusText);
      $("acct-credit").textContent = sats(doc.credit_msat);
      $("acct-state").textContent = doc.banned ? "banned" : doc.allowed ? "allowed by the operator" : "normal";
      showLinks(doc);
      button.hidden = true;
    } catch (err) {
      $("sign-in-error").textContent = String(err.message || err);
    }
  });
})();

// Renewal by Nostr Wallet Connect: the URI is NIP-44 encrypted by the extension to the relay's
// key (only the relay can open it), and the request is NIP-98 signed by the account's key.
(function () {
  const $ = (id) => document.getElementById(id);
  const relay = document.body.dataset.relay;
  if (document.body.dataset.renewal !== "1" || !window.nostr || !window.nostr.nip44 || !relay) return;
  $("wallet").hidden = false;
  const base = window.location.href.split("#")[0].split("?")[0] + "/wallet";

  async function call(body) {
    const method = body ? "POST" : "GET";
    const text = body ? JSON.stringify(body) : undefined;
    const tags = [["u", base], ["method", method]];
    if (text !== undefined) {
      // NIP-98: a signed POST names its body by hash, so the signature cannot carry another.
      const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
      tags.push(["payload", Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("")]);
    }
    const event = await window.nostr.signEvent({ kind: 27235, created_at: Math.floor(Date.now() / 1000), tags, content: "" });
    const res = await fetch(base, {
      method: method,
      headers: {
        Accept: "application/json", "Content-Type": "application/json",
        Authorization: "Nostr " + btoa(JSON.stringify(event)),
      },
      body: text,
    });
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    $("nwc-state").textContent = doc.connected
      ? "connected: renewals up to " + doc.budget_sats + " sats each" + (doc.renewals.length ? "; last: " + doc.renewals[0].state : "")
      : "no wallet connected";
  }

  $("nwc-connect").addEventListener("click", async () => {
    try {
      const uri = $("nwc-uri").value.trim();
      if (!uri.startsWith("nostr+walletconnect://")) throw new Error("that is not a nostr+walletconnect:// URI");
      const sealed = await window.nostr.nip44.encrypt(relay, uri);
      $("nwc-uri").value = "";
      await call({ connect: sealed, budget_sats: parseInt($("nwc-budget").value, 10) });
    } catch (err) {
      $("nwc-state").textContent = "not connected: " + String(err.message || err);
    }
  });
  $("nwc-forget").addEventListener("click", async () => {
    try { await call({ forget: true }); } catch (err) { $("nwc-state").textContent = String(err.message || err); }
  });
})();
