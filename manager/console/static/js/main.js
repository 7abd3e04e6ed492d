// The console's shell: session check, hash router, navigation, connection banner.
import { api, onConnection, setSession } from "./api.js";
import { html, render, useEffect, useState } from "./lib.js";
import { Login } from "./login.js";
import { ServiceList } from "./services.js";
import { Launcher } from "./launcher.js";
import { ServiceDetail } from "./detail.js";
import { FolderExplorer, FolderList } from "./folders.js";
import { DefinitionEditor } from "./editor.js";
import { ModelStore } from "./store.js";
import { ChatPage } from "./chat.js";
import { ApiKeysPage } from "./apikeys.js";
import { UsagePage } from "./usage.js";

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/services";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), query: new URLSearchParams(query || "") };
}

export function go(path) { location.hash = "#" + path; }

function Banner() {
  const [online, setOnline] = useState(true);
  useEffect(() => onConnection(setOnline), []);
  return online ? null : html`<div class="banner" role="status" aria-live="assertive">
    Connection to the console server lost — retrying… Nothing you typed is lost.</div>`;
}

function Page({ route, user }) {
  const [a, b, c] = route.parts;
  if (a === "services" && b === "new") return html`<${Launcher} user=${user} />`;
  if (a === "services" && b && c === "edit") return html`<${Launcher} user=${user} serviceId=${b} />`;
  if (a === "services" && b) return html`<${ServiceDetail} user=${user} serviceId=${b} />`;
  if (a === "chat") return html`<${ChatPage} query=${route.query} />`;
  if (a === "folders" && b && c === "edit") return html`<${DefinitionEditor} folderId=${b} path=${route.query.get("path") || ""} />`;
  if (a === "folders" && b) return html`<${FolderExplorer} folderId=${b} path=${route.query.get("path") || ""} />`;
  if (a === "folders") return html`<${FolderList} user=${user} />`;
  if (a === "store") return html`<${ModelStore} />`;
  if (a === "api-keys") return html`<${ApiKeysPage} user=${user} />`;
  if (a === "usage") return html`<${UsagePage} user=${user} />`;
  return html`<${ServiceList} user=${user} />`;
}

function App() {
  const [route, setRoute] = useState(parseHash());
  const [user, setUser] = useState(undefined);  // undefined: checking, null: logged out
  useEffect(() => {
    const onHash = () => setRoute(parseHash());
    window.addEventListener("hashchange", onHash);
    api.get("/console/session").then((u) => { setSession(u.csrf_token, () => setUser(null)); setUser(u); })
      .catch(() => setUser(null));
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  const loggedIn = (u) => { setSession(u.csrf_token, () => setUser(null)); setUser(u); go("/services"); };
  const logout = async () => {
    try { await api.post("/console/logout"); } finally { setSession(""); setUser(null); go("/login"); }
  };
  if (user === undefined) return html`<${Banner} /><p class="boot">Loading…</p>`;
  if (user === null || route.parts[0] === "login" && !user) {
    return html`<${Banner} /><${Login} onLoggedIn=${loggedIn} linkState=${route.query.get("link")} />`;
  }
  const here = route.parts[0] || "services";
  const nav = (href, label, key) => html`<a href=${"#" + href} aria-current=${here === key ? "page" : null}>${label}</a>`;
  return html`
    <${Banner} />
    <header class="topbar">
      <a class="brand" href="#/services">Moorage</a>
      <nav aria-label="Main">
        ${nav("/services", "Model Serving", "services")}
        ${nav("/folders", "Data", "folders")}
        ${nav("/store", "Model Store", "store")}
        ${nav("/chat", "LLM Chat Test", "chat")}
        ${nav("/api-keys", "API Keys", "api-keys")}
        ${nav("/usage", "Usage", "usage")}
      </nav>
      <div class="who">
        <span class="muted" title=${user.access_key}>${user.email} (${user.role})</span>
        <button type="button" class="link" onClick=${logout}>Log out</button>
      </div>
    </header>
    <main id="main"><${Page} route=${route} user=${user} key=${location.hash} /></main>`;
}

render(html`<${App} />`, document.getElementById("app"));
