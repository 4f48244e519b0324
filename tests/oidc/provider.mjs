// Test-only OpenID Connect provider for authdb's tests: panva's oidc-provider on 127.0.0.1.
//
//   node tests/oidc/provider.mjs <port> [<state.json>]
//
// Prints exactly one line, "ready <issuer>", on stdout once listening (everything else goes to
// stderr). Issuer: http://127.0.0.1:<port>. Driven from Python by tests/oauth_servers.py.
//
// - Dynamic client registration (RFC 7591) at the discovery's registration_endpoint, open (no
//   initial access token). http://127.0.0.1:<any port>/... redirect URIs are accepted for the
//   default application_type "web" (oidc-provider only refuses http for implicit-flow clients).
//   Redirect URIs are matched exactly. token_endpoint_auth_method is per client, as registered.
// - PKCE (S256 only) is REQUIRED for every client, confidential ones included; a wrong or missing
//   code_verifier gives invalid_grant. Authorization codes are single use (a replay gives
//   invalid_grant and revokes what the code issued) and live 60 s.
// - ID tokens: RS256, key generated at first start (JWKS at /jwks). Scope claims (email, profile)
//   are put in the ID token too (conformIdTokenClaims: false) and served by /me (userinfo).
// - Test-only: POST /__test/accounts {"sub","email","email_verified","preferred_username","name"}.
// - Interaction page (/interaction/<uid>): one form, selectors input[name=login] (the account's
//   sub or preferred_username), button#signin ("Sign in") and button#deny ("Deny": the RP gets
//   error=access_denied). Consent is granted automatically for the requested scopes/claims. The
//   provider's session cookie (op_session) is kept: a second sign-in in the same browser skips
//   the page unless the RP sends prompt=login (or max_age).
// - Cookies are named op_session / op_interaction / op_interaction_resume so they never collide
//   with the relying party's on the same 127.0.0.1 host (cookies ignore ports).
// - With <state.json>, the signing key, accounts and registered clients are kept in that file and
//   loaded again on start, so a restarted provider (same port) still knows them.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const statePath = process.argv[3];
if (!Number.isInteger(port) || port <= 0) {
  process.stderr.write('usage: node provider.mjs <port> [<state.json>]\n');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

// ---- state: signing key, accounts, registered clients ----
const state = { jwks: null, accounts: {}, clients: {} };
if (statePath && fs.existsSync(statePath)) {
  Object.assign(state, JSON.parse(fs.readFileSync(statePath, 'utf8')));
}
if (!state.jwks) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  state.jwks = { keys: [{ ...jwk, kid: crypto.randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' }] };
}
function saveState() {
  if (!statePath) return;
  const tmp = `${statePath}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(state));
  fs.renameSync(tmp, statePath);
}
saveState();

// ---- storage adapter: in memory, no eviction; clients also go to the state file ----
const stores = new Map();
const grantMembers = new Map(); // grantId -> Set of [model, id]
const sessionUids = new Map();
const userCodes = new Map();
const epoch = () => Math.floor(Date.now() / 1000);

class Adapter {
  constructor(model) {
    this.model = model;
    if (!stores.has(model)) stores.set(model, new Map());
    this.store = stores.get(model);
    if (model === 'Client') {
      for (const [id, payload] of Object.entries(state.clients)) {
        this.store.set(id, { payload, exp: Infinity });
      }
    }
  }

  async upsert(id, payload, expiresIn) {
    const exp = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    this.store.set(id, { payload, exp });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(JSON.stringify([this.model, id]));
    }
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
    if (payload.userCode) userCodes.set(payload.userCode, id);
    if (this.model === 'Client') {
      state.clients[id] = payload;
      saveState();
    }
  }

  async find(id) {
    const entry = this.store.get(id);
    if (!entry) return undefined;
    if (entry.exp <= Date.now()) {
      this.store.delete(id);
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = epoch();
  }

  async destroy(id) {
    this.store.delete(id);
    if (this.model === 'Client' && id in state.clients) {
      delete state.clients[id];
      saveState();
    }
  }

  async revokeByGrantId(grantId) {
    for (const member of grantMembers.get(grantId) ?? []) {
      const [model, id] = JSON.parse(member);
      stores.get(model)?.delete(id);
    }
    grantMembers.delete(grantId);
  }
}

// ---- accounts ----
function findAccountByLogin(login) {
  if (Object.hasOwn(state.accounts, login)) return state.accounts[login];
  return Object.values(state.accounts).find((a) => a.preferred_username === login);
}

async function findAccount(_ctx, sub) {
  if (!Object.hasOwn(state.accounts, sub)) return undefined;
  return {
    accountId: sub,
    async claims() {
      const a = state.accounts[sub];
      const claims = { sub: a.sub };
      for (const name of ['email', 'email_verified', 'preferred_username', 'name']) {
        if (a[name] !== undefined && a[name] !== null) claims[name] = a[name];
      }
      return claims;
    },
  };
}

// Consent is automatic: every authorization request gets a grant for what it asks.
async function loadExistingGrant(ctx) {
  const { Grant } = ctx.oidc.provider;
  const grant = new Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
  grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
  const claims = [...ctx.oidc.requestParamClaims];
  if (claims.length) grant.addOIDCClaims(claims);
  await grant.save();
  return grant;
}

const provider = new Provider(issuer, {
  adapter: Adapter,
  jwks: state.jwks,
  findAccount,
  loadExistingGrant,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
  },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  responseTypes: ['code'],
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    claimsParameter: { enabled: true },
    revocation: { enabled: true },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: {
    names: { session: 'op_session', interaction: 'op_interaction', resume: 'op_interaction_resume' },
    keys: [crypto.randomBytes(32).toString('hex')],
  },
  ttl: {
    AuthorizationCode: 60,
    AccessToken: 3600,
    IdToken: 3600,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
  },
});
provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));

// ---- own pages and test endpoints ----
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, clientId, message) {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Sign in - test OpenID provider</title></head>
<body>
<h1>Sign in to the test OpenID provider</h1>
<p>Application: <span id="client">${escapeHtml(clientId)}</span></p>
${message ? `<p id="error" role="alert">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}">
  <label>Login <input type="text" name="login" autocomplete="username" autofocus></label>
  <button type="submit" id="signin" name="action" value="signin">Sign in</button>
  <button type="submit" id="deny" name="action" value="deny">Deny</button>
</form>
</body></html>
`;
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function handleInteraction(req, res, uid) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, `<!doctype html><p id="error">${escapeHtml(err.message)}</p>`);
  }
  if (details.uid !== uid) return send(res, 400, '<!doctype html><p id="error">interaction mismatch</p>');
  const clientId = details.params.client_id;

  if (req.method === 'GET') {
    if (details.prompt.name === 'login') return send(res, 200, loginPage(uid, clientId));
    // Not reached with the automatic grant above; finish anyway.
    return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
  }
  if (req.method !== 'POST') return send(res, 405, 'method not allowed', 'text/plain');

  const form = new URLSearchParams(await readBody(req));
  if (form.get('action') === 'deny') {
    return provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User denied the request' },
      { mergeWithLastSubmission: false },
    );
  }
  const account = findAccountByLogin((form.get('login') ?? '').trim());
  if (!account) return send(res, 200, loginPage(uid, clientId, 'Unknown login'));
  return provider.interactionFinished(
    req,
    res,
    { login: { accountId: account.sub } },
    { mergeWithLastSubmission: false },
  );
}

async function handleTest(req, res, path) {
  if (req.method === 'POST' && path === '/__test/accounts') {
    const a = JSON.parse(await readBody(req));
    if (typeof a.sub !== 'string' || !a.sub) return send(res, 400, '{"error":"sub required"}', 'application/json');
    state.accounts[a.sub] = {
      sub: a.sub,
      email: a.email ?? null,
      email_verified: a.email_verified ?? true,
      preferred_username: a.preferred_username ?? null,
      name: a.name ?? null,
    };
    saveState();
    return send(res, 201, JSON.stringify(state.accounts[a.sub]), 'application/json');
  }
  return send(res, 404, '{"error":"not found"}', 'application/json');
}

const providerCallback = provider.callback();
const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, issuer);
  const match = /^\/interaction\/([^/]+)$/.exec(pathname);
  let handled;
  if (match) handled = handleInteraction(req, res, match[1]);
  else if (pathname.startsWith('/__test/')) handled = handleTest(req, res, pathname);
  else return providerCallback(req, res);
  handled.catch((err) => {
    process.stderr.write(`error: ${err.stack}\n`);
    if (!res.headersSent) send(res, 500, 'internal error', 'text/plain');
    else res.end();
  });
  return undefined;
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
