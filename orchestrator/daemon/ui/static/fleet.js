// Fleet: every host with its status, GPU stack, releases and last verification; filtered by
// label (key=value) and group, in the page (the daemon sends the fleet once).
import { get } from "./api.js";
import { el, link, replace, text, when } from "./dom.js";

const FIRST_ROWS = 50, CHUNK_ROWS = 100;

function gib(bytes) { return typeof bytes === "number" ? `${(bytes / 2 ** 30).toFixed(0)} GiB` : ""; }

function gpus(host) {
  if (!host.gpus.length) return el("span", { class: "muted" }, host.nvml_error || "no GPU");
  return el("ul", { class: "gpus" }, host.gpus.map((g) => el("li", {},
    `${text(g.name)} ${gib(g.memory_total_bytes)} cc ${text(g.compute_capability)}`,
    Object.entries(g.extra || {}).map(([k, v]) => el("span", { class: "tag" }, `${k}: ${text(v)}`)))));
}

function releases(host) {
  const apps = Object.entries(host.releases);
  if (!apps.length) return el("span", { class: "muted" }, "none");
  return el("ul", {}, apps.map(([app, release]) =>
    el("li", {}, link(["apps", app], app), " ", text(release))));
}

function row(host) {
  const reasons = host.reasons.length ? el("ul", { class: "reasons" },
    host.reasons.map((r) => el("li", {}, r))) : el("span", { class: "muted" }, "—");
  return el("tr", { "data-host": host.host },
    el("td", {}, host.host,
      el("div", {}, Object.entries(host.labels).map(([k, v]) => el("span", { class: "tag" }, `${k}=${v}`)),
        host.groups.map((g) => el("span", { class: "tag" }, `group ${g}`)))),
    el("td", { class: `status ${host.status}` }, host.status),
    el("td", {}, text(host.driver)), el("td", {}, text(host.cuda)),
    el("td", {}, gpus(host)), el("td", {}, releases(host)),
    el("td", {}, when(host.verified)), el("td", {}, reasons));
}

export function matches(host, label, group) {
  if (group && !host.groups.includes(group)) return false;
  if (!label) return true;
  return label.split(",").every((part) => {
    const [key, value] = part.split("=").map((s) => s.trim());
    return value === undefined ? key in host.labels : host.labels[key] === value;
  });
}

export async function render(main, _args, signal) {
  const data = await get("/ui/api/fleet");
  const body = el("tbody");
  const label = el("input", { id: "filter-label", placeholder: "zone=a" });
  const group = el("select", { id: "filter-group" }, el("option", { value: "" }, "every group"),
    data.groups.map((g) => el("option", { value: g }, g)));
  const count = el("span", { class: "muted", id: "host-count" });
  // The first screenful at once, the rest in chunks after it is painted: a thousand rows laid
  // out in one go kept the page blank for seconds on a busy machine.
  let generation = 0;
  const fill = () => {
    performance.mark("fleet-rows");
    const mine = ++generation;
    const shown = data.hosts.filter((h) => matches(h, label.value.trim(), group.value));
    body.replaceChildren(...shown.slice(0, FIRST_ROWS).map(row));
    count.textContent = `${shown.length} of ${data.hosts.length} hosts`;
    performance.mark("fleet-first-rows");
    const more = (from) => {
      if (mine !== generation || signal.aborted || from >= shown.length) {
        performance.measure("fleet-rows", "fleet-rows"); // every row built: for the bench
        return;
      }
      body.append(...shown.slice(from, from + CHUNK_ROWS).map(row));
      setTimeout(() => more(from + CHUNK_ROWS), 0);
    };
    requestAnimationFrame(() => {
      performance.mark("fleet-first-paint"); // the frame that shows the first rows: the bench
      setTimeout(() => more(FIRST_ROWS), 0);
    });
  };
  label.addEventListener("input", fill);
  group.addEventListener("change", fill);
  fill();
  replace(main, el("h1", {}, "Fleet"),
    el("div", { class: "filters" }, el("label", {}, "Label ", label),
      el("label", {}, "Group ", group), count),
    el("table", { id: "fleet" }, el("thead", {}, el("tr", {}, ["Host", "Status", "Driver", "CUDA",
      "GPUs", "Releases", "Last verification", "Reasons"].map((h) => el("th", {}, h)))), body));
}
