// The page's router: #/fleet, #/deployments, #/deployments/ID, #/apps/APP. Each view is a
// module with render(main, args, signal); leaving a view aborts its signal (its live stream).
// Views are imported when first shown, so the fleet page (the first one) waits for its own
// modules only (index.html preloads those).
import { Unauthorized, forget, setToken, token } from "./api.js";
import { el, replace } from "./dom.js";

const fleet = () => import("./fleet.js");
const deployments = () => import("./deployments.js");
const deployment = () => import("./deployment.js");
const appView = () => import("./app_view.js");

const main = document.getElementById("main");
const login = document.getElementById("login");
let current = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean)
    .map(decodeURIComponent);
  if (parts[0] === "deployments" && parts[1]) return [deployment, [parts[1]], "deployments"];
  if (parts[0] === "deployments") return [deployments, [], "deployments"];
  if (parts[0] === "apps" && parts[1]) return [appView, [parts[1]], "fleet"];
  return [fleet, [], "fleet"];
}

async function show() {
  if (current) current.abort();
  current = new AbortController();
  const [view, args, tab] = route();
  for (const name of ["fleet", "deployments"]) {
    document.getElementById(`nav-${name}`).classList.toggle("active", name === tab);
  }
  document.getElementById("logout").hidden = !token();
  login.hidden = true;
  main.hidden = false;
  try {
    await (await view()).render(main, args, current.signal);
  } catch (error) {
    if (error instanceof Unauthorized) {
      main.hidden = true;
      login.hidden = false;
      document.getElementById("login-error").textContent = token() ? "wrong token" : "";
      document.getElementById("token").focus();
    } else if (error.name !== "AbortError") {
      replace(main, el("p", { class: "error", role: "alert" }, String(error.message || error)));
    }
  }
}

login.addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  show();
});
document.getElementById("logout").addEventListener("click", () => { forget(); show(); });
window.addEventListener("hashchange", show);
show();
