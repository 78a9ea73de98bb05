// The API reference page: renders /openapi.json of the daemon that serves it, with no other
// origin involved (orchestrator/daemon/apidocs.py). Every text goes in through textContent.
"use strict";

const TOKEN_KEY = "orchestrator.api-token";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

function typeOf(schema) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    if (schema[key]) return schema[key].map(typeOf).join(key === "allOf" ? " & " : " | ");
  }
  if (schema.type === "array") return typeOf(schema.items) + "[]";
  if (schema.type === "object" && schema.additionalProperties) {
    return "{string: " + (schema.additionalProperties === true ? "any" : typeOf(schema.additionalProperties)) + "}";
  }
  return schema.type || (schema.format ? schema.format : "any");
}

function typeCell(schema) {
  // A named schema links to its table below.
  const text = typeOf(schema);
  const refs = JSON.stringify(schema || {}).match(/#\/components\/schemas\/[A-Za-z0-9_.-]+/g);
  if (!refs) return el("td", {}, el("code", {}, text));
  const cell = el("td", {}, el("code", {}, text), " ");
  for (const ref of new Set(refs)) {
    cell.append(el("a", { href: "#schema-" + refName(ref) }, "\u2192" + refName(ref)), " ");
  }
  return cell;
}

function parameters(op) {
  if (!op.parameters || op.parameters.length === 0) return null;
  const rows = op.parameters.map((p) => el("tr", {},
    el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), typeCell(p.schema),
    el("td", {}, p.required ? "required" : "optional"), el("td", {}, p.description || "")));
  return el("table", {}, el("tr", {}, ...["name", "in", "type", "", "description"].map((h) => el("th", {}, h))), ...rows);
}

function content(body) {
  if (!body || !body.content) return [];
  return Object.entries(body.content).map(([type, media]) =>
    el("div", {}, el("code", {}, type), media.schema ? el("span", {}, ": ", typeOf(media.schema)) : null));
}

function responses(op) {
  const rows = Object.entries(op.responses || {}).map(([status, r]) => {
    const types = Object.entries(r.content || {}).map(([type, media]) => type + (media.schema ? " " + typeOf(media.schema) : ""));
    const schemas = Object.values(r.content || {}).map((m) => m.schema).filter(Boolean);
    return el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, r.description || ""),
      schemas.length ? typeCell({ anyOf: schemas }) : el("td", {}, types.join(", ")));
  });
  return el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "meaning"), el("th", {}, "body")), ...rows);
}

function operation(path, method, op, id) {
  const box = el("section", { class: "op " + method, id: id },
    el("h3", {}, el("span", { class: "method" }, method), " ", el("code", {}, path)));
  if (op.summary) box.append(el("p", {}, op.summary));
  if (op.description) box.append(el("pre", {}, op.description));
  const params = parameters(op);
  if (params) box.append(el("h4", {}, "Parameters"), params);
  if (op.requestBody) box.append(el("h4", {}, "Request body"), ...content(op.requestBody));
  box.append(el("h4", {}, "Responses"), responses(op));
  return box;
}

function schemaTable(name, schema) {
  const box = el("div", { id: "schema-" + name }, el("h3", {}, name));
  if (schema.description) box.append(el("p", {}, schema.description));
  if (schema.enum) box.append(el("p", {}, "One of: ", el("code", {}, schema.enum.join(", "))));
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties || {}).map(([prop, s]) => el("tr", {},
    el("td", {}, el("code", {}, prop)), typeCell(s), el("td", {}, required.has(prop) ? "required" : ""),
    el("td", {}, s.description || s.title || "")));
  if (rows.length) {
    box.append(el("table", {}, el("tr", {}, ...["field", "type", "", "description"].map((h) => el("th", {}, h))), ...rows));
  }
  if (schema.additionalProperties === true) box.append(el("p", {}, "More fields may appear."));
  return box;
}

function render(spec) {
  document.title = spec.info.title + " " + spec.info.version + " API";
  document.getElementById("title").textContent = spec.info.title + " API " + spec.info.version;
  const info = document.getElementById("info");
  info.replaceChildren(spec.info.description || "");
  const schemes = (spec.components || {}).securitySchemes || {};
  for (const [name, scheme] of Object.entries(schemes)) {
    info.after(el("div", { class: "security" }, el("strong", {}, "Authentication (" + name + ", " + scheme.type + " " + (scheme.scheme || "") + "): "), scheme.description || ""));
  }
  const toc = el("ul");
  const ops = document.getElementById("operations");
  ops.replaceChildren(el("h2", {}, "Operations"));
  let n = 0;
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const id = "op-" + n++;
      toc.append(el("li", {}, el("a", { href: "#" + id }, method.toUpperCase() + " " + path)));
      ops.append(operation(path, method, op, id));
    }
  }
  document.getElementById("toc").replaceChildren(toc);
  const schemas = document.getElementById("schemas");
  schemas.replaceChildren(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries((spec.components || {}).schemas || {})) {
    schemas.append(schemaTable(name, schema));
  }
  document.body.dataset.rendered = String(n);
}

async function load() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch("/openapi.json", { headers: headers, credentials: "omit" });
  if (response.status === 401) {
    document.getElementById("info").textContent = "This daemon is reached over TCP: give its bearer token.";
    document.getElementById("token-form").hidden = false;
    return;
  }
  if (!response.ok) throw new Error("/openapi.json: HTTP " + response.status);
  document.getElementById("token-form").hidden = true;
  render(await response.json());
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    load().catch(fail);
  });
  load().catch(fail);
});

function fail(error) {
  const info = document.getElementById("info");
  info.className = "error";
  info.textContent = "Could not load the API description: " + error.message;
}
