// Login with an access key and secret key (checked by the server), or by the one-time link `moorage up` prints.
import { api } from "./api.js";
import { html, useState } from "./lib.js";
import { ErrorBox, Field } from "./ui.js";

export function Login({ onLoggedIn, linkState }) {
  const [accessKey, setAccessKey] = useState("");
  const [secretKey, setSecretKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onLoggedIn(await api.post("/console/login", { access_key: accessKey.trim(), secret_key: secretKey }));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login">
    <form class="card login-card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">Moorage console</h1>
      ${linkState === "invalid" ? html`<p class="error-box" role="alert">This login link was already used or has
        expired. Log in with your keys, or start <code>moorage up</code> again for a new link.</p>` : null}
      <${Field} id="access-key" label="Access key">
        <input id="access-key" name="access_key" autocomplete="username" required value=${accessKey}
               onInput=${(e) => setAccessKey(e.target.value)} />
      <//>
      <${Field} id="secret-key" label="Secret key">
        <input id="secret-key" name="secret_key" type="password" autocomplete="current-password" required
               value=${secretKey} onInput=${(e) => setSecretKey(e.target.value)} />
      <//>
      <${ErrorBox} error=${error} />
      <button type="submit" class="primary" disabled=${busy}>Log in</button>
      <p class="hint">The keys are in <code>cluster.json</code> (<code>moorage up</code>) or come from
        <code>moorage admin create-user</code>.</p>
    </form>
  </main>`;
}
