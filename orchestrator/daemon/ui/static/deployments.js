// Deployments: the newest first, with state, app, targets, start and duration.
import { get } from "./api.js";
import { duration, el, link, replace, text, when } from "./dom.js";

export async function render(main, _args, _signal) {
  const rows = await get("/v1/deployments?limit=200");
  replace(main, el("h1", {}, "Deployments"), el("table", { id: "deployments" },
    el("thead", {}, el("tr", {}, ["Deployment", "App", "State", "Targets", "Started",
      "Duration", "Result"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((d) => el("tr", { "data-deployment": d.id },
      el("td", {}, link(["deployments", d.id], d.id)), el("td", {}, link(["apps", d.app], d.app)),
      el("td", { class: `status ${d.state}` }, d.state), el("td", {}, d.targets.join(", ")),
      el("td", {}, when(d.created)), el("td", {}, duration(d.updated - d.created)),
      el("td", {}, text(d.result && d.result.reason)))))));
}
