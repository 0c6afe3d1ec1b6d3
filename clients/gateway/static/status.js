// The moed status page: polls the gateway's /api/moed/status every POLL_MS and draws it.
//
// Every string from the daemon (request ids and client names come from clients) reaches the page through
// textContent only, never innerHTML; class names are built from whitelisted values only. The charts are rates
// computed here from the daemon's counters between two polls, over the daemon's own clock (uptime_s), and keep
// the last WINDOW_S seconds this page has seen. Optional status fields (experts, requests, governor, finished)
// are drawn when the daemon reports them and say NOT_REPORTED otherwise.
"use strict";

(() => {
  const POLL_MS = 1500;
  const WINDOW_S = 300;
  const NOT_REPORTED = "not reported by this daemon";
  const DAEMON_STATES = ["loading", "ready", "draining"];
  const REQUEST_STATES = ["queued", "prefilling", "decoding"];
  const GOVERNOR_STATES = ["PERFORMANCE", "BALANCED", "SAVER", "CRITICAL"];
  const KEY_STORE = "moed-gateway-key";
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];  // viridis

  const $ = (id) => document.getElementById(id);
  let apiKey = sessionStorage.getItem(KEY_STORE) || "";
  let samples = [];  // {t: daemon uptime s, hits, misses, bytes, tokens}
  let rates = [];    // {t, hit, read, tok}: between consecutive samples
  let grid = null;   // the experts grid as drawn, for the tooltip and redraws

  // -- formatting ----------------------------------------------------------------------------------------------
  const num = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);
  const int = (x) => (Number.isInteger(x) ? x : null);
  const text = (x) => (typeof x === "string" ? x : x === null || x === undefined ? "" : JSON.stringify(x));

  function bytes(n) {
    n = num(n);
    if (n === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function count(n, digits) {
    n = num(n);
    if (n === null) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + " M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + " k";
    return Number.isInteger(n) ? String(n) : n.toFixed(digits === undefined ? 2 : digits);
  }

  function percent(x) { x = num(x); return x === null ? "–" : (100 * x).toFixed(1) + " %"; }

  function seconds(s) {
    s = num(s);
    if (s === null) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function value(x) {
    if (typeof x === "number") return count(x, 3);
    if (typeof x === "boolean") return x ? "yes" : "no";
    if (x === null || x === undefined) return "–";
    return text(x);
  }

  // -- DOM helpers: text only ------------------------------------------------------------------------------------
  function el(tag, content, cls) {
    const e = document.createElement(tag);
    if (content !== undefined && content !== null) e.textContent = String(content);
    if (cls) e.className = cls;
    return e;
  }

  function setPairs(dl, pairs) {
    dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  }

  function setBadge(node, label, known, prefix) {
    node.textContent = label;
    node.className = "badge" + (known ? " " + prefix + label.toLowerCase() : "");
  }

  function note(id, message) {
    const p = $(id);
    p.textContent = message || "";
    p.hidden = !message;
  }

  // -- polling -----------------------------------------------------------------------------------------------------
  async function poll() {
    if (!document.hidden) {
      try {
        const headers = apiKey ? { Authorization: "Bearer " + apiKey } : {};
        const reply = await fetch("/api/moed/status", { headers, cache: "no-store" });
        if (reply.status === 401) askForKey();
        else render(await reply.json());
      } catch (e) {
        note("problem", "the gateway does not answer (" + text(e && e.message) + ")");
        setBadge($("state"), "gateway unreachable", false, "");
      }
    }
    setTimeout(poll, POLL_MS);
  }

  function askForKey() {
    $("keyform").hidden = false;
    note("problem", apiKey ? "the API key was refused" : "");
  }

  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = $("key").value.trim();
    sessionStorage.setItem(KEY_STORE, apiKey);
    $("keyform").hidden = true;
  });

  // -- the whole page from one reply -------------------------------------------------------------------------------
  function render(body) {
    $("keyform").hidden = true;
    const status = body && typeof body.status === "object" ? body.status : null;
    const gateway = (body && body.gateway) || {};
    const err = body && body.error;
    note("problem", body && body.up ? "" : "the daemon does not answer: " + text(err && err.message)
      + (status ? " (showing its last status)" : ""));
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("model").textContent = "model: " + (text(gateway.model) || "–");
    if (!body || !body.up) setBadge($("state"), "daemon down", false, "");
    else setBadge($("state"), text(status && status.state), DAEMON_STATES.includes(status && status.state), "st-");
    if (!status) return;
    renderLoad(status, gateway);
    renderCache(status.cache || {});
    sample(status);
    renderCharts();
    renderGovernor(status.governor);
    renderExperts(status.experts);
    renderRequests(status.requests);
    renderFinished(status.finished);
  }

  function renderLoad(s, gateway) {
    setPairs($("load"), [
      ["active", count(s.active) + " / " + count(s.max_batch) + " batch"],
      ["queued", count(s.queued) + " / " + count(s.queue_limit) + " limit"],
      ["HTTP in flight", count(gateway.http_in_flight)],
      ["uptime", seconds(s.uptime_s)],
      ["daemon", text(s.version) + " · " + text(s.model_type)],
      ["store", text(s.store)],
    ]);
  }

  function renderCache(c) {
    const used = num(c.used_bytes), budget = num(c.budget_bytes);
    const share = used !== null && budget ? Math.min(1, used / budget) : 0;
    $("cachebar").style.width = (100 * share).toFixed(1) + "%";
    setPairs($("cache"), [
      ["used / budget", bytes(used) + " / " + bytes(budget) + (budget ? " (" + percent(share) + ")" : "")],
      ["slots", count(c.slots)],
      ["hit rate (all time)", percent(c.hit_rate)],
      ["hits · misses", count(c.hits) + " · " + count(c.misses)],
      ["evictions", count(c.evictions)],
      ["loaded from store", bytes(c.bytes_loaded)],
    ]);
  }

  // -- rates over the daemon's clock -------------------------------------------------------------------------------
  function sample(s) {
    const c = s.cache || {};
    const t = num(s.uptime_s);
    if (t === null) return;
    const phases = [num(c.decode_bytes_read), num(c.prefill_bytes_read)];
    const read = phases.some((x) => x !== null) ? phases.reduce((a, x) => a + (x || 0), 0) : num(c.bytes_loaded);
    const now = { t, hits: num(c.hits), misses: num(c.misses), bytes: read, tokens: num(c.decode_tokens) };
    const prev = samples[samples.length - 1];
    if (prev && t < prev.t) { samples = []; rates = []; }  // the daemon restarted
    if (prev && t === prev.t) return;                       // the same snapshot again
    if (prev && t > prev.t) {
      const dt = t - prev.t;
      const delta = (k) => (now[k] !== null && prev[k] !== null ? now[k] - prev[k] : null);
      const dh = delta("hits"), dm = delta("misses"), db = delta("bytes"), dk = delta("tokens");
      rates.push({
        t,
        hit: dh !== null && dm !== null && dh + dm > 0 ? dh / (dh + dm) : null,
        read: db !== null ? Math.max(0, db) / dt : null,
        tok: dk !== null ? Math.max(0, dk) / dt : null,
      });
    }
    samples.push(now);
    samples = samples.filter((x) => x.t >= t - WINDOW_S);
    rates = rates.filter((x) => x.t >= t - WINDOW_S);
  }

  function renderCharts() {
    const last = (k) => { for (let i = rates.length - 1; i >= 0; i--) if (rates[i][k] !== null) return rates[i][k]; return null; };
    $("v-hit").textContent = percent(last("hit"));
    $("v-read").textContent = last("read") === null ? "–" : bytes(last("read")) + "/s";
    $("v-tok").textContent = last("tok") === null ? "–" : count(last("tok"), 1) + " tok/s";
    spark($("c-hit"), "hit", 1, percent);
    spark($("c-read"), "read", null, (x) => bytes(x) + "/s");
    spark($("c-tok"), "tok", null, (x) => count(x, 1) + "/s");
  }

  function fitCanvas(canvas, cssHeight) {
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(50, canvas.clientWidth);  // its CSS width: 100 % of its box
    canvas.style.height = cssHeight + "px";
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { g, w, h: cssHeight };
  }

  function spark(canvas, k, fixedMax, fmt) {
    const { g, w, h } = fitCanvas(canvas, 44);
    g.clearRect(0, 0, w, h);
    const pts = rates.filter((r) => r[k] !== null);
    const tEnd = rates.length ? rates[rates.length - 1].t : 0;
    const span = Math.min(WINDOW_S, Math.max(30, samples.length ? tEnd - samples[0].t : 0));  // fills up to WINDOW_S
    const max = fixedMax || Math.max(1e-9, ...pts.map((r) => r[k]));
    const x = (t) => w - ((tEnd - t) / span) * w;
    const y = (v) => h - 2 - (v / max) * (h - 14);
    g.strokeStyle = "#2a3038";
    g.beginPath(); g.moveTo(0, y(0) + 0.5); g.lineTo(w, y(0) + 0.5); g.stroke();
    g.fillStyle = "#8b949e";
    g.font = "10px sans-serif";
    g.fillText("max " + (pts.length ? fmt(max) : "–") + " · last " + seconds(span), 2, 9);
    if (!pts.length) return;
    g.beginPath();
    let open = false;
    for (const r of rates) {  // a gap where a rate is unknown
      if (r[k] === null) { open = false; continue; }
      if (open) g.lineTo(x(r.t), y(r[k])); else g.moveTo(x(r.t), y(r[k]));
      open = true;
    }
    g.strokeStyle = "#58a6ff";
    g.lineWidth = 1.5;
    g.stroke();
    for (const r of pts.length === 1 ? pts : []) {  // one point: a dot, as a line needs two
      g.fillStyle = "#58a6ff"; g.fillRect(x(r.t) - 2, y(r[k]) - 2, 4, 4);
    }
  }

  // -- governor --------------------------------------------------------------------------------------------------
  function renderGovernor(gov) {
    const box = $("governor");
    if (!gov || typeof gov !== "object") {
      setBadge($("govstate"), "–", false, "");
      box.replaceChildren(el("p", NOT_REPORTED, "muted"));
      return;
    }
    const state = text(gov.state);
    setBadge($("govstate"), state, GOVERNOR_STATES.includes(state), "gov-");
    const limits = gov.limits || {};
    const pace = num(limits.pace_steps_per_s);
    const main = el("dl");
    setPairs(main, [
      ["profile", text(gov.profile) || "–"],
      ["last change", num(gov.last_change_s) === null ? "–" : seconds(gov.last_change_s) + " ago"],
      ["batch ceiling", count(limits.batch_ceiling)],
      ["prefetch depth", count(limits.prefetch_depth)],
      ["cache budget", bytes(limits.cache_budget_bytes)],
      ["pace", pace === null ? "unpaced" : count(pace, 1) + " steps/s"],
    ]);
    const parts = [main];
    for (const [title, map] of [["reasons", gov.reasons], ["readings", gov.readings]]) {
      if (map && typeof map === "object" && Object.keys(map).length) {
        const dl = el("dl", null, "small");
        setPairs(dl, Object.entries(map).map(([k, v]) => [k, /bytes$/.test(k) && num(v) !== null ? bytes(v) : value(v)]));
        parts.push(el("h3", title), dl);
      }
    }
    box.replaceChildren(...parts);
  }

  // -- experts grid --------------------------------------------------------------------------------------------------
  function heatColour(h) {
    const f = Math.min(1, Math.max(0, h)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(f)), u = f - i;
    const c = RAMP[i].map((a, j) => Math.round(a + (RAMP[i + 1][j] - a) * u));
    return "rgb(" + c.join(",") + ")";
  }

  function parseExperts(experts) {
    if (!experts || !Array.isArray(experts.layers)) return null;
    const rows = experts.layers.filter((l) => l && typeof l === "object");
    let cols = 0;
    for (const l of rows) {
      cols = Math.max(cols, int(l.num_experts) || 0);
      for (const e of Array.isArray(l.resident) ? l.resident : []) if (int(e) !== null) cols = Math.max(cols, e + 1);
    }
    cols = Math.min(cols, 4096);
    let resident = 0;
    const cells = rows.map((l) => {
      const heat = new Float32Array(cols).fill(-1);  // -1: not resident
      const ids = Array.isArray(l.resident) ? l.resident : [];
      const heats = Array.isArray(l.heat) ? l.heat : [];
      ids.forEach((e, i) => {
        if (int(e) !== null && e >= 0 && e < cols) { heat[e] = Math.min(1, Math.max(0, num(heats[i]) || 0)); resident++; }
      });
      return { layer: int(l.layer) !== null ? l.layer : "?", heat };
    });
    return { cols, cells, resident };
  }

  function renderExperts(experts) {
    grid = parseExperts(experts);
    const canvas = $("experts");
    const shown = !!(grid && grid.cells.length && grid.cols);
    canvas.hidden = !shown;
    $("experts-legend").hidden = !shown;
    note("experts-none", grid === null ? NOT_REPORTED : shown ? "" : "no MoE layers reported");
    $("experts-summary").textContent = shown ? grid.resident + " of " + grid.cells.length * grid.cols
      + " resident · " + grid.cells.length + " layers × " + grid.cols + " experts" : "";
    if (shown) drawExperts();
  }

  function drawExperts() {
    const canvas = $("experts");
    const label = 34;
    const cellH = Math.max(3, Math.min(12, Math.floor(300 / grid.cells.length)));
    const { g, w, h } = fitCanvas(canvas, cellH * grid.cells.length);
    const cellW = (w - label) / grid.cols;
    grid.geometry = { label, cellW, cellH };
    g.clearRect(0, 0, w, h);
    g.font = Math.min(10, cellH) + "px sans-serif";
    g.textBaseline = "middle";
    const every = Math.ceil(11 / cellH);  // label every k-th row so that labels do not overlap
    grid.cells.forEach((row, r) => {
      const y0 = r * cellH;
      if (r % every === 0) { g.fillStyle = "#8b949e"; g.fillText(String(row.layer), 2, y0 + cellH / 2); }
      for (let e = 0; e < grid.cols; e++) {
        const hv = row.heat[e];
        g.fillStyle = hv < 0 ? "#1b1f24" : heatColour(hv);
        g.fillRect(label + e * cellW, y0, Math.max(1, cellW - (cellW > 4 ? 1 : 0)), Math.max(1, cellH - (cellH > 4 ? 1 : 0)));
      }
    });
  }

  $("experts").addEventListener("mousemove", (ev) => {
    const tip = $("experts-tip");
    if (!grid || !grid.geometry) return;
    const { label, cellW, cellH } = grid.geometry;
    const rect = ev.target.getBoundingClientRect();
    const e = Math.floor((ev.clientX - rect.left - label) / cellW), r = Math.floor((ev.clientY - rect.top) / cellH);
    if (r < 0 || r >= grid.cells.length || e < 0 || e >= grid.cols) { tip.hidden = true; return; }
    const hv = grid.cells[r].heat[e];
    tip.textContent = "layer " + grid.cells[r].layer + " · expert " + e + ": "
      + (hv < 0 ? "not resident" : "heat " + hv.toFixed(2));
    tip.style.left = (ev.clientX - rect.left + 12) + "px";
    tip.style.top = (ev.clientY - rect.top + 12) + "px";
    tip.hidden = false;
  });
  $("experts").addEventListener("mouseleave", () => { $("experts-tip").hidden = true; });

  // -- requests and outcomes -----------------------------------------------------------------------------------
  function renderRequests(requests) {
    const body = $("requests").tBodies[0];
    if (!Array.isArray(requests)) {
      body.replaceChildren();
      $("requests").hidden = true;
      $("requests-summary").textContent = "";
      note("requests-none", NOT_REPORTED);
      return;
    }
    $("requests").hidden = requests.length === 0;
    note("requests-none", requests.length ? "" : "none");
    const by = {};
    for (const r of requests) by[text(r && r.state)] = (by[text(r && r.state)] || 0) + 1;
    $("requests-summary").textContent = REQUEST_STATES.filter((s) => by[s]).map((s) => by[s] + " " + s).join(" · ");
    body.replaceChildren(...requests.map((r) => {
      r = r && typeof r === "object" ? r : {};
      const tr = el("tr");
      const state = text(r.state);
      tr.append(el("td", text(r.id), "id"), el("td", text(r.client)),
        el("td", state, REQUEST_STATES.includes(state) ? "rq-" + state : ""),
        el("td", count(r.prompt_tokens), "num"), el("td", count(r.generated_tokens), "num"),
        el("td", seconds(r.age_s), "num"));
      return tr;
    }));
  }

  function renderFinished(finished) {
    const dl = $("finished");
    if (!finished || typeof finished !== "object") { dl.replaceChildren(el("dd", NOT_REPORTED, "muted")); return; }
    const entries = Object.entries(finished).sort((a, b) => a[0].localeCompare(b[0]));
    if (!entries.length) { dl.replaceChildren(el("dd", "none yet", "muted")); return; }
    setPairs(dl, entries.map(([k, v]) => [k, count(v)]));
  }

  window.addEventListener("resize", () => { renderCharts(); if (grid && grid.cells.length && grid.cols) drawExperts(); });
  poll();
})();
