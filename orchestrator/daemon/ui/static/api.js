// The daemon's API from this page: same origin, the token (TCP listener) as a bearer header.
// The token lives in sessionStorage: this tab only, gone when it closes, never in a cookie
// (so no other site's page can make the browser send it: docs/security.md "The web UI").
const KEY = "orchestrator.token";

export class Unauthorized extends Error {}

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(value) { sessionStorage.setItem(KEY, value); }
export function forget() { sessionStorage.removeItem(KEY); }

function headers(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function check(response) {
  if (response.status === 401) throw new Unauthorized("the daemon wants its token");
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

export async function get(path) {
  return (await check(await fetch(path, { headers: headers(), cache: "no-store" }))).json();
}

export async function post(path) {
  return (await check(await fetch(path, { method: "POST", headers: headers() }))).json();
}

// Server-sent events read with fetch (EventSource cannot send a bearer header): calls
// onEvent(name, data) per message; resolves when the stream ends, with the last id seen.
export async function events(path, onEvent, signal) {
  const response = await check(await fetch(path, { headers: headers(), signal }));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", lastId = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return lastId;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
        else if (line.startsWith("id: ")) lastId = Number(line.slice(4));
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}
