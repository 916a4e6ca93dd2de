// The comments section of an article page: list, register, log in, post, log out, ask for a
// password reset link or for a new verification link.
// Plain JavaScript, no dependencies. Safe by construction:
// - text from the API is only ever written with textContent (never innerHTML), so a comment
//   that contains <script> or <img onerror=...> is shown as typed;
// - the tokens live in the `token` and `refreshToken` variables below and nowhere else (no
//   cookie, no localStorage): a reload logs the reader out;
// - an expired access token is renewed with the refresh token, one refresh at a time (two
//   refreshes with one token look like theft to the server, which then ends the session);
// - "Log out" ends the session on the server, not only in the page;
// - every API error is turned into a sentence for the reader.
(() => {
  "use strict";
  const root = document.getElementById("br-comments");
  if (!root) return;
  const api = root.dataset.api || "/api";
  const slug = root.dataset.slug || location.pathname.split("/").pop().replace(/\.html$/, "");
  const part = (role) => root.querySelector(`[data-role="${role}"]`);
  const PAGE_SIZE = 20;
  const FIELD_LABELS = {
    email: "Email", username: "Email", display_name: "Display name",
    password: "Password", body: "Comment", bio: "Bio",
  };
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  let token = null; // the access token: in memory only
  let refreshToken = null; // the refresh token: in memory only too
  let refreshing = null; // the refresh in flight, shared by every caller
  let after = 0; // keyset cursor: the id of the last comment shown
  let total = 0; // comments on the article, as last counted by the API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error;
      this.fields = (body && Array.isArray(body.fields) && body.fields) || [];
    }
  }

  // One API call; with `auth`, an expired access token is refreshed once and the call retried.
  async function call(path, options = {}) {
    try {
      return await send(path, options);
    } catch (error) {
      const expired =
        error instanceof ApiError && error.status === 401 && error.code === "invalid_token";
      if (!(options.auth && expired && refreshToken)) throw error;
      await refreshSession();
      return await send(path, options);
    }
  }

  function keep(answer) {
    token = answer.access_token;
    refreshToken = answer.refresh_token;
  }

  function refreshSession() {
    if (!refreshing) {
      refreshing = send("/auth/refresh", { method: "POST", json: { refresh_token: refreshToken } })
        .then(keep, (error) => {
          token = refreshToken = null;
          throw error;
        })
        .finally(() => {
          refreshing = null;
        });
    }
    return refreshing;
  }

  async function send(path, { method = "GET", json, form, auth = false } = {}) {
    const headers = { Accept: "application/json" };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = new URLSearchParams(form);
    }
    if (auth && token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(api + path, { method, headers, body, credentials: "same-origin" });
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

  // An API error in words a reader understands.
  function describe(error) {
    if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
    switch (error.status) {
      case 0:
        return "The server could not be reached. Check your connection and try again.";
      case 401:
        return error.code === "invalid_credentials"
          ? "Wrong email or password."
          : "Your session has ended. Please log in again.";
      case 403:
        return error.code === "email_not_verified"
          ? "Please verify your email address first: we sent you a link."
          : "You are not allowed to do that.";
      case 404:
        return "This page is not open for comments.";
      case 409:
        return "An account with this email already exists. Log in instead.";
      case 422:
      case 400:
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
    const box = form.querySelector('[data-role="error"]');
    box.textContent = error ? describe(error) : "";
    const resend = form.querySelector('[data-role="resend"]');
    if (resend) resend.hidden = !(error && error.code === "email_not_verified");
    const invalid = new Set(((error && error.fields) || []).map((f) => f.field));
    for (const input of form.querySelectorAll("input, textarea")) {
      const bad = invalid.has(input.name) || (input.name === "username" && invalid.has("email"));
      if (bad) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  function renderComment(comment) {
    const item = document.createElement("li");
    item.className = "br-comment";
    item.dataset.id = String(comment.id);
    const header = document.createElement("header");
    const author = document.createElement("strong");
    author.className = "br-author";
    author.textContent = comment.author.display_name;
    const time = document.createElement("time");
    time.dateTime = comment.created_at;
    time.textContent = dateFormat.format(new Date(comment.created_at));
    header.append(author, time);
    const body = document.createElement("p");
    body.className = "br-body";
    body.textContent = comment.body; // text, never HTML
    item.append(header, body);
    return item;
  }

  function showCount(total) {
    part("count").textContent =
      total === 0 ? "No comments yet." : total === 1 ? "1 comment" : `${total} comments`;
  }

  // Load the next page of comments (keyset pagination: ?after=<last id>).
  async function loadMore() {
    const more = part("more");
    more.disabled = true;
    try {
      const page = await call(
        `/articles/${encodeURIComponent(slug)}/comments?after=${after}&limit=${PAGE_SIZE}`,
      );
      part("list").append(...page.items.map(renderComment));
      if (page.items.length) after = page.items[page.items.length - 1].id;
      total = page.total;
      showCount(total);
      more.hidden = page.next_after == null;
      part("list-error").textContent = "";
    } catch (error) {
      part("count").textContent = "";
      part("list-error").textContent = `Comments could not be loaded. ${describe(error)}`;
    } finally {
      more.disabled = false;
    }
  }

  async function showSignedIn() {
    const me = await call("/users/me", { auth: true });
    part("me").textContent = me.display_name;
    part("signed-out").hidden = true;
    part("signed-in").hidden = false;
  }

  function logOut() {
    const presented = refreshToken;
    token = refreshToken = null;
    part("me").textContent = "";
    part("signed-in").hidden = true;
    part("signed-out").hidden = false;
    if (presented) {
      // End the session on the server too; the page is signed out whatever the answer.
      send("/auth/logout", { method: "POST", json: { refresh_token: presented } }).catch(() => {});
    }
  }

  async function logIn(username, password) {
    keep(await call("/auth/token", { method: "POST", form: { username, password } }));
    await showSignedIn();
  }

  function onSubmit(form, action) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      // Nothing in the form can change while it is sent: the reset below clears what was sent.
      const controls = [...form.querySelectorAll("input, textarea, button")];
      const data = new FormData(form);
      for (const control of controls) control.disabled = true;
      showError(form, null);
      const status = form.querySelector('[data-role="status"]');
      if (status) status.textContent = "";
      try {
        await action(data);
        form.reset();
      } catch (error) {
        if (error instanceof ApiError && error.status === 401 && error.code !== "invalid_credentials") {
          logOut();
          showError(part("login"), error);
        } else {
          showError(form, error);
        }
      } finally {
        for (const control of controls) control.disabled = false;
      }
    });
  }

  onSubmit(part("login"), (data) => logIn(data.get("username"), data.get("password")));

  onSubmit(part("register"), async (data) => {
    const account = {
      email: data.get("email"),
      display_name: data.get("display_name"),
      password: data.get("password"),
    };
    await call("/auth/register", { method: "POST", json: account });
    await logIn(account.email, account.password); // registered: sign straight in
  });

  onSubmit(part("post"), async (data) => {
    const comment = await call(`/articles/${encodeURIComponent(slug)}/comments`, {
      method: "POST",
      json: { body: data.get("body") },
      auth: true,
    });
    // The new comment is the newest: show it at the end if every earlier page is shown.
    if (part("more").hidden) {
      part("list").append(renderComment(comment));
      after = comment.id;
    }
    total += 1;
    showCount(total);
  });

  // The answer to a request for a mail: 202 and the same sentence for any address.
  function showStatus(form, text) {
    form.querySelector('[data-role="status"]').textContent = text;
  }

  async function askForMail(form, path, email) {
    showStatus(form, "");
    const answer = await call(path, { method: "POST", json: { email } });
    showStatus(form, `${answer.message} Check your inbox.`);
  }

  // "Send the link again" appears with a 403 email_not_verified, under log in or register.
  for (const form of [part("login"), part("register")]) {
    const resend = form.querySelector('[data-role="resend"]');
    resend.addEventListener("click", async () => {
      const email = (form.elements.username || form.elements.email).value;
      resend.disabled = true;
      try {
        await askForMail(form, "/auth/request-verification", email);
        showError(form, null);
      } catch (error) {
        showError(form, error);
      } finally {
        resend.disabled = false;
      }
    });
  }

  // "Forgot your password?" opens a form that asks for the address to mail a reset link to.
  part("forgot-open").addEventListener("click", () => {
    const forgot = part("forgot");
    const opening = forgot.hidden;
    forgot.hidden = !opening;
    part("forgot-open").setAttribute("aria-expanded", String(opening));
    if (opening) {
      forgot.elements.email.value ||= part("login").elements.username.value;
      forgot.elements.email.focus();
    }
  });

  onSubmit(part("forgot"), (data) =>
    askForMail(part("forgot"), "/auth/forgot-password", data.get("email")),
  );

  part("logout").addEventListener("click", logOut);
  part("more").addEventListener("click", loadMore);

  logOut(); // a fresh page starts signed out
  loadMore();
})();
