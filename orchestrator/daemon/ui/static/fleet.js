// Fleet: every host with its status, GPU stack, releases (each app's last re-verification
// there) and last verification; filtered by label (key=value) and group, in the page (the
// daemon sends the first screenful, then the rest once).
import { get } from "./api.js";
import { el, link, replace, text, when } from "./dom.js";

const FIRST_ROWS = 50, CHUNK_ROWS = 100;

function gib(bytes) { return typeof bytes === "number" ? `${(bytes / 2 ** 30).toFixed(0)} GiB` : ""; }

function gpus(host) {
  if (!host.gpus.length) return el("span", { class: "muted" }, host.nvml_error || "no GPU");
  return el("ul", { class: "gpus" }, host.gpus.map((g) => el("li", {},
    `${text(g.name)} ${gib(g.memory_total_bytes)} cc ${text(g.compute_capability)}`,
    Object.entries(g.extra || {}).map(([k, v]) => v !== null && typeof v === "object"
      // A structured fact (the probe's per-GPU health: dozens of counters) folded away, so a
      // row stays one screen line high; opened, it is the same text.
      ? el("details", { class: "tag" }, el("summary", {}, k), text(v))
      : el("span", { class: "tag" }, `${k}: ${text(v)}`)))));
}

// Each app the host serves (from its last probe) or was re-verified for, with that app's own
// last re-verification there: status, when, and its reasons.
function releases(host) {
  const apps = [...new Set([...Object.keys(host.releases), ...Object.keys(host.reverified)])].sort();
  if (!apps.length) return el("span", { class: "muted" }, "none");
  return el("ul", { class: "apps" }, apps.map((app) => {
    const check = host.reverified[app];
    return el("li", { "data-app": app }, link(["apps", app], app), " ", text(host.releases[app]),
      check ? el("div", { class: "reverified" },
        el("span", { class: `status ${check.status}` }, check.status), " ", when(check.ts),
        check.reasons.length ? el("ul", { class: "reasons" },
          check.reasons.map((r) => el("li", {}, r))) : "")
        : el("div", { class: "muted reverified" }, "not re-verified"));
  }));
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
  // The first screenful is asked for alone and painted; the rest of the fleet follows (a
  // thousand hosts read, sent and parsed in one go kept the page blank for a second).
  const data = await get(`/ui/api/fleet?limit=${FIRST_ROWS}`);
  const body = el("tbody");
  const label = el("input", { id: "filter-label", placeholder: "zone=a" });
  const group = el("select", { id: "filter-group" }, el("option", { value: "" }, "every group"),
    data.groups.map((g) => el("option", { value: g }, g)));
  const count = el("span", { class: "muted", id: "host-count" });
  // Rows are added in chunks after the first frame: a thousand rows laid out in one go kept
  // the page blank for seconds on a busy machine.
  let generation = 0;
  const counted = (shown) => {
    count.textContent = `${shown} of ${data.total} hosts` +
      (data.hosts.length < data.total ? ` (${data.hosts.length} loaded)` : "");
  };
  const more = (mine, list, from) => {
    if (mine !== generation || signal.aborted) return;
    if (from >= list.length) {
      if (data.hosts.length >= data.total || !data.more) {
        performance.measure("fleet-rows", "fleet-rows"); // every row built: for the bench
      }
      return;
    }
    body.append(...list.slice(from, from + CHUNK_ROWS).map(row));
    setTimeout(() => more(mine, list, from + CHUNK_ROWS), 0);
  };
  const filtered = (hosts) => hosts.filter((h) => matches(h, label.value.trim(), group.value));
  let shownCount = 0;
  const fill = () => {
    performance.mark("fleet-rows");
    const mine = ++generation;
    const shown = filtered(data.hosts);
    shownCount = shown.length;
    body.replaceChildren(...shown.slice(0, FIRST_ROWS).map(row));
    counted(shownCount);
    performance.mark("fleet-first-rows");
    requestAnimationFrame(() => {
      performance.mark("fleet-first-paint"); // the frame that shows the first rows: the bench
      setTimeout(() => more(mine, shown, FIRST_ROWS), 0);
    });
  };
  label.addEventListener("input", fill);
  group.addEventListener("change", fill);
  fill();
  replace(main, el("h1", {}, "Fleet"),
    el("div", { class: "filters" }, el("label", {}, "Label ", label),
      el("label", {}, "Group ", group), count),
    el("table", { id: "fleet" }, el("thead", {}, el("tr", {}, ["Host", "Status", "Driver", "CUDA",
      "GPUs", "Releases and their last re-verification", "Last verification",
      "Reasons"].map((h) => el("th", {}, h)))), body));
  if (!data.more) return;
  const last = data.hosts[data.hosts.length - 1].host;
  const rest = await get(`/ui/api/fleet?after=${encodeURIComponent(last)}`);
  if (signal.aborted) return;
  data.hosts.push(...rest.hosts);
  data.total = data.hosts.length;
  data.more = false;
  // The rows shown stay; those of the rest that pass the filters are added after them.
  const added = filtered(rest.hosts);
  shownCount += added.length;
  counted(shownCount);
  more(generation, added, 0);
}
