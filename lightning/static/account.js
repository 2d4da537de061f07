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
      button.hidden = true;
    } catch (err) {
      $("sign-in-error").textContent = String(err.message || err);
    }
  });
})();
