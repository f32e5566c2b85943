// Flotilla's web page: sign in, watch your clusters, create, scale, read logs, stop;
// admins see every user's clusters and usage. No framework and no build step. Everything
// shown is set as text (textContent, never HTML), and the page's Content-Security-Policy
// allows only this script.

const $ = (id) => document.getElementById(id);

// Every API call says it comes from this page: a denial then has no Basic challenge
// (no browser dialog) and says how to sign in.
const WEB_HEADER = { "x-flotilla-web": "1" };
const ACTIVE = new Set(["PENDING", "RUNNING", "STOPPING"]);

const state = {
  me: null, // {user, groups, admin}
  clusters: new Map(), // name -> the registry's web report
  events: null, // EventSource
  options: [], // the options spec
};

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, credentials: "same-origin", headers: { ...WEB_HEADER, ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401 && path !== "/api/v1/login") {
      // The session ended: ask auth how to sign in again.
      start();
    }
    throw new ApiError(response.status, message, data);
  }
  return data;
}

function announce(text) {
  $("announce").textContent = text;
}

function show(id, visible = true) {
  $(id).hidden = !visible;
}

// -- signing in -------------------------------------------------------------------------

function basicCredentials(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return `Basic ${btoa(binary)}`;
}

async function start() {
  try {
    const me = await api("/api/v1/login");
    await signedIn(me);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signedOut(err.body && err.body.login);
    } else {
      $("loading").textContent = `The gateway did not answer: ${err.message}`;
    }
  }
}

function signedOut(login) {
  if (state.events) {
    state.events.close();
    state.events = null;
  }
  state.me = null;
  for (const id of ["loading", "clusters", "new-cluster", "admin", "logs", "who", "sign-out"]) {
    show(id, false);
  }
  show("sign-in");
  const kind = (login && login.kind) || "form";
  show("sign-in-form", kind === "form");
  show("sign-in-other", kind !== "form");
  const button = $("sign-in-button");
  button.textContent = (login && login.label) || "Sign in";
  button.onclick = async () => {
    if (kind === "redirect" && login.url) {
      window.location.assign(login.url);
      return;
    }
    await signInWith({}); // the browser answers a Negotiate challenge itself
  };
  if (kind === "none") {
    $("sign-in-error").textContent = "This gateway offers no sign-in from a browser.";
    show("sign-in-other", false);
  } else if (kind === "form") {
    $("username").focus();
  }
}

async function signInWith(headers) {
  $("sign-in-error").textContent = "";
  try {
    const me = await api("/api/v1/login", { headers });
    await signedIn(me);
  } catch (err) {
    $("sign-in-error").textContent =
      err.status === 401 ? "Sign-in failed: check your user name and password." : err.message;
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("username").value.trim();
  await signInWith({ Authorization: basicCredentials(user, $("password").value) });
  $("password").value = "";
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api("/api/v1/logout", { method: "POST", body: {} });
  } finally {
    // Auth says how to sign in again (a form, a hub's button, ...).
    await start();
  }
});

async function signedIn(me) {
  state.me = me;
  state.clusters.clear();
  show("sign-in", false);
  show("loading", false);
  $("who").textContent = `Signed in as ${me.user}${me.admin ? " (admin)" : ""}`;
  show("who");
  show("sign-out");
  show("clusters");
  show("admin", me.admin);
  announce(`Signed in as ${me.user}`);
  await loadOptions();
  watch();
}

// -- the live list ----------------------------------------------------------------------

function watch() {
  const url = state.me.admin ? "/api/v1/events?all_users=1" : "/api/v1/events";
  const events = new EventSource(url);
  state.events = events;
  events.addEventListener("clusters", (event) => {
    for (const c of JSON.parse(event.data)) {
      const before = state.clusters.get(c.name);
      if (before && before.status !== c.status && c.owner === state.me.user) {
        announce(`Cluster ${c.name} is ${c.status.toLowerCase()}`);
      }
      state.clusters.set(c.name, c);
    }
    render();
  });
  events.addEventListener("error", async () => {
    // A dropped stream reconnects by itself; an expired session does not.
    if (events.readyState === EventSource.CLOSED) {
      try {
        await api("/api/v1/login");
        watch();
      } catch {
        /* signedOut() has run */
      }
    }
  });
}

function age(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

function bytes(n) {
  if (!n) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

function button(label, name, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute("aria-label", `${label} ${name}`);
  b.addEventListener("click", onClick);
  return b;
}

function actionsFor(c, { scale }) {
  const td = document.createElement("td");
  td.className = "actions";
  const running = c.status === "RUNNING";
  if (running && c.dashboard_route) {
    const a = document.createElement("a");
    a.href = c.dashboard_route;
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = "Dashboard";
    a.setAttribute("aria-label", `Dashboard of ${c.name}`);
    td.append(a);
  }
  if (running && scale) {
    const input = document.createElement("input");
    input.type = "number";
    input.min = "0";
    input.value = String(c.requested_workers);
    input.id = `scale-${c.name}`;
    input.setAttribute("aria-label", `Workers for ${c.name}`);
    input.className = "scale";
    td.append(input, button("Scale", c.name, () => scaleCluster(c.name, input.value)));
  }
  td.append(button("Logs", c.name, () => showLogs(c.name)));
  if (ACTIVE.has(c.status) && c.status !== "STOPPING") {
    td.append(button("Stop", c.name, () => stopCluster(c.name)));
  }
  return td;
}

function clusterRow(c, { owner, scale }) {
  const tr = document.createElement("tr");
  tr.dataset.cluster = c.name;
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = c.name;
  tr.append(th);
  if (owner) cell(tr, c.owner);
  const status = cell(tr, c.status);
  status.className = `status status-${c.status.toLowerCase()}`;
  if (c.reason) status.title = c.reason;
  cell(tr, ACTIVE.has(c.status) ? `${c.running_workers}/${c.requested_workers}` : "-");
  cell(tr, c.cores ? String(c.cores) : "-");
  cell(tr, bytes(c.memory));
  cell(tr, age(c.start_time));
  tr.append(actionsFor(c, { scale }));
  return tr;
}

function render() {
  const mine = [...state.clusters.values()]
    .filter((c) => c.owner === state.me.user)
    .sort((a, b) => b.start_time - a.start_time);
  $("cluster-rows").replaceChildren(...mine.map((c) => clusterRow(c, { owner: false, scale: true })));
  show("cluster-table", mine.length > 0);
  show("no-clusters", mine.length === 0);
  if (state.me.admin) {
    const all = [...state.clusters.values()]
      .filter((c) => ACTIVE.has(c.status))
      .sort((a, b) => a.owner.localeCompare(b.owner) || a.name.localeCompare(b.name));
    $("admin-rows").replaceChildren(...all.map((c) => clusterRow(c, { owner: true, scale: false })));
    refreshUsage();
  }
}

let usageTimer = null;
function refreshUsage() {
  if (usageTimer !== null) return;
  usageTimer = setTimeout(async () => {
    usageTimer = null;
    try {
      const { usage } = await api("/api/v1/usage?all_users=1");
      $("usage-rows").replaceChildren(
        ...usage.map((u) => {
          const tr = document.createElement("tr");
          const th = document.createElement("th");
          th.scope = "row";
          th.textContent = u.user;
          tr.append(th);
          const q = u.quota || {};
          const of = (value, limit, fmt = String) =>
            limit === null || limit === undefined ? fmt(value) : `${fmt(value)} of ${fmt(limit)}`;
          cell(tr, of(u.clusters, q.max_clusters));
          cell(tr, of(u.cores, q.max_cores));
          cell(tr, of(u.memory, q.max_memory, bytes));
          cell(tr, of(u.workers, q.max_workers));
          cell(tr, u.core_hours.toFixed(2));
          return tr;
        }),
      );
    } catch (err) {
      $("action-error").textContent = err.message;
    }
  }, 300);
}

setInterval(() => state.me && render(), 10000); // ages

// -- actions ----------------------------------------------------------------------------

async function act(what) {
  $("action-error").textContent = "";
  try {
    await what();
  } catch (err) {
    $("action-error").textContent = err.message;
  }
}

function scaleCluster(name, value) {
  return act(async () => {
    const count = Number(value);
    if (!Number.isInteger(count) || count < 0) {
      throw new Error("The number of workers must be a whole number, 0 or more.");
    }
    const result = await api(`/api/v1/clusters/${encodeURIComponent(name)}/scale`, {
      method: "POST",
      body: { count },
    });
    announce(result && result.msg ? result.msg : `Scaling ${name} to ${count} workers`);
    if (result && result.msg) $("action-error").textContent = result.msg;
  });
}

function stopCluster(name) {
  return act(async () => {
    await api(`/api/v1/clusters/${encodeURIComponent(name)}`, { method: "DELETE" });
    announce(`Stopping ${name}`);
  });
}

function showLogs(name) {
  return act(async () => {
    const path = `/api/v1/clusters/${encodeURIComponent(name)}`;
    const [{ logs }, { workers }] = await Promise.all([api(`${path}/logs`), api(`${path}/workers`)]);
    // Why workers failed comes first: it is what one opens the logs to find.
    const failed = (workers || []).filter((w) => w.status === "FAILED");
    const parts = failed.length
      ? [`==> failed workers <==\n${failed.map((w) => `${w.name}: ${w.reason || "no reason known"}`).join("\n")}\n`]
      : [];
    parts.push(...Object.entries(logs || {}).map(([process, text]) => `==> ${process} <==\n${text}`));
    $("logs-title").textContent = `Logs of ${name}`;
    $("logs-text").textContent = parts.join("\n") || "No logs yet.";
    show("logs");
    $("logs-text").focus();
  });
}

$("logs-close").addEventListener("click", () => show("logs", false));

// -- the new-cluster form, from the options spec ----------------------------------------

async function loadOptions() {
  const { cluster_options: spec } = await api("/api/v1/options");
  state.options = spec;
  const fields = spec.map(optionField);
  $("option-fields").replaceChildren(...fields);
  show("new-cluster");
}

function optionField(option) {
  const { field, label, default: value, spec } = option;
  const wrap = document.createElement("div");
  wrap.className = "field";
  const id = `option-${field}`;
  const lab = document.createElement("label");
  lab.htmlFor = id;
  lab.textContent = label || field;
  let input;
  if (spec.type === "select") {
    input = document.createElement("select");
    for (const choice of spec.options) {
      const o = document.createElement("option");
      o.value = choice;
      o.textContent = choice;
      o.selected = choice === value;
      input.append(o);
    }
  } else if (spec.type === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(value);
  } else if (spec.type === "mapping") {
    input = document.createElement("textarea");
    input.rows = 3;
    input.value = Object.entries(value || {})
      .map(([k, v]) => `${k}=${v}`)
      .join("\n");
    input.placeholder = "NAME=value, one per line";
  } else {
    input = document.createElement("input");
    input.type = spec.type === "int" || spec.type === "float" ? "number" : "text";
    if (spec.type === "int") input.step = "1";
    if (spec.type === "float") input.step = "any";
    if (spec.min !== undefined && spec.min !== null) input.min = String(spec.min);
    if (spec.max !== undefined && spec.max !== null) input.max = String(spec.max);
    input.value = value === null || value === undefined ? "" : String(value);
  }
  input.id = id;
  input.name = field;
  input.dataset.type = spec.type;
  const message = document.createElement("p");
  message.id = `${id}-message`;
  message.className = "error field-message";
  input.setAttribute("aria-describedby", message.id);
  wrap.append(lab, input, message);
  return wrap;
}

function optionValue(input) {
  const type = input.dataset.type;
  if (type === "bool") return input.checked;
  if (type === "int" || type === "float") return input.value === "" ? null : Number(input.value);
  if (type === "mapping") {
    const out = {};
    for (const line of input.value.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at < 1) throw new FieldError(input.name, `${input.name}: write each entry as NAME=value`);
      out[line.slice(0, at).trim()] = line.slice(at + 1);
    }
    return out;
  }
  return input.value;
}

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

function clearFieldMessages() {
  for (const el of document.querySelectorAll(".field-message")) el.textContent = "";
  for (const el of document.querySelectorAll("#option-fields [aria-invalid]")) {
    el.removeAttribute("aria-invalid");
  }
  $("create-error").textContent = "";
}

function fieldMessage(field, message) {
  const input = $(`option-${field}`);
  if (!input) return false;
  input.setAttribute("aria-invalid", "true");
  $(`option-${field}-message`).textContent = message;
  input.focus();
  return true;
}

// The gateway's validation messages name the field first ("worker_cores must be <= 4")
// or last ("... is not a valid option for profile").
function fieldOf(message) {
  for (const { field } of state.options) {
    if (message.startsWith(`${field} `) || message.endsWith(` ${field}`)) return field;
  }
  return null;
}

$("new-cluster-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldMessages();
  const options = {};
  try {
    for (const { field } of state.options) options[field] = optionValue($(`option-${field}`));
  } catch (err) {
    if (!(err instanceof FieldError) || !fieldMessage(err.field, err.message)) {
      $("create-error").textContent = err.message;
    }
    return;
  }
  $("create").disabled = true;
  try {
    const { name } = await api("/api/v1/clusters/", {
      method: "POST",
      body: { cluster_options: options },
    });
    announce(`Cluster ${name} created; starting`);
  } catch (err) {
    const field = err.status === 422 ? fieldOf(err.message) : null;
    if (!field || !fieldMessage(field, err.message)) $("create-error").textContent = err.message;
  } finally {
    $("create").disabled = false;
  }
});

start();
