// One deployment, live: a host x step grid filled by its events (server-sent, from seq 0, so
// the history and the live part are the same code), the batches (the canary first), each
// failure with its message, the rollback actions, and the pause/resume/abort/rollback buttons.
import { events, get, post } from "./api.js";
import { el, link, replace, text, when } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "rolled_back", "cancelled"]);
const CONFIRM = {
  abort: "Abort this rollout? No more hosts start; with on_failure: rollback the hosts it " +
    "switched are put back.",
  rollback: "Roll back every host this deployment switched to its previous release?",
};

export async function render(main, [id], signal) {
  const [meta, record] = await Promise.all([get("/ui/api/meta"),
    get(`/ui/api/deployments/${encodeURIComponent(id)}`)]);
  const canary = Number((record.rollout || {}).canary || 0);
  const columns = [...meta.steps];
  const hosts = new Map(); // host -> {row, cells: Map(step -> td), batch td, outcome td}
  const head = el("tr", {}, el("th", {}, "Host"), el("th", {}, "Batch"),
    columns.map((s) => el("th", { "data-step": s }, s)), el("th", {}, "Outcome"));
  const body = el("tbody");
  const state = el("span", { class: `status ${record.state}`, id: "state" }, record.state);
  const notes = el("ul", { id: "notes" });
  const failures = el("ul", { class: "failures", id: "failures" });
  const recoveries = el("ul", { id: "recoveries" });
  const buttons = {};
  for (const action of ["pause", "resume", "abort", "rollback"]) {
    buttons[action] = el("button", { type: "button", id: `action-${action}`, on: { click: () =>
      act(action) } }, action[0].toUpperCase() + action.slice(1));
  }
  const actionError = el("p", { class: "error", role: "alert", id: "action-error" });

  function setState(value) {
    state.textContent = value;
    state.className = `status ${value}`;
    const running = value === "running", paused = value === "paused";
    buttons.pause.disabled = !running;
    buttons.resume.disabled = !paused;
    buttons.abort.disabled = !(running || paused || value === "queued");
    buttons.rollback.disabled = !(running || paused || value === "succeeded");
  }

  async function act(action) {
    if (CONFIRM[action] && !window.confirm(CONFIRM[action])) return;
    actionError.textContent = "";
    try {
      const answer = await post(`/v1/deployments/${encodeURIComponent(id)}/${action}`);
      if (action === "rollback") location.hash = `#/deployments/${encodeURIComponent(answer.id)}`;
    } catch (error) {
      actionError.textContent = `${action}: ${error.message}`;
    }
  }

  function column(step) {
    if (columns.includes(step)) return;
    columns.push(step); // a recovery action (rollback, undo, ...): a column of its own
    head.lastChild.before(el("th", { "data-step": step }, step));
    for (const h of hosts.values()) h.outcome.before(h.cells.get(step) || newCell(h, step));
  }

  function newCell(h, step) {
    const td = el("td", { class: "cell pending", "data-step": step }, "");
    h.cells.set(step, td);
    return td;
  }

  function host(name) {
    let h = hosts.get(name);
    if (h) return h;
    h = { cells: new Map() };
    h.batch = el("td", { class: "batch" }, "");
    h.outcome = el("td", { class: "outcome" }, "");
    h.row = el("tr", { "data-host": name }, el("td", {}, name), h.batch,
      columns.map((s) => newCell(h, s)), h.outcome);
    hosts.set(name, h);
    body.append(h.row);
    return h;
  }

  function cell(name, step, status) {
    column(step);
    const td = host(name).cells.get(step);
    td.textContent = status;
    td.className = `cell ${status}`;
  }

  function onEvent(kind, e) {
    if (kind === "step" || kind === "recovery") {
      if (e.host && e.step) cell(e.host, e.step, e.status);
      if (kind === "recovery") recoveries.append(el("li", {}, `${when(e.ts)} ${text(e.host)} `
        + `${e.step} ${e.status}`, e.error || e.reason ? `: ${e.error || e.reason}` : ""));
      if (e.status === "failed") failures.append(el("li", { "data-host": e.host },
        el("strong", {}, `${text(e.host)} ${e.step}: `), text(e.error || e.reason || e.message)));
    } else if (kind === "rollout.preflight" && e.status === "started") {
      for (const name of e.hosts || []) host(name); // every target, before any starts
    } else if (kind === "batch" && e.status === "started") {
      for (const name of e.hosts || []) {
        host(name).batch.textContent = e.batch === 0 && canary > 0 ? "canary" : `batch ${e.batch}`;
      }
    } else if (kind === "host.finished" && e.host) {
      const h = host(e.host);
      h.outcome.textContent = e.status;
      h.outcome.className = `outcome status ${e.status}`;
    } else if (kind === "deployment" && e.status) {
      setState(e.status);
      if (e.reason) notes.append(el("li", {}, `${e.status}: ${e.reason}`));
    } else if (["rollout", "pause", "resume", "abort", "rollback"].includes(kind)) {
      notes.append(el("li", { class: e.level === "error" ? "error" : "" },
        `${when(e.ts)} ${kind} ${text(e.status)}`, e.reason ? `: ${e.reason}` : ""));
    }
  }

  for (const [name, entry] of Object.entries(record.hosts)) {
    for (const s of entry.steps) cell(name, s.step, s.state);
  }
  setState(record.state);
  replace(main, el("h1", {}, "Deployment ", id),
    el("p", {}, "App ", link(["apps", record.app], record.app), " · state ", state,
      " · targets ", record.targets.join(", "), " · started ", when(record.created)),
    el("div", { class: "actions" }, Object.values(buttons)), actionError,
    el("table", { id: "grid" }, el("thead", {}, head), body),
    el("h2", {}, "Failures"), failures, el("h2", {}, "Rollout"), notes,
    el("h2", {}, "Rollback actions"), recoveries);

  // Rebuilt from the events: clear what the snapshot showed so no cell is counted twice.
  failures.replaceChildren();
  let after = 0;
  while (!signal.aborted) {
    let lagged = null;
    const last = await events(`/ui/api/deployments/${encodeURIComponent(id)}/stream?after=${after}`,
      (kind, e) => {
        if (kind === "lagged") { lagged = e.after; return; }
        if (kind === "end") return;
        if (typeof e.seq === "number") after = Math.max(after, e.seq);
        onEvent(kind, e);
      }, signal);
    if (lagged !== null) { after = lagged; continue; }
    if (last !== null) after = Math.max(after, last);
    if (FINAL.has(state.textContent)) return;
    await new Promise((resolve) => setTimeout(resolve, 1000)); // the daemon restarted: again
  }
}
