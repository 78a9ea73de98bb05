// One app: its latency per host over time (deploy and each re-verification, the baseline
// marked), the release each host serves with its last verification, each release's manifest
// as the hosts hold it, and its deployments.
import { get } from "./api.js";
import { el, link, replace, text, when } from "./dom.js";
import { latencyChart } from "./chart.js";

// The hosts' words for a release's state (hostops_releases.py), as this page says them.
const STATES = { "previous-good": "rollback target" };
const HASHES = ["lock_sha256", "env_hash", "model_sha256", "golden_sha256"];

function hash(value) { // the first 12 digits shown, the whole one on hover (and for tests)
  return value ? el("code", { title: value }, String(value).slice(0, 12)) : "—";
}

function factsAtDeploy(facts) {
  if (!facts) return el("span", { class: "muted" }, "—");
  return el("div", {}, ["driver", "cuda", "python", "os", "hostname"].filter((k) => facts[k])
    .map((k) => el("span", { class: "tag", "data-fact": k }, `${k} ${text(facts[k])}`)),
  (Array.isArray(facts.gpus) ? facts.gpus : []).map((g) => el("span", { class: "tag" }, text(g))));
}

// Asked of the hosts themselves (the daemon reads each release's manifest.json over SSH), so
// filled in after the rest of the page: [{release, state, hashes, facts at deploy, GPUs}].
async function manifests(app, hosts, body) {
  const query = hosts.map((h) => `host=${encodeURIComponent(h)}`).join("&");
  const found = await get(`/v1/apps/${encodeURIComponent(app)}/releases?${query}`);
  body.replaceChildren(...Object.entries(found).sort().flatMap(([host, answer]) => {
    if (answer.error) {
      return [el("tr", { "data-host": host }, el("td", {}, host),
        el("td", { class: "error", colspan: 9 }, text(answer.error)))];
    }
    return answer.releases.slice().reverse().map((r) => el("tr", { "data-host": host,
      "data-release": r.release_id, "data-state": r.state }, el("td", {}, host),
    el("td", {}, r.release_id),
    el("td", { class: `status ${r.state.replace("-", "_")}` }, STATES[r.state] || r.state),
    el("td", {}, when(r.created)),
    HASHES.map((k) => el("td", { "data-key": k }, hash(r[k]))),
    el("td", {}, factsAtDeploy(r.facts)),
    el("td", {}, r.gpus && r.gpus.length ? r.gpus.map((u) => el("div", {}, el("code", {}, u)))
      : el("span", { class: "muted" }, "none"))));
  }));
}

export async function render(main, [app], signal) {
  const name = encodeURIComponent(app);
  const [history, fleet, deployments] = await Promise.all([
    get(`/ui/api/apps/${name}`), get("/ui/api/fleet"),
    get(`/v1/deployments?app=${name}&limit=100`)]);
  const charts = Object.entries(history.latency).sort().map(([host, points]) =>
    el("figure", { "data-host": host }, el("figcaption", {}, host), latencyChart(points),
      el("table", {}, el("thead", {}, el("tr", {}, ["When", "Kind", "Release", "p50 ms",
        "p95 ms", "p99 ms", "Golden"].map((h) => el("th", {}, h)))),
      el("tbody", {}, points.map((p) => el("tr", {}, el("td", {}, when(p.ts)),
        el("td", {}, p.kind), el("td", {}, text(p.release)),
        ["p50_ms", "p95_ms", "p99_ms"].map((q) => el("td", {}, p[q].toFixed(3))),
        el("td", {}, text(p.golden))))))));
  const byHost = new Map(fleet.hosts.map((h) => [h.host, h]));
  const releaseRows = Object.entries(history.releases).flatMap(([host, list]) => list.map((r) => {
    const h = byHost.get(host) || { status: "unknown" };
    const result = r.state === "current" ? history.results[host] || {} : {};
    return el("tr", { "data-host": host, "data-state": r.state }, el("td", {}, host),
      el("td", {}, text(r.release)), el("td", { class: `status ${r.state.replace(" ", "_")}` }, r.state),
      el("td", {}, link(["deployments", r.deployment], r.deployment)), el("td", {}, when(r.ts)),
      el("td", { class: `status ${h.status}` }, h.status),
      el("td", {}, result.status ? `${result.status} ${(result.reasons || []).join("; ")}` : "—"));
  }));
  const manifestBody = el("tbody", {}, el("tr", {}, el("td", { colspan: 10, class: "muted" },
    "asking the hosts…")));
  const manifestTable = el("table", { id: "manifests" }, el("thead", {}, el("tr", {},
    ["Host", "Release", "State", "Created", "Lock", "Env", "Model", "Golden",
      "Facts at deploy", "GPUs (UUID)"].map((h) => el("th", {}, h)))), manifestBody);
  replace(main, el("h1", {}, "App ", app),
    el("h2", {}, "Latency"),
    charts.length ? el("div", { class: "charts", id: "charts" }, charts)
      : el("p", { class: "muted" }, "no verified latency yet"),
    el("h2", {}, "Releases by deployment (what this daemon recorded)"),
    el("table", { id: "releases" }, el("thead", {}, el("tr", {}, ["Host", "Release", "State",
      "Deployment", "When", "Host status", "Last re-verification"].map((h) => el("th", {}, h)))),
    el("tbody", {}, releaseRows)),
    el("h2", {}, "Releases on the hosts, with their manifests"), manifestTable,
    el("h2", {}, "Deployments"),
    el("ul", {}, deployments.map((d) => el("li", {}, link(["deployments", d.id], d.id), " ",
      el("span", { class: `status ${d.state}` }, d.state), " ", when(d.created),
      d.result && d.result.release_id ? ` release ${d.result.release_id}` : ""))));
  const hosts = [...new Set([...Object.keys(history.releases), ...Object.keys(history.latency)])];
  if (!hosts.length) {
    manifestBody.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "muted" },
      "no host has a release of this app from this daemon")));
    return;
  }
  try {
    await manifests(app, hosts.sort(), manifestBody);
  } catch (error) {
    if (error.name === "AbortError" || signal.aborted) return;
    manifestBody.replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "error" },
      `the hosts' releases: ${error.message}`)));
  }
}
