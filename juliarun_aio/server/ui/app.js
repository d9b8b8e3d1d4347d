// The JuliaRun dashboard: the jobs of the signed-in namespace, a job's live log and
// worker count, scale and delete.  Plain JavaScript, no dependencies.  The page never
// sees the API token: it talks to /ui/api/ with its session cookie (HttpOnly), and sends
// the session's CSRF token (kept in memory only) with every change.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TAIL_LINES = 1000; // lines shown when a job page opens
  const UID_HEADER = "X-JuliaRun-Job-Uid"; // the submission a log stream belongs to
  const EARLIER_LINES = 1000; // lines added by "Load earlier lines"
  const MAX_LINES = 20000; // older lines leave the page while it follows the end
  const CHART_SECONDS = 600;
  const SCALABLE = new Set(["JuliaParBatch", "Notebook", "JuliaParBatchWorkers", "Generic"]);
  const TERMINAL = new Set(["succeeded", "failed", "lost"]);
  const SVG = "http://www.w3.org/2000/svg";

  const state = { session: null, view: null, skew: 0 };

  class SignedOut extends Error {}

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- small helpers -----------------------------------------------------------------

  const role = (root, name) => root.querySelector(`[data-role="${name}"]`);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function template(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  function mount(element) {
    document.getElementById("main").replaceChildren(element);
  }

  function apiUrl(path, params) {
    const query = new URLSearchParams(params || {}).toString();
    return `api/${path}${query ? `?${query}` : ""}`;
  }

  function jobPath(verb, kind) {
    return `${verb}/${encodeURIComponent(kind)}/`;
  }

  function setConnection(ok) {
    document.getElementById("connection").hidden = ok;
  }

  function noteClock(response) {
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) state.skew = date - Date.now();
  }

  async function api(path, { params, method = "GET", body, signal } = {}) {
    const headers = {};
    if (method !== "GET" && state.session) headers["X-CSRF-Token"] = state.session.csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(apiUrl(path, params), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      setConnection(signal ? signal.aborted : false);
      throw error;
    }
    setConnection(true);
    noteClock(response);
    let envelope = null;
    try {
      envelope = await response.json();
    } catch (_error) {
      envelope = null;
    }
    if (response.status === 401 && path !== "login") {
      signedOut();
      throw new SignedOut();
    }
    if (!response.ok || !envelope || envelope.code !== 0) {
      const message = envelope && typeof envelope.data === "string" ? envelope.data : "";
      throw new ApiError(response.status, message || `the server answered ${response.status}`);
    }
    return envelope.data;
  }

  // Yields the JSON objects of an NDJSON response as they arrive.
  async function* ndjson(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        const parts = buffer.split("\n");
        buffer = parts.pop();
        const items = parts.filter((part) => part).map((part) => JSON.parse(part));
        if (items.length) yield items;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function phaseOf(status) {
    if (!status) return "unknown";
    if (status.phase) return status.phase;
    if (status.succeeded) return "succeeded";
    if (status.failed) return "failed";
    return status.created ? "running" : "pending";
  }

  function setPhase(element, phase) {
    setText(element, phase);
    const name = `phase phase-${phase.replace(/[^a-z]/g, "")}`;
    if (element.className !== name) element.className = name;
  }

  function age(createdAt) {
    if (typeof createdAt !== "number") return "";
    let seconds = Math.max(0, Math.floor((Date.now() + state.skew) / 1000 - createdAt));
    if (seconds < 60) return `${seconds}s`;
    let minutes = Math.floor(seconds / 60);
    seconds %= 60;
    if (minutes < 60) return `${minutes}m ${seconds}s`;
    let hours = Math.floor(minutes / 60);
    minutes %= 60;
    if (hours < 24) return `${hours}h ${minutes}m`;
    const days = Math.floor(hours / 24);
    hours %= 24;
    return `${days}d ${hours}h`;
  }

  function workersText(kind, scale) {
    if (!scale || (!SCALABLE.has(kind) && !scale[0] && !scale[1])) return "–";
    return `${scale[0]} / ${scale[1]}`;
  }

  // http:// for ports named http*, web*, nb or mgmt; https:// for https* and *tls.
  function portScheme(name) {
    const lower = name.toLowerCase();
    if (lower.includes("https") || lower.endsWith("tls")) return "https";
    if (lower.startsWith("http") || lower.startsWith("web") || lower === "nb" || lower === "mgmt") {
      return "http";
    }
    return null;
  }

  function renderEndpoint(element, endpoint) {
    const key = JSON.stringify(endpoint || null);
    if (element.dataset.key === key) return;
    element.dataset.key = key;
    element.replaceChildren();
    const host = Array.isArray(endpoint) ? endpoint[0] : null;
    const ports = Array.isArray(endpoint) && endpoint[1] ? endpoint[1] : {};
    const names = Object.keys(ports).sort();
    if (!host || !names.length) {
      element.textContent = "–";
      return;
    }
    const hostPart = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
    names.forEach((name, index) => {
      if (index) element.append(" ");
      const port = Number(ports[name]);
      const scheme = portScheme(name);
      const label = `${name}:${port}`;
      if (scheme && Number.isInteger(port) && /^[A-Za-z0-9.:[\]-]+$/.test(hostPart)) {
        const link = document.createElement("a");
        link.href = `${scheme}://${hostPart}:${port}/`;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        link.textContent = label;
        element.append(link);
      } else {
        const span = document.createElement("span");
        span.textContent = label;
        element.append(span);
      }
    });
  }

  // -- sign in and out ---------------------------------------------------------------

  function stopView() {
    if (state.view) state.view.stop();
    state.view = null;
  }

  function signedOut(notice) {
    if (state.session === null && document.querySelector(".login")) return;
    showLogin(notice);
  }

  function showLogin(notice) {
    stopView();
    state.session = null;
    document.getElementById("namespace").hidden = true;
    document.getElementById("logout").hidden = true;
    const view = template("login-view");
    if (notice) {
      role(view, "notice").textContent = notice;
      role(view, "notice").hidden = false;
    }
    const form = role(view, "form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const namespace = form.elements.namespace.value.trim();
      const token = form.elements.token.value.trim();
      // The token leaves the page at once, whatever the answer.
      form.elements.token.value = "";
      const error = role(view, "error");
      error.hidden = true;
      try {
        await api("login", { method: "POST", body: { namespace, token } });
      } catch (failure) {
        error.textContent = failure instanceof ApiError ? failure.message : "the server did not answer";
        error.hidden = false;
        return;
      }
      await start();
    });
    mount(view);
    form.elements.token.focus();
  }

  async function start(notice) {
    try {
      state.session = await api("session");
    } catch (error) {
      if (error instanceof SignedOut) {
        showLogin(notice);
        return;
      }
      mount(Object.assign(document.createElement("p"), { className: "error", textContent: "The server did not answer; reload to try again." }));
      return;
    }
    const namespace = document.getElementById("namespace");
    namespace.textContent = state.session.namespace;
    namespace.hidden = false;
    document.getElementById("logout").hidden = false;
    route();
  }

  async function logout() {
    try {
      await api("logout", { method: "POST" });
    } catch (_error) {
      // Signed out either way: the page forgets the session.
    }
    showLogin();
  }

  function route() {
    stopView();
    if (!state.session) return;
    const match = location.hash.match(/^#\/job\/([^/]+)\/([^/]+)$/);
    state.view = match
      ? new JobView(decodeURIComponent(match[1]), decodeURIComponent(match[2]))
      : new JobsView();
  }

  // -- the job list ------------------------------------------------------------------

  class JobsView {
    constructor() {
      this.root = template("jobs-view");
      this.rows = new Map();
      this.stopped = false;
      this.timer = null;
      document.title = `Jobs · ${state.session.namespace} · JuliaRun`;
      mount(this.root);
      this.poll();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
    }

    async poll() {
      try {
        const jobs = await api("getAllJobInfo");
        if (!this.stopped) this.render(jobs || {});
      } catch (error) {
        if (error instanceof SignedOut) return;
      }
      if (!this.stopped) this.timer = setTimeout(() => this.poll(), POLL_MS);
    }

    row(name, kind) {
      let row = this.rows.get(name);
      if (row && row.dataset.kind !== kind) {
        row.remove();
        row = undefined;
      }
      if (!row) {
        row = document.createElement("tr");
        row.dataset.job = name;
        row.dataset.kind = kind;
        for (const cell of ["name", "kind", "phase", "workers", "endpoint", "age", "message"]) {
          const td = document.createElement("td");
          td.dataset.cell = cell;
          row.append(td);
        }
        const link = document.createElement("a");
        link.href = `#/job/${encodeURIComponent(kind)}/${encodeURIComponent(name)}`;
        link.textContent = name;
        row.cells[0].append(link);
        row.cells[1].textContent = kind;
        row.cells[2].append(document.createElement("span"));
        this.rows.set(name, row);
      }
      return row;
    }

    render(jobs) {
      const names = Object.keys(jobs).sort();
      const body = role(this.root, "rows");
      for (const [name, row] of this.rows) {
        if (!(name in jobs)) {
          row.remove();
          this.rows.delete(name);
        }
      }
      names.forEach((name, index) => {
        const info = jobs[name];
        const row = this.row(name, info.type);
        const status = info.status || null;
        setPhase(row.cells[2].firstChild, phaseOf(status));
        setText(row.cells[3], workersText(info.type, info.scale));
        renderEndpoint(row.cells[4], info.endpoint);
        setText(row.cells[5], age(status && status.created_at));
        const message = (status && status.message) || "";
        setText(row.cells[6], message);
        if (row.cells[6].title !== message) row.cells[6].title = message;
        if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
      });
      role(this.root, "empty").hidden = names.length > 0;
      setText(role(this.root, "count"), names.length === 1 ? "1 job" : `${names.length} jobs`);
    }
  }

  // -- one job -----------------------------------------------------------------------

  class JobView {
    constructor(kind, name) {
      this.kind = kind;
      this.name = name;
      this.root = template("job-view");
      this.stopped = false;
      this.timer = null;
      this.abort = new AbortController();
      this.samples = [];
      this.first = null; // cursor of the first line on the page
      this.last = null; // cursor reached by the stream (a line's or a heartbeat's)
      // The submission the page shows: a reconnect or an earlier page names it, so that a
      // new job given the same name after a delete is never shown as this one's log.
      this.uid = null;
      this.count = 0;
      this.stick = true; // follow the end of the log
      this.gone = false;
      this.editing = false;
      document.title = `${name} · JuliaRun`;
      setText(role(this.root, "name"), name);
      setText(role(this.root, "kind"), kind);
      this.log = role(this.root, "log");
      this.lines = role(this.root, "lines");
      this.log.addEventListener("scroll", () => this.onScroll());
      role(this.root, "follow").addEventListener("click", () => this.toBottom());
      role(this.root, "earlier").addEventListener("click", () => this.loadEarlier());
      role(this.root, "delete").addEventListener("click", () => this.remove());
      const scale = role(this.root, "scale");
      scale.elements.parallelism.addEventListener("input", () => {
        this.editing = true;
      });
      scale.addEventListener("submit", (event) => {
        event.preventDefault();
        this.scale();
      });
      mount(this.root);
      this.poll();
      this.follow();
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      this.abort.abort();
    }

    params(extra) {
      return { name: this.name, ...extra };
    }

    // -- status and workers

    async poll() {
      try {
        const signal = this.abort.signal;
        const [status, scale, endpoint] = await Promise.all([
          api(jobPath("getJobStatus", this.kind), { params: this.params(), signal }),
          api(jobPath("getJobScale", this.kind), { params: this.params(), signal }),
          api(jobPath("getJobEndpoint", this.kind), { params: this.params(), signal }),
        ]);
        if (this.stopped) return;
        this.render(status, scale, endpoint);
      } catch (error) {
        if (error instanceof SignedOut || this.stopped) return;
        if (error instanceof ApiError && error.status === 404) {
          this.vanished();
          return;
        }
      }
      this.timer = setTimeout(() => this.poll(), POLL_MS);
    }

    render(status, scale, endpoint) {
      const phase = phaseOf(status);
      setPhase(role(this.root, "phase"), phase);
      setText(role(this.root, "workers"), workersText(this.kind, scale));
      renderEndpoint(role(this.root, "endpoint"), endpoint);
      setText(role(this.root, "age"), age(status.created_at));
      setText(role(this.root, "message"), status.message || "–");
      const form = role(this.root, "scale");
      form.hidden = !SCALABLE.has(this.kind) || TERMINAL.has(phase);
      const input = form.elements.parallelism;
      if (!this.editing && document.activeElement !== input) input.value = String(scale[1]);
      this.samples.push({ t: Date.now() / 1000, running: scale[0], requested: scale[1] });
      const horizon = Date.now() / 1000 - CHART_SECONDS;
      while (this.samples.length > 2 && this.samples[1].t < horizon) this.samples.shift();
      this.chart();
    }

    vanished() {
      this.gone = true;
      setPhase(role(this.root, "phase"), "deleted");
      setText(role(this.root, "message"), "This job no longer exists.");
      role(this.root, "scale").hidden = true;
      role(this.root, "delete").disabled = true;
    }

    chart() {
      const svg = role(this.root, "chart");
      const width = 480;
      const height = 150;
      const left = 30;
      const right = 8;
      const top = 10;
      const bottom = 20;
      const now = Date.now() / 1000;
      const span = Math.max(now - this.samples[0].t, 10);
      const start = now - span;
      const peak = Math.max(1, ...this.samples.map((s) => Math.max(s.running, s.requested)));
      const x = (t) => left + ((t - start) / span) * (width - left - right);
      const y = (v) => top + (1 - v / peak) * (height - top - bottom);
      const make = (tag, attributes, text) => {
        const element = document.createElementNS(SVG, tag);
        for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
        if (text !== undefined) element.textContent = text;
        return element;
      };
      const steps = (key) => {
        let d = `M${x(this.samples[0].t).toFixed(1)},${y(this.samples[0][key]).toFixed(1)}`;
        for (const sample of this.samples.slice(1)) {
          d += `H${x(sample.t).toFixed(1)}V${y(sample[key]).toFixed(1)}`;
        }
        return `${d}H${x(now).toFixed(1)}`;
      };
      const minutes = Math.round(span / 60);
      svg.replaceChildren(
        make("line", { class: "grid", x1: left, x2: width - right, y1: y(peak), y2: y(peak) }),
        make("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }),
        make("text", { class: "label", x: left - 6, y: y(peak) + 4, "text-anchor": "end" }, String(peak)),
        make("text", { class: "label", x: left - 6, y: y(0) + 4, "text-anchor": "end" }, "0"),
        make("text", { class: "label", x: left, y: height - 4 }, minutes >= 1 ? `${minutes} min ago` : `${Math.round(span)} s ago`),
        make("text", { class: "label", x: width - right, y: height - 4, "text-anchor": "end" }, "now"),
        make("path", { class: "requested", d: steps("requested") }),
        make("path", { class: "running", d: steps("running") }),
      );
      svg.dataset.samples = String(this.samples.length);
      svg.dataset.running = String(this.samples[this.samples.length - 1].running);
    }

    async scale() {
      const form = role(this.root, "scale");
      const note = role(this.root, "scale-note");
      const wanted = Number.parseInt(form.elements.parallelism.value, 10);
      if (!Number.isInteger(wanted) || wanted < 0) {
        note.textContent = "give a whole number of workers, 0 or more";
        return;
      }
      note.textContent = "";
      try {
        const done = await api(jobPath("setJobScale", this.kind), {
          method: "POST",
          params: this.params({ parallelism: String(wanted) }),
        });
        note.textContent = done ? `asked for ${wanted} workers` : "this job cannot be scaled now";
        this.editing = false;
      } catch (error) {
        if (!(error instanceof SignedOut)) note.textContent = error.message;
      }
    }

    async remove() {
      const running = !TERMINAL.has(role(this.root, "phase").textContent);
      const ok = await confirmDialog(
        `Delete ${this.name}?`,
        running
          ? "The job is still running: its processes will be stopped. Its log is deleted with it."
          : "The job and its log will be deleted.",
      );
      if (!ok || this.stopped) return;
      try {
        await api(jobPath("deleteJob", this.kind), { method: "POST", params: this.params({ force: "true" }) });
      } catch (error) {
        if (error instanceof SignedOut) return;
        if (!(error instanceof ApiError && error.status === 404)) {
          setText(role(this.root, "message"), `Not deleted: ${error.message}`);
          return;
        }
      }
      location.hash = "#/";
    }

    // -- the log

    setLogState(text) {
      setText(role(this.root, "log-state"), text);
    }

    nearBottom() {
      return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 24;
    }

    onScroll() {
      this.stick = this.nearBottom();
      role(this.root, "follow").hidden = this.stick;
    }

    toBottom() {
      this.log.scrollTop = this.log.scrollHeight;
      this.stick = true;
      role(this.root, "follow").hidden = true;
    }

    lineElement(item) {
      const line = document.createElement("div");
      line.className = `line ${item.stream === "stderr" ? "stderr" : "stdout"}`;
      line.dataset.cursor = String(item.cursor);
      const proc = document.createElement("span");
      proc.className = "proc";
      proc.textContent = item.proc || "";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = item.text;
      line.append(proc, text);
      return line;
    }

    append(items) {
      if (!items.length) return;
      const stick = this.stick;
      const fragment = document.createDocumentFragment();
      for (const item of items) fragment.append(this.lineElement(item));
      this.lines.append(fragment);
      if (this.first === null) this.first = items[0].cursor;
      this.count += items.length;
      if (stick) {
        while (this.count > MAX_LINES && this.lines.firstChild) {
          this.lines.firstChild.remove();
          this.count -= 1;
          this.first = Number(this.lines.firstChild.dataset.cursor);
        }
        this.toBottom();
      } else {
        role(this.root, "follow").hidden = false;
      }
      this.updateEarlier();
    }

    updateEarlier() {
      role(this.root, "earlier").hidden = this.first === null || this.first <= 1;
    }

    async follow() {
      let delay = 500;
      while (!this.stopped) {
        const params = this.params({ heartbeat: "10" });
        if (this.last === null) params.tail = String(TAIL_LINES);
        else params.cursor = String(this.last);
        if (this.uid !== null) params.uid = this.uid;
        let ended = false;
        try {
          const response = await fetch(apiUrl(jobPath("streamLogs", this.kind), params), {
            signal: this.abort.signal,
            credentials: "same-origin",
            cache: "no-store",
          });
          if (response.status === 401) {
            signedOut();
            return;
          }
          if (response.status === 404) {
            this.setLogState("the job no longer exists");
            return;
          }
          if (!response.ok) throw new Error(`the server answered ${response.status}`);
          if (this.uid === null) this.uid = response.headers.get(UID_HEADER);
          this.setLogState("following");
          for await (const items of ndjson(response)) {
            const lines = [];
            for (const item of items) {
              if (typeof item.cursor === "number") this.last = item.cursor;
              if (item.end) {
                ended = true;
                this.setLogState(`ended: the job ${item.phase}`);
              } else if (!item.heartbeat) {
                lines.push(item);
              }
            }
            this.append(lines);
            delay = 500;
          }
        } catch (_error) {
          if (this.stopped) return;
        }
        if (ended || this.stopped) return;
        this.setLogState("reconnecting");
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }

    earlierParams(from) {
      const params = this.params({ cursor: String(from), follow: "false" });
      if (this.uid !== null) params.uid = this.uid;
      return params;
    }

    async loadEarlier() {
      const button = role(this.root, "earlier");
      if (button.disabled || this.first === null || this.first <= 1) return;
      button.disabled = true;
      const stop = this.first;
      const from = Math.max(0, stop - 1 - EARLIER_LINES);
      const controller = new AbortController();
      this.abort.signal.addEventListener("abort", () => controller.abort());
      const earlier = [];
      try {
        const response = await fetch(
          apiUrl(jobPath("streamLogs", this.kind), this.earlierParams(from)),
          { signal: controller.signal, credentials: "same-origin", cache: "no-store" },
        );
        if (!response.ok) throw new Error(`the server answered ${response.status}`);
        outer: for await (const items of ndjson(response)) {
          for (const item of items) {
            if (item.end || item.cursor >= stop) break outer;
            if (!item.heartbeat) earlier.push(item);
          }
        }
      } catch (_error) {
        if (this.stopped) return;
        button.disabled = false;
        return;
      } finally {
        controller.abort();
      }
      const before = this.log.scrollHeight;
      const fragment = document.createDocumentFragment();
      for (const item of earlier) fragment.append(this.lineElement(item));
      this.lines.prepend(fragment);
      this.log.scrollTop += this.log.scrollHeight - before;
      this.count += earlier.length;
      this.first = earlier.length ? earlier[0].cursor : from + 1;
      button.disabled = false;
      this.updateEarlier();
    }
  }

  // -- confirmation ------------------------------------------------------------------

  function confirmDialog(title, text) {
    const dialog = document.getElementById("confirm");
    setText(role(dialog, "title"), title);
    setText(role(dialog, "text"), text);
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
      role(dialog, "cancel").focus();
    });
  }

  // -- start -------------------------------------------------------------------------

  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  const expired = new URLSearchParams(location.search).get("login") === "expired";
  if (location.search) history.replaceState(null, "", location.pathname + location.hash);
  start(
    expired
      ? "That sign-in link was used already: each link works once. Sign in with the namespace " +
          "and its token, or restart the server for a new link."
      : undefined,
  );
})();
