// Building the page: every value goes in as text (textContent), never as markup, so a host's
// GPU name or a spec's field can hold "<script>" and is shown as those characters.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function text(value) {
  return value === undefined || value === null || value === "" ? "—" :
    typeof value === "object" ? JSON.stringify(value) : String(value);
}

// One formatter for the page: Date.toLocaleString() builds one per call (a thousand hosts'
// timestamps took seconds).
const TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

export function when(ts) {
  return ts ? TIME.format(new Date(ts * 1000)) : "—";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

// Only values from the daemon's own routes go into hrefs, and always inside "#/...": a name
// with "javascript:" cannot become a link target.
export function link(route, label) {
  return el("a", { href: "#/" + route.map(encodeURIComponent).join("/") }, label);
}

export function replace(main, ...children) {
  main.replaceChildren();
  append(main, children);
}
