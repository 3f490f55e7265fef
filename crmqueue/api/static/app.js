// crmqueue dashboard: a client of the admin API's JSON routes (README "Admin API").
// Plain ES2020, no build step. Every value from the API is inserted with textContent or
// as an attribute value, never parsed as HTML; the page's CSP forbids inline script.
"use strict";

(() => {
  const TOKEN_KEY = "crmqueue.token";
  const POLL_MS = 2000;
  const CHART_MS = 10000;
  const FULL_MS = 300000;
  const HOUR = 60;
  const PAGE = 50;
  const STATES = ["waiting", "active", "delayed", "scheduled", "completed", "dead"];
  const REMOVABLE = ["waiting", "scheduled", "delayed", "dead"];
  const FIELDS = [
    ["waiting", "waiting"], ["active", "active"], ["delayed", "delayed"],
    ["scheduled", "scheduled"], ["completed", "completed"], ["failed", "failed (window)"],
    ["dead", "dead"], ["workers", "workers"], ["throughput_per_min", "throughput /min"],
    ["failure_rate", "failure rate"],
  ];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ DOM helpers

  /** An element with attributes; string children become text nodes (never HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // ------------------------------------------------------------------ token and fetch

  class ApiError extends Error {
    constructor(status, detail) {
      super(`${status}: ${detail}`);
      this.status = status;
    }
  }

  let tokenPromise = null;
  let tokenResolve = null;

  /** Show the token dialog (once for every caller waiting) and resolve on submit. */
  function askToken(message) {
    const note = $("token-error");
    note.textContent = message || "";
    note.hidden = !message;
    if (!tokenPromise) {
      tokenPromise = new Promise((resolve) => { tokenResolve = resolve; });
      const dialog = $("token-dialog");
      if (!dialog.open) dialog.showModal();
      $("token-input").value = "";
      $("token-input").focus();
    }
    return tokenPromise;
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-dialog").close();
    const resolve = tokenResolve;
    tokenPromise = null;
    tokenResolve = null;
    if (resolve) resolve();
  });
  // Escape must not leave the page without a token.
  $("token-dialog").addEventListener("cancel", (event) => event.preventDefault());

  /** Call the API with the session's bearer token; a 401 asks for the token again.
   * `ok` lists non-2xx statuses whose JSON body is still the answer (health's 503). */
  async function api(method, path, ok = []) {
    for (;;) {
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (!token) {
        await askToken("");
        continue;
      }
      const response = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
        cache: "no-store",
      });
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken("That token was not accepted (401): enter it again.");
        continue;
      }
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (!response.ok && !ok.includes(response.status)) {
        throw new ApiError(response.status, (body && body.detail) || response.statusText);
      }
      return body;
    }
  }

  const qs = (params) => {
    const search = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) search.set(k, v);
    return search.toString();
  };
  const enc = encodeURIComponent;

  // ------------------------------------------------------------------ confirmation

  function confirmAction(text) {
    const dialog = $("confirm-dialog");
    $("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-cancel").focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    });
  }

  async function act(question, method, path, done) {
    if (!(await confirmAction(question))) return;
    try {
      const result = await api(method, path);
      if (done) done(result);
      showError("");
    } catch (error) {
      showError(`${question.replace(/\?$/, "")} failed: ${error.message}`);
    }
    await refresh();
  }

  // ------------------------------------------------------------------ queue cards

  const cards = new Map(); // queue -> {card, values: {field: node}, badges, pause}

  function card(queue) {
    if (cards.has(queue)) return cards.get(queue);
    const values = {};
    const counts = el("dl", { class: "counts" });
    for (const [field, label] of FIELDS) {
      let value;
      if (STATES.includes(field)) {
        value = el("button", { type: "button", class: "count", title: `list ${field} jobs`, "data-field": field });
        value.addEventListener("click", () => showJobs(queue, field));
      } else {
        value = el("span", { class: "count", "data-field": field });
      }
      values[field] = value;
      counts.append(el("div", {}, el("dt", { text: label }), el("dd", {}, value)));
    }
    const health = el("span", { class: "badge", "data-field": "health" });
    const paused = el("span", { class: "badge paused", "data-field": "paused", text: "paused" });
    const pause = el("button", { type: "button", "data-action": "pause" });
    pause.addEventListener("click", () => {
      const resume = pause.dataset.paused === "true";
      act(
        resume ? `Resume queue ${queue}?` : `Pause queue ${queue}? Consumers stop claiming its jobs.`,
        "POST",
        `/api/v1/admin/queues/${enc(queue)}/${resume ? "resume" : "pause"}`,
      );
    });
    const replay = el("button", { type: "button", "data-action": "replay", text: "Replay dead" });
    replay.addEventListener("click", () =>
      act(`Retry every dead job of ${queue}?`, "POST", `/api/v1/admin/jobs/${enc(queue)}/dead/replay`,
        (r) => notice(`${r.replayed.length} dead job(s) of ${queue} back to waiting`)));
    const node = el(
      "article",
      { class: "card", "data-queue": queue, "data-testid": `card-${queue}` },
      el("header", {}, el("h3", { text: queue }), health, paused),
      counts,
      el("footer", {}, pause, replay),
    );
    $("cards").append(node);
    const entry = { node, values, health, paused, pause, replay };
    cards.set(queue, entry);
    const option = el("option", { value: queue, text: queue });
    $("f-queue").append(option);
    return entry;
  }

  function renderCards(queues) {
    for (const stats of queues) {
      const entry = card(stats.queue);
      for (const [field] of FIELDS) {
        let text = String(stats[field]);
        if (field === "failure_rate") text = `${(stats.failure_rate * 100).toFixed(1)} %`;
        entry.values[field].textContent = text;
      }
      entry.health.textContent = stats.healthy ? "healthy" : "unhealthy";
      entry.health.className = `badge ${stats.healthy ? "ok" : "bad"}`;
      entry.paused.hidden = !stats.paused;
      entry.node.classList.toggle("is-paused", stats.paused);
      entry.pause.textContent = stats.paused ? "Resume" : "Pause";
      entry.pause.dataset.paused = String(stats.paused);
      entry.replay.disabled = stats.dead === 0;
    }
  }

  function notice(text) {
    $("notice").textContent = text;
  }

  // ------------------------------------------------------------------ throughput chart

  const PAD = { left: 34, right: 8, top: 8, bottom: 20 };
  let drawn = null; // the history last drawn, redrawn at a new width

  /** One line per queue, drawn at the chart's own pixel size (text stays legible). */
  function renderChart(history) {
    drawn = history;
    const chart = $("chart");
    const legend = $("legend");
    const W = Math.max(260, chart.clientWidth - 10);
    const H = Math.round(Math.min(200, Math.max(130, W * 0.28)));
    const minutes = history.length ? history[0].minutes.length : 60;
    let top = 1;
    for (const series of history) for (const m of series.minutes) top = Math.max(top, m.completed);
    const x = (i) => PAD.left + (i * (W - PAD.left - PAD.right)) / Math.max(1, minutes - 1);
    const y = (v) => H - PAD.bottom - (v * (H - PAD.top - PAD.bottom)) / top;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "jobs completed per minute, last hour" });
    root.append(svg("line", { x1: PAD.left, y1: y(0), x2: W - PAD.right, y2: y(0), class: "axis" }));
    root.append(svg("line", { x1: PAD.left, y1: y(top), x2: W - PAD.right, y2: y(top), class: "grid" }));
    const label = (text, attrs) => {
      const t = svg("text", attrs);
      t.textContent = text;
      root.append(t);
    };
    label(String(top), { x: PAD.left - 4, y: y(top) + 4, class: "tick end" });
    label("0", { x: PAD.left - 4, y: y(0) + 4, class: "tick end" });
    label(`-${minutes} min`, { x: PAD.left, y: H - 4, class: "tick" });
    label("now", { x: W - PAD.right, y: H - 4, class: "tick end" });
    legend.replaceChildren();
    history.forEach((series, index) => {
      const points = series.minutes.map((m, i) => `${x(i).toFixed(1)},${y(m.completed).toFixed(1)}`);
      const total = series.minutes.reduce((sum, m) => sum + m.completed, 0);
      root.append(svg("polyline", {
        points: points.join(" "), class: `series s${index % 5}`,
        "data-queue": series.queue, "data-total": total,
      }));
      legend.append(el("span", { class: `key s${index % 5}`, "data-queue": series.queue },
        el("i", {}), `${series.queue} ${total}`));
    });
    chart.replaceChildren(root);
  }

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => drawn && renderChart(drawn), 150);
  });

  let chartAt = 0;
  let chartSeen = "";
  let hour = null; // the history: the whole hour fetched now and then, else its last minutes
  let hourAt = 0;

  /** `fresh` (the last minutes) merged into `hour`; false if they do not join up. */
  function merge(fresh) {
    for (const series of fresh) {
      const kept = hour.find((s) => s.queue === series.queue);
      if (!kept) return false;
      for (const minute of series.minutes) {
        const last = kept.minutes[kept.minutes.length - 1];
        const at = kept.minutes.findIndex((m) => m.minute === minute.minute);
        if (at >= 0) kept.minutes[at] = minute;
        else if (minute.minute === last.minute + 60) kept.minutes.push(minute);
        else if (minute.minute > last.minute) return false;
      }
      kept.minutes.splice(0, Math.max(0, kept.minutes.length - HOUR));
    }
    return true;
  }

  /** Redraw when jobs finished since the last drawing, else every CHART_MS (the minutes
   * move on); the whole hour every FULL_MS, else only the last two minutes (cheap). */
  async function refreshChart(queues) {
    const seen = queues.map((q) => `${q.queue}:${q.completed}:${q.dead}`).join(" ");
    if (seen === chartSeen && Date.now() - chartAt < CHART_MS) return;
    chartAt = Date.now();
    chartSeen = seen;
    const path = "/api/v1/admin/queues/history";
    if (hour && Date.now() - hourAt < FULL_MS && merge(await api("GET", `${path}?minutes=2`))) {
      renderChart(hour);
      return;
    }
    hour = await api("GET", path);
    hourAt = Date.now();
    renderChart(hour);
  }

  // ------------------------------------------------------------------ job lists

  const list = { queue: "", state: "waiting", id: "", tenant: "", cursor: null, paged: false, seen: "" };

  function showJobs(queue, state) {
    $("f-queue").value = queue;
    $("f-state").value = state;
    loadJobs("new");
    $("jobs-title").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadJobs("new");
  });
  $("f-state").addEventListener("change", () => loadJobs("new"));
  $("f-queue").addEventListener("change", () => loadJobs("new"));
  $("more").addEventListener("click", () => loadJobs("more"));

  function jobTime(job) {
    if (job.state === "completed" || job.state === "dead") return when(job.finished_at);
    if (job.state === "scheduled" || job.state === "delayed") return when(job.run_at);
    if (job.state === "active") return when(job.started_at);
    return when(job.created_at);
  }

  function jobRow(job) {
    const open = el("button", { type: "button", class: "link mono", title: job.id, text: job.id });
    open.addEventListener("click", () => openJob(job.queue, job.id));
    return el("tr", { "data-job": job.id },
      el("td", { class: "id" }, open),
      el("td", { class: "name", text: job.name }),
      el("td", { text: job.tenant }),
      el("td", { text: `${job.attempts}/${job.max_attempts}` }),
      el("td", { class: "progress-cell", text: `${job.progress} %` }),
      el("td", { class: "when", text: jobTime(job) }));
  }

  /** mode "new": the filters as the form shows them; "again": the first page of the
   * current list (polling); "more": the next page. */
  async function loadJobs(mode) {
    const more = mode === "more";
    if (mode === "new") {
      list.queue = $("f-queue").value;
      list.state = $("f-state").value;
      list.id = $("f-id").value.trim();
      list.tenant = $("f-tenant").value.trim();
      list.cursor = null;
    }
    if (!list.queue) return;
    const query = qs({ state: list.state, id: list.id, tenant: list.tenant, cursor: more ? list.cursor : "", limit: PAGE });
    let page;
    try {
      page = await api("GET", `/api/v1/admin/jobs/${enc(list.queue)}?${query}`);
    } catch (error) {
      showError(`Jobs: ${error.message}`);
      return;
    }
    // Polling redraws only what changed (a click or a selection is not lost).
    const seen = JSON.stringify(page);
    if (mode === "again" && seen === list.seen) return;
    list.seen = more ? "" : seen;
    const rows = page.items.map(jobRow);
    if (more) $("job-rows").append(...rows);
    else $("job-rows").replaceChildren(...rows);
    list.paged = more;
    list.cursor = page.next_cursor;
    $("more").hidden = !page.next_cursor;
    $("jobs-empty").hidden = $("job-rows").children.length > 0;
  }

  // ------------------------------------------------------------------ job view

  let shown = null; // {queue, id} of the job in the dialog
  let shownSeen = ""; // the job as last drawn: polling redraws it only when it changed

  $("job-close").addEventListener("click", () => $("job-dialog").close());
  $("job-dialog").addEventListener("close", () => { shown = null; });

  async function openJob(queue, id) {
    shown = { queue, id };
    shownSeen = "";
    await renderJob();
    if (shown && !$("job-dialog").open) $("job-dialog").showModal();
  }

  async function renderJob() {
    if (!shown) return;
    const { queue, id } = shown;
    let job;
    try {
      job = await api("GET", `/api/v1/admin/jobs/${enc(queue)}/${enc(id)}`);
    } catch (error) {
      if (error.status === 404) {
        $("job-title").textContent = `Job ${id}: gone (removed or swept)`;
        for (const part of ["job-fields", "job-payload", "job-result", "job-timeline"]) $(part).replaceChildren();
        shownSeen = "";
        $("job-retry").disabled = true;
        $("job-remove").disabled = true;
        return;
      }
      showError(`Job ${id}: ${error.message}`);
      return;
    }
    const seen = JSON.stringify(job);
    if (seen === shownSeen) return; // an opened traceback stays open
    shownSeen = seen;
    $("job-title").textContent = `${job.name}`;
    const fields = [
      ["id", job.id], ["queue", job.queue], ["tenant", job.tenant], ["state", job.state],
      ["attempts", `${job.attempts} of ${job.max_attempts}`], ["created", when(job.created_at)],
      ["started", when(job.started_at)], ["finished", when(job.finished_at)], ["runs at", when(job.run_at)],
    ];
    $("job-fields").replaceChildren(...fields.filter(([, v]) => v !== "").map(([k, v]) =>
      el("div", { "data-field": k }, el("dt", { text: k }), el("dd", { text: v }))));
    $("job-progress").value = job.progress;
    $("job-progress-text").textContent = `${job.progress} %`;
    $("job-payload").textContent = JSON.stringify(job.payload, null, 2);
    $("job-result").textContent = job.result === null ? "—" : JSON.stringify(job.result, null, 2);
    const steps = job.errors.map((error) => {
      const at = error.at ? new Date(error.at * 1000).toLocaleString() : "";
      const count = error.count ? ` (×${error.count})` : "";
      const item = el("li", { class: "failed" },
        el("div", { class: "step" }, el("strong", { text: `${error.type || "Error"}${count}` }), ` ${at}`),
        el("div", { class: "message", text: error.message || "" }));
      if (error.traceback) {
        item.append(el("details", {}, el("summary", { text: "traceback" }),
          el("pre", { class: "code", text: error.traceback })));
      }
      return item;
    });
    if (job.started_at || job.finished_at) {
      const ending = job.state === "completed" ? "completed" : job.state;
      steps.push(el("li", { class: job.state === "dead" ? "dead" : "done" },
        el("div", { class: "step" }, el("strong", { text: ending }), ` ${when(job.finished_at || job.started_at)}`)));
    }
    if (!steps.length) steps.push(el("li", { class: "muted", text: "not run yet" }));
    $("job-timeline").replaceChildren(...steps);
    $("job-retry").disabled = job.state !== "dead";
    $("job-remove").disabled = !REMOVABLE.includes(job.state);
  }

  $("job-retry").addEventListener("click", () => {
    if (!shown) return;
    const { queue, id } = shown;
    act(`Retry job ${id}?`, "POST", `/api/v1/admin/jobs/${enc(queue)}/${enc(id)}/retry`,
      () => notice(`job ${id} back to waiting`));
  });
  $("job-remove").addEventListener("click", () => {
    if (!shown) return;
    const { queue, id } = shown;
    act(`Remove job ${id}? This cannot be undone.`, "DELETE", `/api/v1/admin/jobs/${enc(queue)}/${enc(id)}`,
      () => notice(`job ${id} removed`));
  });

  // ------------------------------------------------------------------ polling

  async function refresh() {
    try {
      const report = await api("GET", "/api/v1/admin/jobs/health", [503]);
      renderCards(report.queues);
      const badge = $("health");
      badge.textContent = report.status;
      badge.className = `badge ${report.status === "healthy" ? "ok" : "bad"}`;
      const idle = report.queues.filter((q) => q.consumers === 0).map((q) => q.queue);
      badge.title = report.error || (idle.length ? `no live consumer: ${idle.join(", ")}` : "");
      if (!list.queue && report.queues.length) await loadJobs("new");
      else if (!list.paged) await loadJobs("again");
      await renderJob();
      await refreshChart(report.queues);
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      showError(report.error ? `Storage: ${report.error}` : "");
    } catch (error) {
      if (error.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken("The dashboard needs an admin token (403).");
      } else {
        showError(`Cannot reach the API: ${error.message}`);
      }
    }
  }

  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken("").then(() => refresh());
  });

  async function loop() {
    await refresh();
    setTimeout(loop, POLL_MS);
  }
  loop();
})();
