// The join page: pubkey -> invoice -> live status -> account. Talks only to this relay.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const demo = document.body.dataset.demo === "1";
  let pollTimer = null;
  let current = null;
  let lastPubkey = null;

  function sats(msat) {
    return msat % 1000 === 0 ? (msat / 1000).toLocaleString() + " sats" : msat.toLocaleString() + " msat";
  }

  function showAccount(acct) {
    $("step-account").hidden = false;
    let admitted = "no";
    if (acct.admitted_until === "forever") admitted = "yes, for good";
    else if (acct.admitted) admitted = "until " + new Date(acct.admitted_until * 1000).toLocaleString();
    $("acct-admitted").textContent = admitted;
    // The status route shows the public view (anyone may poll an invoice): no balance.
    $("acct-write").textContent = acct.may_write ? "yes" : "no";
    $("acct-link").href = "/account/" + acct.pubkey;
    // Tier, renewal date, grace and linked keys (issue 20): what the member pays again, by
    // when, how long writes go on after it, and how many other keys may share the plan.
    const day = (t) => new Date(t * 1000).toISOString().slice(0, 10);
    // A plan bought under a tier that ranks below it (a lower tier, or a single plan) does
    // not renew the tier: it follows it, and the page says so rather than show the tier
    // with the later date (README "Tiers").
    let tier = acct.tier_label || acct.tier || "none";
    if (acct.tier_changes_at) {
      tier += " until " + day(acct.tier_changes_at) + ", then " + (acct.next_tier_label || "the single plan (no tier)");
    }
    $("acct-tier").textContent = tier;
    $("acct-renew").textContent = typeof acct.admitted_until === "number" ? day(acct.admitted_until) : "-";
    $("acct-grace").textContent = acct.grace_until ? "writes go on until " + day(acct.grace_until) : "none";
    $("acct-links").textContent = acct.linked_keys_max > 0
      ? "up to " + acct.linked_keys_max + (acct.linked_keys_max === 1 ? " other key" : " other keys")
        + " may write under this plan: link them on the account page"
      : "none";
  }

  // A phone shows one step at a time: bring the step that just appeared to the top.
  function bringIntoView(section) {
    if (!window.matchMedia("(max-width: 480px)").matches) return;  // join.css's phone layout
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    section.scrollIntoView({ block: "start", behavior: still ? "auto" : "smooth" });
  }

  function setStatus(state, text) {
    const wasPaid = $("status").dataset.state === "paid";
    $("status").dataset.state = state;
    $("status").textContent = text;
    // An expired invoice must not look payable: grey it out and disable what pays it.
    const expired = state === "expired";
    $("invoice").classList.toggle("expired", expired);
    $("copy").disabled = expired;
    $("simulate").disabled = expired;
    $("expired-note").hidden = !expired;
    if (expired) {
      $("wallet-link").removeAttribute("href");
      $("open-wallet").removeAttribute("href");
      $("open-wallet").setAttribute("aria-disabled", "true");
    }
    // Paid: the QR, the wallet button and the copy button have done their job; the next
    // step takes their place.
    const paid = state === "paid";
    $("invoice").hidden = paid;
    $("step-next").hidden = !paid;
    if (paid && !wasPaid) bringIntoView($("step-next"));
    $("remind-row").hidden = !(state === "paid" && window.nostr && document.body.dataset.reminders === "1");
  }

  // A secret key (NIP-19 nsec) is caught here and never leaves the browser: the field is
  // cleared at once, before any request can carry it.
  function looksSecret(text) {
    return /^\s*(nostr:)?nsec1/i.test(text);
  }

  function checkKey() {
    const secret = looksSecret($("pubkey").value);
    if (secret) $("pubkey").value = "";
    $("key-warning").hidden = !secret;
    return !secret;
  }

  async function poll() {
    if (!current) return;
    try {
      const res = await fetch("/api/invoice/" + current, { headers: { Accept: "application/json" } });
      if (res.ok) {
        const doc = await res.json();
        showAccount(doc.account);
        if (doc.paid) {
          setStatus("paid", "paid");
          $("simulate").hidden = true;
          clearInterval(pollTimer);
          return;
        }
        if (doc.state === "expired") {
          setStatus("expired", "expired: get a new invoice");
          clearInterval(pollTimer);
          return;
        }
      }
    } catch (err) {
      // A failed poll is retried on the next tick; the relay may be restarting.
    }
  }

  async function getInvoice(event) {
    event.preventDefault();
    $("form-error").textContent = "";
    if (!checkKey()) return;
    const plan = (document.querySelector("input[name=plan]:checked") || {}).value || "";
    const body = { pubkey: $("pubkey").value.trim(), plan: plan };
    if (plan === "credit" && $("credit-amount")) body.amount = $("credit-amount").value;
    $("get-invoice").disabled = true;
    try {
      // POST: creating an invoice changes state (link prefetchers and crawlers follow GETs).
      const res = await fetch("/api/invoice", {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const doc = await res.json();
      if (!res.ok) {
        $("form-error").textContent = doc.error || "could not create an invoice";
        return;
      }
      current = doc.payment_hash;
      lastPubkey = doc.pubkey;
      $("qr").src = doc.qr;
      // BOLT-21 style URI: the phone hands it to whichever wallet app claims lightning:.
      $("wallet-link").href = "lightning:" + doc.bolt11;
      $("open-wallet").href = "lightning:" + doc.bolt11;
      $("open-wallet").removeAttribute("aria-disabled");
      $("bolt11").value = doc.bolt11;
      $("amount").textContent = sats(doc.amount_msat);
      setStatus("pending", "waiting for payment");
      $("simulate").hidden = !demo;
      $("copy-note").textContent = "";
      $("step-pay").hidden = false;
      bringIntoView($("step-pay"));
      clearInterval(pollTimer);
      pollTimer = setInterval(poll, 1000);  // the server asks the wallet at most every 2 s
      poll();
    } catch (err) {
      $("form-error").textContent = "the relay did not answer; try again";
    } finally {
      $("get-invoice").disabled = false;
    }
  }

  async function copyInvoice() {
    try {
      await navigator.clipboard.writeText($("bolt11").value);
      $("copy-note").textContent = "copied";
    } catch (err) {
      $("bolt11").select();
      $("copy-note").textContent = "press Ctrl+C to copy";
    }
  }

  async function copyRelay() {
    const url = $("next-relay-url").textContent;
    try {
      await navigator.clipboard.writeText(url);
      $("copy-relay-note").textContent = "copied: paste it into your client's relay list";
    } catch (err) {
      window.getSelection().selectAllChildren($("next-relay-url"));
      $("copy-relay-note").textContent = "press Ctrl+C to copy";
    }
  }

  // Reminders are sent only to those who ask, and only the key's owner may ask: the
  // NIP-07 extension signs a NIP-98 event for this exact URL.
  // NIP-98: a signed POST names its body by hash, so the signature cannot carry another.
  async function sha256hex(text) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function remind() {
    const pubkey = lastPubkey;
    if (!pubkey || !window.nostr) return;
    try {
      const url = location.origin + "/account/" + pubkey + "/reminders";
      const body = JSON.stringify({ reminders: true });
      const event = await window.nostr.signEvent({
        kind: 27235, created_at: Math.floor(Date.now() / 1000), content: "",
        tags: [["u", url], ["method", "POST"], ["payload", await sha256hex(body)]],
      });
      const res = await fetch(url, {
        method: "POST",
        body: body,
        headers: {
          Accept: "application/json", "Content-Type": "application/json",
          Authorization: "Nostr " + btoa(JSON.stringify(event)),
        },
      });
      const doc = await res.json();
      if (!res.ok) throw new Error(doc.error || res.statusText);
      $("remind-note").textContent = doc.reminders ? "reminders on: the relay will DM this key before it ends" : "reminders off";
      $("remind").disabled = doc.reminders;
    } catch (err) {
      $("remind-note").textContent = "not turned on: " + String(err.message || err);
    }
  }

  async function simulate() {
    if (!current) return;
    await fetch("/api/fake/pay/" + current, { method: "POST" });
    poll();
  }

  async function useExtension() {
    try {
      $("pubkey").value = await window.nostr.getPublicKey();
    } catch (err) {
      $("form-error").textContent = "the browser extension did not give a public key";
    }
  }

  function planChanged() {
    const row = $("credit-amount-row");
    if (row) row.hidden = (document.querySelector("input[name=plan]:checked") || {}).value !== "credit";
  }

  $("join-form").addEventListener("submit", getInvoice);
  $("copy").addEventListener("click", copyInvoice);
  $("copy-relay").addEventListener("click", copyRelay);
  $("remind").addEventListener("click", remind);
  $("pubkey").addEventListener("input", checkKey);
  $("simulate").addEventListener("click", simulate);
  $("nip07").addEventListener("click", useExtension);
  document.querySelectorAll("input[name=plan]").forEach((el) => el.addEventListener("change", planChanged));
  planChanged();
  // NIP-07 extensions inject window.nostr after load, sometimes a little later.
  const showNip07 = () => { if (window.nostr) $("nip07").hidden = false; };
  showNip07();
  setTimeout(showNip07, 500);
  const fromUrl = new URLSearchParams(location.search).get("pubkey");
  if (fromUrl) { $("pubkey").value = fromUrl; checkKey(); }
})();
