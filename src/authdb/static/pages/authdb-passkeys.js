// authdb passkeys: the only script of the hosted pages (their CSP allows no other).
//
// /login        "Sign in with a passkey" (#passkey-login), and the browser's autofill of
//               passkeys in the username field (conditional mediation) where supported.
// /login/mfa    "Use a passkey" as the second factor (#passkey-second-factor).
// /account      "Add a passkey" (#passkey-add-form).
//
// Each block names its URLs in data- attributes; without WebAuthn its button stays hidden and
// the page works as before. Requests carry the X-CSRF-Token header from the authdb_csrf cookie.
(function () {
  "use strict";

  function toBytes(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    base64 += "====".slice((base64.length + 3) % 4 + 1);
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function toText(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (d) {
      return { type: d.type, id: toBytes(d.id), transports: d.transports };
    });
  }

  // WebAuthn Level 3 JSON (base64url strings) to the ArrayBuffers navigator.credentials wants.
  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = toBytes(json.challenge);
    options.user = Object.assign({}, json.user, { id: toBytes(json.user.id) });
    options.excludeCredentials = descriptors(json.excludeCredentials);
    return options;
  }

  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = toBytes(json.challenge);
    options.allowCredentials = descriptors(json.allowCredentials);
    return options;
  }

  // The credential as RegistrationResponseJSON / AuthenticationResponseJSON.
  function credentialJSON(credential) {
    var r = credential.response;
    var response = { clientDataJSON: toText(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      if (r.getTransports) response.transports = r.getTransports();
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      response.userHandle = r.userHandle ? toText(r.userHandle) : null;
    }
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: response,
    };
  }

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)authdb_csrf=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    }).then(function (answer) {
      return answer.json().then(
        function (data) { return { ok: answer.ok, data: data }; },
        function () { return { ok: answer.ok, data: {} }; }
      );
    });
  }

  function detail(data, fallback) {
    return typeof data.detail === "string" ? data.detail : fallback;
  }

  function say(element, text, isError) {
    element.textContent = text;
    element.hidden = !text;
    element.classList.toggle("passkey-status-error", Boolean(isError));
  }

  // Passkeys belong to the server's configured origin (AUTHDB_PUBLIC_URL); opened at another
  // address (127.0.0.1 for localhost, say), the browser would refuse with its own jargon.
  function elsewhere(block, message) {
    var origin = block.dataset.origin;
    if (!origin || origin === window.location.origin) return false;
    say(message, "Passkeys work only at " + origin + ": open this page there to use them.", true);
    return true;
  }

  function explain(error) {
    if (error && error.name === "NotAllowedError") {
      return "The passkey request was cancelled or timed out.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This device already has a passkey for your account.";
    }
    return (error && error.message) || "Something went wrong with the passkey.";
  }

  // Options from `block.dataset.options`, the browser's ceremony, then the answer posted to
  // `block.dataset.finish`; a `redirect` in the reply is followed.
  function signIn(block, message, mediation, signal) {
    return post(block.dataset.options, {}).then(function (start) {
      if (!start.ok) throw new Error(detail(start.data, "Passkeys are not available."));
      var request = { publicKey: requestOptions(start.data.options), signal: signal };
      if (mediation) request.mediation = mediation;
      return navigator.credentials.get(request).then(function (credential) {
        say(message, "");
        return post(block.dataset.finish, {
          flow_id: start.data.flow_id,
          credential: credentialJSON(credential),
          next: block.dataset.next || "",
        });
      });
    }).then(function (done) {
      if (done.data.redirect) {
        window.location.assign(done.data.redirect);
      } else {
        say(message, detail(done.data, "Signing in with the passkey failed."), true);
      }
    });
  }

  function setUpSignIn(block, button, message, conditional) {
    var pending = null;
    block.hidden = false;
    if (elsewhere(block, message)) return;
    function start(mediation) {
      if (pending) pending.abort();
      pending = new AbortController();
      return signIn(block, message, mediation, pending.signal);
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      button.disabled = true;
      start(undefined).catch(function (error) {
        say(message, explain(error), true);
      }).then(function () {
        button.disabled = false;
      });
    });
    if (conditional && PublicKeyCredential.isConditionalMediationAvailable) {
      PublicKeyCredential.isConditionalMediationAvailable().then(function (available) {
        block.dataset.conditional = available ? "on" : "off";
        if (!available) return;
        // Autofill runs unasked: the browser's own refusals (cancelled, aborted, no passkey)
        // are not the user's business; a refusal by the server is.
        start("conditional").catch(function (error) {
          if (!(error instanceof DOMException)) say(message, explain(error), true);
        });
      });
    }
  }

  function setUpRegistration(form) {
    var button = document.getElementById("passkey-add");
    var name = document.getElementById("passkey-name");
    var password = document.getElementById("passkey-password");
    var status = document.getElementById("passkey-status");
    document.getElementById("passkey-add-block").hidden = false;
    if (elsewhere(form, status)) {
      button.disabled = true;
      return;
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      button.disabled = true;
      say(status, "Follow your browser’s instructions to create the passkey…");
      post(form.dataset.options, { password: password.value }).then(function (start) {
        if (!start.ok) throw new Error(detail(start.data, "Passkeys are not available."));
        password.value = "";
        return navigator.credentials.create({ publicKey: creationOptions(start.data) });
      }).then(function (credential) {
        var body = { credential: credentialJSON(credential) };
        if (name.value.trim()) body.name = name.value.trim();
        return post(form.dataset.finish, body);
      }).then(function (done) {
        if (done.ok) {
          window.location.assign(form.dataset.done);
        } else {
          say(status, detail(done.data, "The passkey could not be added."), true);
        }
      }).catch(function (error) {
        say(status, explain(error), true);
      }).then(function () {
        button.disabled = false;
      });
    });
  }

  if (!window.PublicKeyCredential || !window.fetch) return;

  var login = document.getElementById("passkey-login");
  if (login) {
    setUpSignIn(
      login,
      document.getElementById("passkey-signin"),
      document.getElementById("passkey-error"),
      true
    );
  }
  var second = document.getElementById("passkey-second-factor");
  if (second) {
    setUpSignIn(
      second,
      document.getElementById("passkey-mfa"),
      document.getElementById("passkey-error"),
      false
    );
  }
  var adding = document.getElementById("passkey-add-form");
  if (adding) setUpRegistration(adding);
})();
