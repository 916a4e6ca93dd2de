// The two pages that mailed links open (docs/_extra/account/): /account/verify-email and
// /account/reset-password. Plain JavaScript, no dependencies, in the style of comments.js:
// - the token comes from the fragment (#token=...), which a browser never sends to a server,
//   and is removed from the address bar at once (history.replaceState), so it does not stay in
//   the history, a bookmark or a screenshot; it lives in the `token` constant below only;
// - text from the API is written with textContent only, never as HTML;
// - every API answer becomes a sentence for the reader.
(() => {
  "use strict";
  const root = document.getElementById("br-account");
  if (!root) return;
  const api = root.dataset.api || "/api";
  const part = (role, within = root) => within.querySelector(`[data-role="${role}"]`);
  const FIELD_LABELS = { email: "Email", new_password: "New password", token: "Link" };

  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);

  if (matchMedia("(prefers-color-scheme: dark)").matches) {
    document.documentElement.dataset.theme = "dark"; // the theme's colours, as on the articles
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error;
      this.fields = (body && Array.isArray(body.fields) && body.fields) || [];
    }
  }

  // POST `json` to the API; the answer's body (null for 204), or an ApiError.
  async function post(path, json) {
    let response;
    try {
      response = await fetch(api + path, {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify(json),
        credentials: "same-origin",
      });
    } catch {
      throw new ApiError(0, { error: "network", message: "network" });
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const INVALID_LINK =
    "This link is invalid, has expired or was already used. Ask for a new one below.";

  function describe(error) {
    if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
    switch (error.status) {
      case 0:
        return "The server could not be reached. Check your connection and try again.";
      case 400:
        return error.code === "invalid_token" ? INVALID_LINK : error.message;
      case 422:
        if (error.fields.length) {
          return error.fields
            .map((f) => `${FIELD_LABELS[f.field] || f.field}: ${f.message}`)
            .join("\n");
        }
        return error.message;
      case 429:
      case 503:
        return "Too many requests right now. Please wait a moment and try again.";
      default:
        return `The server could not do that (${error.status}). Please try again later.`;
    }
  }

  function showError(form, error) {
    part("error", form).textContent = error ? describe(error) : "";
    const invalid = new Set(((error && error.fields) || []).map((f) => f.field));
    for (const input of form.querySelectorAll("input")) {
      if (invalid.has(input.name)) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  function say(text) {
    part("status").textContent = text;
  }

  // Nothing in the form can change while it is sent.
  function onSubmit(form, action) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const controls = [...form.querySelectorAll("input, button")];
      const data = new FormData(form);
      for (const control of controls) control.disabled = true;
      showError(form, null);
      try {
        await action(data);
      } catch (error) {
        showError(form, error);
      } finally {
        for (const control of controls) control.disabled = false;
      }
    });
  }

  // "Send me a new link": the API answers 202 whatever the address, and says so.
  const resend = part("resend");
  function offerNewLink() {
    resend.hidden = false;
  }
  onSubmit(resend, async (data) => {
    part("sent", resend).textContent = "";
    const answer = await post(resend.dataset.path, { email: data.get("email") });
    part("sent", resend).textContent = `${answer.message} Check your inbox.`;
  });

  async function verifyEmail() {
    if (!token) {
      say("This page opens from the link in the mail we sent you, and this address has no token.");
      offerNewLink();
      return;
    }
    try {
      await post("/auth/verify-email", { token });
      say("Your address is verified. You can log in and comment on the articles.");
    } catch (error) {
      say(describe(error));
      if (error instanceof ApiError && error.status === 400) offerNewLink();
    }
  }

  function resetPassword() {
    const form = part("reset");
    if (!token) {
      form.hidden = true;
      say("This page opens from the link in the mail we sent you, and this address has no token.");
      offerNewLink();
      return;
    }
    onSubmit(form, async (data) => {
      try {
        await post("/auth/reset-password", { token, new_password: data.get("new_password") });
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 400)) throw error;
        form.hidden = true; // the link cannot be used: only a new one helps
        say(describe(error));
        offerNewLink();
        return;
      }
      form.reset();
      form.hidden = true;
      say(
        "Your password was changed, and every session of your account was signed out. " +
          "Log in again with the new password.",
      );
    });
  }

  if (root.dataset.page === "verify-email") verifyEmail();
  else if (root.dataset.page === "reset-password") resetPassword();
})();
