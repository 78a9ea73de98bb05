// One app: its latency per host over time (deploy and each re-verification, the baseline
// marked), the release each host serves with its last verification, and its deployments.
import { get } from "./api.js";
import { el, link, replace, text, when } from "./dom.js";
import { latencyChart } from "./chart.js";

export async function render(main, [app], _signal) {
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
  replace(main, el("h1", {}, "App ", app),
    el("h2", {}, "Latency"),
    charts.length ? el("div", { class: "charts", id: "charts" }, charts)
      : el("p", { class: "muted" }, "no verified latency yet"),
    el("h2", {}, "Releases"),
    el("table", { id: "releases" }, el("thead", {}, el("tr", {}, ["Host", "Release", "State",
      "Deployment", "When", "Host status", "Last re-verification"].map((h) => el("th", {}, h)))),
    el("tbody", {}, releaseRows)),
    el("h2", {}, "Deployments"),
    el("ul", {}, deployments.map((d) => el("li", {}, link(["deployments", d.id], d.id), " ",
      el("span", { class: `status ${d.state}` }, d.state), " ", when(d.created),
      d.result && d.result.release_id ? ` release ${d.result.release_id}` : ""))));
}
