// The dashboard of byzctl serve: plain JS over the REST API, polled every second.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("byzctl-token");
let selected = null;

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${token}` });
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401) { signOut(); throw new Error("signed out"); }
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(typeof body === "object" ? JSON.stringify(body.detail) : body);
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function signOut() {
  token = null;
  sessionStorage.removeItem("byzctl-token");
  $("main").classList.add("hidden");
  $("signin").classList.remove("hidden");
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  const r = await fetch("/auth/token", { method: "POST", body: new URLSearchParams(new FormData(ev.target)) });
  const body = await r.json();
  if (!r.ok) { $("signin-error").textContent = body.detail; return; }
  token = body.access_token;
  sessionStorage.setItem("byzctl-token", token);
  show();
});

$("signout").addEventListener("click", signOut);

$("new-session").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("start-error").textContent = "";
  const form = new FormData();
  const lines = $("overrides").value.split("\n").map((s) => s.trim()).filter(Boolean);
  form.append("overrides", JSON.stringify(lines));
  if ($("dataset").files.length) form.append("dataset", $("dataset").files[0]);
  try {
    const s = await api("/sessions", { method: "POST", body: form });
    selected = s.id;
    refresh();
  } catch (e) {
    $("start-error").textContent = e.message;
  }
});

async function act(id, what) {
  try { await api(`/sessions/${id}/${what}`, { method: "POST" }); } catch (e) { alert(e.message); }
  refresh();
}

function drawCurve(points) {
  const c = $("curve"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 40, B = 24;
  g.clearRect(0, 0, W, H);
  g.strokeStyle = "#999"; g.fillStyle = "#555"; g.font = "11px sans-serif";
  g.beginPath(); g.moveTo(L, 8); g.lineTo(L, H - B); g.lineTo(W - 8, H - B); g.stroke();
  for (const y of [0, 0.5, 1]) g.fillText(y.toFixed(1), 8, 8 + (1 - y) * (H - B - 8) + 4);
  c.dataset.points = String(points.length);
  if (!points.length) return;
  const maxR = Math.max(...points.map((p) => p[0]), 1);
  g.fillText(`round ${maxR}`, W - 70, H - 6);
  g.strokeStyle = "#0a58ca"; g.lineWidth = 2; g.beginPath();
  points.forEach(([r, acc], i) => {
    const x = L + (r / maxR) * (W - L - 12), y = 8 + (1 - acc) * (H - B - 8);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#0a58ca";
  for (const [r, acc] of points) {
    g.beginPath(); g.arc(L + (r / maxR) * (W - L - 12), 8 + (1 - acc) * (H - B - 8), 3, 0, 7); g.fill();
  }
}

async function refresh() {
  if (!token) return;
  const [agents, sessions] = await Promise.all([api("/agents"), api("/sessions")]);
  const now = Date.now() / 1000;
  const ab = $("agents").tBodies[0];
  ab.replaceChildren();
  for (const a of agents) {
    const row = ab.insertRow();
    row.dataset.name = a.name;
    cell(row, a.name); cell(row, a.state, `state state-${a.state}`); cell(row, `${a.host}:${a.port}`);
    cell(row, a.session ? `${a.session} (node ${a.nodes.join(", ")})` : "");
    cell(row, `${Math.max(0, now - a.last_heartbeat).toFixed(0)} s ago`);
  }
  const online = agents.filter((a) => a.online).length, idle = agents.filter((a) => a.state === "IDLE").length;
  $("agents-summary").textContent = `${online} online, ${idle} idle`;

  const sb = $("sessions").tBodies[0];
  sb.replaceChildren();
  if (!selected && sessions.length) selected = sessions[0].id;
  for (const s of sessions) {
    const row = sb.insertRow();
    row.dataset.id = s.id;
    if (s.id === selected) row.classList.add("selected");
    row.addEventListener("click", () => { selected = s.id; refresh(); });
    cell(row, s.id); cell(row, s.owner); cell(row, s.state, `state state-${s.state}`);
    const bar = cell(row, "");
    bar.innerHTML = `<span class="bar"><span style="width:${Math.round(100 * s.rounds_done / Math.max(1, s.rounds))}%"></span></span> ${s.rounds_done}/${s.rounds}`;
    cell(row, s.test_accuracy == null ? "" : s.test_accuracy.toFixed(3));
    cell(row, s.dataset);
    const actions = cell(row, "");
    if (s.state === "RUNNING" || s.state === "INTERRUPTED" || s.state === "FAILED") {
      const b = document.createElement("button");
      b.textContent = s.state === "RUNNING" ? "Stop" : "Resume";
      b.className = s.state === "RUNNING" ? "stop" : "resume";
      b.addEventListener("click", (ev) => { ev.stopPropagation(); act(s.id, s.state === "RUNNING" ? "stop" : "resume"); });
      actions.appendChild(b);
    }
  }
  if (selected) {
    const d = await api(`/sessions/${selected}`);
    $("detail-id").textContent = d.id;
    $("detail-state").textContent = d.state;
    $("detail-state").className = `state-${d.state}`;
    $("detail-reason").textContent = d.reason || "";
    drawCurve(d.curve);
    const nb = $("nodes").tBodies[0];
    nb.replaceChildren();
    for (const [id, n] of Object.entries(d.nodes)) {
      const row = nb.insertRow();
      cell(row, id); cell(row, n.round);
      cell(row, n.test_accuracy == null ? "" : n.test_accuracy.toFixed(3));
      cell(row, n.test_loss == null ? "" : n.test_loss.toFixed(4));
    }
  }
}

async function show() {
  $("signin").classList.add("hidden");
  $("main").classList.remove("hidden");
  try { const me = await api("/me"); $("who").textContent = `— ${me.name}${me.admin ? " (admin)" : ""}`; } catch (e) { return; }
  refresh();
}

setInterval(() => { refresh().catch(() => {}); }, 1000);
if (token) show();
