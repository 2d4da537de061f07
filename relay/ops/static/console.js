// The operator console (relay/console.py). Signs in with the operator's NIP-07 extension and
// signs every request with NIP-98 (kind 27235: the URL, the method and, for a POST, the
// SHA-256 of the body), so there is no session, cookie or password. Each panel is a JSON
// document (relay/console_blocks.py) drawn here with DOM calls only: text goes through
// textContent, never innerHTML, so nothing a client wrote (a report, a reason, a name) can
// become markup; charts are server-drawn SVG shown through <img>, which runs no script.
// Buttons act through NIP-86 on the relay's own URL. Nothing is loaded from another origin.
"use strict";

(() => {
  const HTTP_AUTH_KIND = 27235;
  const state = {
    pubkey: null,
    panels: [],
    current: null,
    query: {},
    timer: null,
    loads: 0, // a newer load wins over an older one still in flight
    blobs: [],
  };
  const $ = (id) => document.getElementById(id);

  // --- small DOM helpers (text only) -----------------------------------------------------

  // Bidirectional formatting characters (embeddings, overrides, isolates: U+202A-202E,
  // U+2066-2069) in what a client wrote reorder the text after them: a report's
  // "<U+202E>gpj.exe" reads "exe.jpg", and one reason's override runs on into the next.
  // They are shown as visible marks instead, so the operator reads the characters in the
  // order they were written; right-to-left scripts still read right to left, each cell,
  // figure and line isolated from its neighbours (dir="auto", console.css).
  const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;

  function shown(value) {
    return String(value).replace(BIDI_CONTROLS, (c) => `\u27E8U+${c.codePointAt(0).toString(16).toUpperCase()}\u27E9`);
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = shown(value);
      else if (key === "class") node.className = value;
      else if (key === "value") node.value = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) {
      if (child) node.append(child);
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function say(node, text, isError) {
    node.textContent = shown(text || "");
    node.classList.toggle("error", Boolean(isError));
    show(node, Boolean(text));
  }

  // --- NIP-98 signing --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function hasSigner() {
    return typeof window.nostr === "object" && window.nostr !== null && typeof window.nostr.signEvent === "function";
  }

  async function sha256Hex(text) {
    if (!window.crypto || !window.crypto.subtle) {
      throw new ApiError(0, "This page is not a secure context, so it cannot hash a request: open the console over https (or on localhost).");
    }
    const digest = await window.crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function base64Utf8(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  function nonceHex() {
    return Array.from(window.crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function authorization(url, method, body) {
    const tags = [["u", url], ["method", method]];
    if (body !== undefined) tags.push(["payload", await sha256Hex(body)]);
    // The relay honours each signed header once (a replay is refused), and two requests
    // for one URL in one second would otherwise be the same event: a random tag tells
    // them apart.
    tags.push(["nonce", nonceHex()]);
    let event;
    try {
      event = await window.nostr.signEvent({
        kind: HTTP_AUTH_KIND,
        created_at: Math.floor(Date.now() / 1000),
        tags,
        content: "",
      });
    } catch (err) {
      throw new ApiError(0, `Your extension did not sign the request (${err && err.message ? err.message : err}).`);
    }
    return "Nostr " + base64Utf8(JSON.stringify(event));
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  async function apiGet(path) {
    // The signed URL is exactly the one fetched: the relay checks `u` against its public
    // address plus this path and query.
    const url = new URL(path, window.location.origin).href;
    const headers = { Accept: "application/json", Authorization: await authorization(url, "GET") };
    const response = await fetch(url, { headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
    const doc = await readJson(response);
    if (!response.ok) throw new ApiError(response.status, (doc && doc.error) || `HTTP ${response.status}`);
    return doc;
  }

  async function manage(method, params) {
    // NIP-86: a JSON-RPC-like POST to the relay's URL, NIP-98 signed with the body's hash.
    const url = window.location.origin + "/";
    const body = JSON.stringify({ method, params });
    const headers = {
      "Content-Type": "application/nostr+json+rpc",
      Accept: "application/json",
      Authorization: await authorization(url, "POST", body),
    };
    const response = await fetch(url, {
      method: "POST", headers, body, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    });
    const doc = await readJson(response);
    if (!response.ok) throw new ApiError(response.status, (doc && doc.error) || `HTTP ${response.status}`);
    if (doc && doc.error) throw new ApiError(response.status, doc.error);
    return doc ? doc.result : null;
  }

  function describe(err) {
    if (err instanceof ApiError) {
      if (err.status === 403) {
        return `This key is not an operator of this relay. Put its hex pubkey (${state.pubkey || "see your extension"}) in [admin] pubkeys of the relay's config and restart the relay. (${err.message})`;
      }
      if (err.status === 401) return `The relay refused the signature: ${err.message}`;
      if (err.status >= 500) return `The relay could not answer: ${err.message}`;
      return err.message;
    }
    return `Could not reach the relay (${err && err.message ? err.message : err}).`;
  }

  // --- sign in ---------------------------------------------------------------------------

  const NO_SIGNER = "No Nostr extension (NIP-07) found in this browser. Install one (for example nos2x or Alby), "
    + "allow it on this page, then reload and sign in.";

  async function signIn() {
    const message = $("sign-in-message");
    say(message, "");
    if (!hasSigner()) {
      say(message, NO_SIGNER, true);
      return;
    }
    const button = $("sign-in-button");
    button.disabled = true;
    try {
      if (typeof window.nostr.getPublicKey === "function") {
        state.pubkey = await window.nostr.getPublicKey();
      }
      state.panels = await apiGet("/admin/api/panels");
      $("who-key").textContent = state.pubkey ? state.pubkey.slice(0, 12) + "…" : "";
      $("who-key").title = state.pubkey || "";
      show($("who"), true);
      show($("sign-in"), false);
      show($("console"), true);
      drawTabs();
      const wanted = window.location.hash.slice(1);
      const first = state.panels.find((p) => p.name === wanted) || state.panels[0];
      if (first) await openPanel(first.name, {});
    } catch (err) {
      say(message, describe(err), true);
    } finally {
      button.disabled = false;
    }
  }

  function signOut() {
    clearTimeout(state.timer);
    state.loads += 1;
    state.pubkey = null;
    state.current = null;
    $("panel").replaceChildren();
    $("tabs").replaceChildren();
    revokeBlobs(state.blobs);
    state.blobs = [];
    show($("console"), false);
    show($("who"), false);
    show($("sign-in"), true);
  }

  // --- tabs and panels -------------------------------------------------------------------

  function drawTabs() {
    const tabs = state.panels.map((panel) => {
      const tab = el("button", {
        type: "button", role: "tab", class: "tab", id: `tab-${panel.name}`, "data-panel": panel.name,
        "aria-selected": "false", text: panel.title,
      });
      tab.addEventListener("click", () => openPanel(panel.name, {}));
      return tab;
    });
    $("tabs").replaceChildren(...tabs);
    tabOverflow();
  }

  // A phone shows three or four of the tabs: arrows (and a fade on the cut edge) say that
  // the bar scrolls, and which way; they scroll it too. Hidden when every tab fits.
  function tabOverflow() {
    const tabs = $("tabs");
    const before = tabs.scrollLeft > 1;
    const after = tabs.scrollLeft + tabs.clientWidth < tabs.scrollWidth - 1;
    show($("tabs-prev"), before);
    show($("tabs-next"), after);
    $("tabs-bar").dataset.more = [before ? "before" : "", after ? "after" : ""].join(" ").trim();
  }

  function scrollTabs(direction) {
    const tabs = $("tabs");
    tabs.scrollBy({ left: direction * tabs.clientWidth * 0.7, behavior: "smooth" });
  }

  async function openPanel(name, query) {
    clearTimeout(state.timer);
    state.current = name;
    state.query = query || {};
    for (const tab of $("tabs").children) {
      tab.setAttribute("aria-selected", String(tab.dataset.panel === name));
      if (tab.dataset.panel === name) tab.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
    if (window.location.hash !== `#${name}`) window.history.replaceState(null, "", `#${name}`);
    say($("notice"), "");
    await loadPanel(false);
  }

  function typing() {
    const active = document.activeElement;
    return Boolean(active && $("panel").contains(active) && active.matches("input, select, textarea"));
  }

  async function loadPanel(refreshing) {
    clearTimeout(state.timer);
    const load = ++state.loads;
    const name = state.current;
    if (refreshing && (document.hidden || typing())) {
      // Never redraw under the operator's cursor (a half-typed reason) or for nobody.
      state.timer = setTimeout(() => loadPanel(true), 2000);
      return;
    }
    const params = new URLSearchParams(state.query).toString();
    let doc;
    try {
      doc = await apiGet(`/admin/api/panel/${encodeURIComponent(name)}${params ? "?" + params : ""}`);
    } catch (err) {
      if (load !== state.loads) return;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403) && !refreshing) {
        signOut();
        say($("sign-in-message"), describe(err), true);
        return;
      }
      say($("notice"), describe(err), true);
      if (refreshing) state.timer = setTimeout(() => loadPanel(true), 10000);
      return;
    }
    if (load !== state.loads) return;
    render(doc);
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    const refresh = Number(doc.refresh) || 0;
    if (refresh > 0) state.timer = setTimeout(() => loadPanel(true), refresh * 1000);
  }

  function revokeBlobs(urls) {
    for (const url of urls) URL.revokeObjectURL(url);
  }

  function render(doc) {
    const blobs = [];
    const nodes = [el("h2", { text: doc.title || "" })];
    for (const block of doc.blocks || []) nodes.push(renderBlock(block, blobs));
    const panel = $("panel");
    panel.dataset.panel = state.current;
    panel.replaceChildren(...nodes);
    revokeBlobs(state.blobs);
    state.blobs = blobs;
  }

  function renderBlock(block, blobs) {
    switch (block.type) {
      case "stats": return renderStats(block);
      case "chart": return renderChart(block, blobs);
      case "table": return renderTable(block);
      case "form": return renderForm(block);
      case "text": return el("p", { class: "block text", "data-block": "text", dir: "auto", text: block.text });
      case "pager": return renderPager(block);
      default:
        return el("p", {
          class: "block message error", "data-block": String(block.type),
          text: `This console cannot show a "${block.type}" block: reload the page.`,
        });
    }
  }

  function blockSection(kind, title) {
    const section = el("section", { class: `block ${kind}`, "data-block": kind });
    if (title) section.append(el("h3", { text: title }));
    return section;
  }

  function renderStats(block) {
    const section = blockSection("stats", block.title);
    const list = el("dl", { class: "tiles" });
    for (const item of block.items || []) {
      list.append(el("div", { class: "tile" }, [el("dt", { text: item.label }), el("dd", { dir: "auto", text: item.value })]));
    }
    section.append(list);
    return section;
  }

  function renderChart(block, blobs) {
    const section = blockSection("chart", block.title);
    // An SVG inside <img> is inert (no script, no external loads), whatever it contains.
    const blobUrl = (svg) => {
      const url = URL.createObjectURL(new Blob([svg || ""], { type: "image/svg+xml" }));
      blobs.push(url);
      return url;
    };
    const image = el("img", { src: blobUrl(block.svg), alt: block.title || "chart", class: "chart-image" });
    if (block.narrow) {
      // The chart drawn for a phone's width: the wide one scaled down to 366 px had 5.6 px labels.
      const narrow = el("source", { media: "(max-width: 640px)", srcset: blobUrl(block.narrow) });
      section.append(el("picture", {}, [narrow, image]));
    } else {
      section.append(image);
    }
    return section;
  }

  function renderPager(block) {
    const nav = el("nav", { class: "block pager", "data-block": "pager", "aria-label": "Pages" });
    const go = (query) => async () => {
      await openPanel(state.current, query);
      // The new page starts at its first row, not where the buttons were.
      const table = $("panel").querySelector("[data-block=table]");
      if (table) table.scrollIntoView({ block: "start" });
    };
    const previous = el("button", { type: "button", class: "quiet", "data-page": "previous", text: "\u2039 Previous", disabled: !block.previous });
    const following = el("button", { type: "button", class: "quiet", "data-page": "next", text: "Next \u203A", disabled: !block.next });
    if (block.previous) previous.addEventListener("click", go(block.previous));
    if (block.next) following.addEventListener("click", go(block.next));
    nav.append(previous, el("span", { class: "pager-label", text: block.label || "" }), following);
    return nav;
  }

  const HEX64 = /^[0-9a-f]{64}$/;

  function renderTable(block) {
    const section = blockSection("table", block.title);
    const columns = block.columns || [];
    const rows = block.rows || [];
    const actions = block.actions || [];
    if (!rows.length) {
      section.append(el("p", { class: "empty", text: block.empty || "nothing here" }));
      return section;
    }
    const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", text: c })));
    if (actions.length) head.append(el("th", { scope: "col", text: "Actions" }));
    const body = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      row.forEach((cell, i) => {
        const text = String(cell);
        tr.append(el("td", { text, dir: "auto", "data-label": columns[i] || "", class: HEX64.test(text) ? "hex" : null }));
      });
      if (actions.length) {
        const cell = el("td", { class: "actions", "data-label": "Actions" });
        for (const action of actions) cell.append(actionControl(action, row));
        tr.append(cell);
      }
      body.append(tr);
    }
    const table = el("table", { "data-columns": columns.length }, [el("thead", {}, [head]), body]);
    section.append(el("div", { class: "table-wrap" }, [table]));
    return section;
  }

  function actionControl(action, row) {
    const target = String(row[action.column]);
    const wrap = el("div", { class: "action" });
    let reason = null;
    if (action.reason) {
      reason = el("input", {
        type: "text", class: "reason", placeholder: "reason", maxlength: "1000",
        "aria-label": `${action.label}: reason`,
      });
      wrap.append(reason);
    }
    const button = el("button", { type: "button", class: "danger", text: action.label, "data-method": action.method });
    button.addEventListener("click", async () => {
      // A destructive action asks once, naming its target; "Cancel" changes nothing.
      if (action.confirm && !window.confirm(`${action.confirm}\n\n${target}`)) return;
      button.disabled = true;
      const params = [target];
      if (reason) params.push(reason.value.trim());
      if (action.options) params.push(action.options);
      try {
        const result = await manage(action.method, params);
        const what = result && typeof result.summary === "string" ? result.summary : "done";
        say($("notice"), `${action.label}: ${what} (${target.length > 20 ? target.slice(0, 16) + "…" : target}).`);
        await loadPanel(false);
      } catch (err) {
        say($("notice"), describe(err), true);
        button.disabled = false;
      }
    });
    wrap.append(button);
    return wrap;
  }

  function renderForm(block) {
    const form = el("form", { class: "block form", "data-block": "form" });
    for (const field of block.fields || []) {
      let input;
      if (field.kind === "select") {
        input = el("select", { name: field.name });
        for (const [value, label] of field.options || []) {
          const option = el("option", { value, text: label });
          option.selected = value === field.value;
          input.append(option);
        }
        input.addEventListener("change", () => form.requestSubmit());
      } else {
        input = el("input", {
          type: "search", name: field.name, value: field.value || "", placeholder: field.placeholder || "",
          autocomplete: "off", spellcheck: "false",
        });
      }
      form.append(el("label", { class: "field" }, [el("span", { text: field.label }), input]));
    }
    form.append(el("button", { type: "submit", class: "primary", text: block.submit || "Show" }));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = {};
      for (const [key, value] of new FormData(form)) {
        if (String(value).trim() !== "") query[key] = String(value).trim();
      }
      openPanel(state.current, query);
    });
    return form;
  }

  // --- start -----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-button").addEventListener("click", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("tabs").addEventListener("scroll", tabOverflow, { passive: true });
    window.addEventListener("resize", tabOverflow);
    $("tabs-prev").addEventListener("click", () => scrollTabs(-1));
    $("tabs-next").addEventListener("click", () => scrollTabs(1));
  });
})();
