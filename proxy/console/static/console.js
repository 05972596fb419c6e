// The console: sign-in, the router (the URL fragment, never sent to the server), the pages.
import { KEY, api, state } from "/console/api.js";
import { explainPage } from "/console/explain.js";
import { jobsPage } from "/console/jobs.js";
import { h, say } from "/console/ui.js";
import { userPage } from "/console/memories.js";
import { usersPage } from "/console/users.js";

function parseRoute() {
  const [path, rest] = location.hash.replace(/^#\/?/, "").split("?");
  return { route: path || "users", params: Object.fromEntries(new URLSearchParams(rest || "")) };
}

function describe(scope) {
  if (scope.admin) return "admin";
  return "tenant " + scope.tenant + (scope.user_id ? " · user " + scope.user_id : "");
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  state.scope = null;
  showLogin(message);
}

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("page").replaceChildren();
  document.getElementById("login").hidden = false;
  say(message || "", Boolean(message));
  document.getElementById("key").focus();
}

async function signIn() {
  // The users listing says whose memories this key reaches (its scope).
  const listed = await api("GET", "/v1/users", { query: { limit: 1 } });
  state.scope = listed.scope;
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = "Signed in: " + describe(state.scope);
}

let renders = 0;
const PAGES = { users: usersPage, user: userPage, explain: explainPage, jobs: jobsPage };

async function render() {
  if (!state.scope) return;
  const { route, params } = parseRoute();
  const page = PAGES[route] || usersPage;
  for (const a of document.querySelectorAll("#nav a")) {
    const current = a.getAttribute("href") === "#/" + route ||
      (route === "user" && a.getAttribute("href") === "#/users");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  say("");
  // Each render fills its own container, shown only if no later navigation overtook it.
  const mine = ++renders;
  const shown = document.getElementById("page");
  shown.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
  const root = h("div");
  try {
    await page(root, params);
  } catch (error) {
    if (mine !== renders) return;
    if (error.status === 401) { signOut(error.message); return; }
    root.replaceChildren(h("p", { class: "muted", text: "Could not load this page." }));
    say(error.message, true);
  }
  if (mine !== renders) return;
  shown.replaceChildren(root);
  const heading = root.querySelector("h1");
  if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
}

async function start() {
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("key");
    if (input.value) sessionStorage.setItem(KEY, input.value); else sessionStorage.removeItem(KEY);
    input.value = "";
    try { await signIn(); say(""); await render(); } catch (error) { signOut(error.message); }
  });
  document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", render);
  try { await signIn(); await render(); } catch (error) {
    showLogin(sessionStorage.getItem(KEY) ? error.message : "");
  }
}

start();
