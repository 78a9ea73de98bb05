// A small latency chart as inline SVG: p50/p95/p99 per point (deploy: circle, re-verification:
// square), the baseline (the last deploy's values) as dashed lines. Labels are text nodes.
import { when } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const Q = ["p50_ms", "p95_ms", "p99_ms"];

function svg(tag, attrs = {}, label = null) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (label !== null) node.textContent = label;
  return node;
}

export function latencyChart(points, { width = 420, height = 180 } = {}) {
  const pad = { l: 40, r: 10, t: 10, b: 22 };
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    class: "latency" });
  const deploys = points.filter((p) => p.kind === "deploy");
  const baseline = deploys.length ? deploys[deploys.length - 1] : null;
  const top = Math.max(1e-6, ...points.flatMap((p) => Q.map((q) => p[q]))) * 1.15;
  const x = (i) => pad.l + (points.length < 2 ? (width - pad.l - pad.r) / 2
    : i * (width - pad.l - pad.r) / (points.length - 1));
  const y = (v) => height - pad.b - v / top * (height - pad.t - pad.b);
  root.append(svg("line", { x1: pad.l, y1: y(0), x2: width - pad.r, y2: y(0), class: "axis" }));
  root.append(svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: y(0), class: "axis" }));
  root.append(svg("text", { x: 2, y: pad.t + 8 }, `${top.toFixed(2)} ms`));
  root.append(svg("text", { x: 2, y: y(0) }, "0"));
  for (const q of Q) {
    const cls = q.slice(0, 3);
    if (baseline) {
      const line = svg("line", { x1: pad.l, x2: width - pad.r, y1: y(baseline[q]),
        y2: y(baseline[q]), class: `baseline ${cls}` });
      line.append(svg("title", {}, `baseline ${cls} ${baseline[q].toFixed(3)} ms`));
      root.append(line);
    }
    root.append(svg("polyline", { class: cls,
      points: points.map((p, i) => `${x(i)},${y(p[q])}`).join(" ") }));
    points.forEach((p, i) => {
      const mark = p.kind === "deploy"
        ? svg("circle", { cx: x(i), cy: y(p[q]), r: 3, class: cls })
        : svg("rect", { x: x(i) - 3, y: y(p[q]) - 3, width: 6, height: 6, class: cls });
      mark.append(svg("title", {}, `${p.kind} ${when(p.ts)} `
        + `release ${p.release ?? "?"}: ${cls} ${p[q].toFixed(3)} ms`));
      root.append(mark);
    });
  }
  Q.forEach((q, i) => root.append(svg("text", { x: width - pad.r - 120 + i * 40, y: pad.t + 8,
    class: `legend ${q.slice(0, 3)}` }, q.slice(0, 3))));
  root.append(svg("text", { x: pad.l, y: height - 6 },
    `${points.length} points · ● deploy ■ re-verification · dashed: baseline`));
  return root;
}
