"""The pages that mailed links open (/account/verify-email and /account/reset-password), the
comments box's "Forgot your password?" and "Send the link again", and every Mermaid diagram of
the site, in Debian's Chromium (Playwright) against a real server process on a loopback port.
The links are read from the server's outbox, as a reader would find them in their mail."""

import re
import time
from urllib.parse import urlsplit

import httpx
import pytest
import test_site
from conftest import GENEROUS_LIMITS, running_server
from test_site import ARTIFACTS, SITE, needs_site, open_article, parse

from backend_ref.mail import LINK_PATHS, read_outbox, token_from_link

pytestmark = needs_site
browser, reader = test_site.browser, test_site.reader  # the fixtures of the comments' tests

PASSWORD = "a long passphrase"
NEW_PASSWORD = "tangerine kettle on the mountain pass"
INVALID_LINK = "This link is invalid, has expired or was already used."
ACCEPTED = "If an account uses this address, a message is on its way."


@pytest.fixture(scope="module")
def outbox(tmp_path_factory):
    return tmp_path_factory.mktemp("account-outbox")


@pytest.fixture(scope="module")
def server(tmp_path_factory, outbox):
    """The site and the API; login needs a verified address, so the 403 is the real one."""
    tmp_path = tmp_path_factory.mktemp("account-server")
    env = {
        "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/users.sqlite3",
        "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/content.sqlite3",
        "BACKEND_REF_SITE_DIR": str(SITE),
        "BACKEND_REF_OUTBOX_DIR": str(outbox),
        "BACKEND_REF_REQUIRE_VERIFIED_EMAIL": "true",
        **{f"BACKEND_REF_{name.upper()}": value for name, value in GENEROUS_LIMITS.items()},
    }
    with running_server(tmp_path, env, tmp_path / "server.log") as base:
        yield base
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def links(outbox, to: str, purpose: str) -> list[str]:
    """Every `purpose` link mailed to `to`, oldest first."""
    found = []
    for message in read_outbox(outbox):
        text = message.get_body(("plain",)).get_content()
        if message["To"] == to and token_from_link(text, purpose):
            found += [word for word in text.split() if f"{LINK_PATHS[purpose]}#token=" in word]
    return found


def next_link(outbox, to: str, purpose: str, seen: int = 0) -> str:
    """The link of the `seen + 1`-th `purpose` mail to `to` (mail is sent after the response)."""
    deadline = time.monotonic() + 10
    while len(found := links(outbox, to, purpose)) <= seen:
        assert time.monotonic() < deadline, f"no {purpose} mail to {to}"
        time.sleep(0.05)
    return found[seen]


def on_server(link: str, server: str) -> str:
    """The mailed link (public_url is the default dev server) on the test server's port."""
    parts = urlsplit(link)
    return f"{server}{parts.path}#{parts.fragment}"


def register(server, email, name="Ann"):
    account = {"email": email, "display_name": name, "password": PASSWORD}
    r = httpx.post(f"{server}/api/auth/register", json=account)
    assert r.status_code == 201, r.text


def login(server, email, password=PASSWORD) -> httpx.Response:
    return httpx.post(f"{server}/api/auth/token", data={"username": email, "password": password})


def open_link(page, server, link, purpose):
    """Open a mailed link; check the path, the redirect to the folder, and that the token left."""
    assert urlsplit(link).path == LINK_PATHS[purpose]  # exactly the page the mail names
    token = token_from_link(link, purpose)
    sent = []
    page.on("request", lambda request: sent.append(request.url))
    response = page.goto(on_server(link, server))
    assert response.status == 200
    redirected = response.request.redirected_from  # /account/x -> /account/x/, fragment kept
    assert redirected is not None and urlsplit(redirected.url).path == LINK_PATHS[purpose]
    page.wait_for_function("!location.hash")
    assert page.url == f"{server}{LINK_PATHS[purpose]}/"  # the token is not in the address bar
    return token, sent


def test_the_pages_are_static_labelled_and_load_no_inline_script():
    for purpose in LINK_PATHS.values():
        page = SITE / purpose.lstrip("/") / "index.html"
        found = parse(page)
        assert found.inline == []  # no inline script or style: a strict CSP can forbid both
        assert "/_static/account.js" in found.urls
        assert 'lang="en"' in page.read_text()
    reset = (SITE / "account" / "reset-password" / "index.html").read_text()
    (field,) = re.findall(r"<input[^>]*type=\"password\"[^>]*>", reset, re.S)
    assert 'autocomplete="new-password"' in field and 'id="br-new-password"' in field
    assert "onpaste" not in field and 'autocomplete="off"' not in field
    assert '<label for="br-new-password">New password</label>' in reset


def test_a_verification_link_verifies_the_address(reader, server, outbox):
    from playwright.sync_api import expect

    register(server, "vera@example.com", "Vera")
    r = login(server, "vera@example.com")
    assert (r.status_code, r.json()["error"]) == (403, "email_not_verified")

    link = next_link(outbox, "vera@example.com", "verify_email")
    token, sent = open_link(reader, server, link, "verify_email")
    status = reader.locator("#br-account [data-role=status]")
    expect(status).to_have_text(re.compile("^Your address is verified"))
    assert not any(token in url for url in sent)  # the token went in the POST body only

    r = login(server, "vera@example.com")
    assert r.status_code == 200, r.text
    me = httpx.get(
        f"{server}/api/users/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
    )
    assert me.json()["email_verified"] is True

    open_link(reader, server, link, "verify_email")  # the link works once
    expect(status).to_have_text(re.compile(f"^{INVALID_LINK}"))
    expect(reader.get_by_role("button", name="Send me a new link")).to_be_visible()


def test_an_unverified_reader_gets_the_link_again_from_the_comments_box(reader, server, outbox):
    from playwright.sync_api import expect

    register(server, "uma@example.com", "Uma")
    first = next_link(outbox, "uma@example.com", "verify_email")
    comments = open_article(reader, server, "verification")
    form = comments.locator("form[data-role=login]")
    resend = form.get_by_role("button", name="Send the link again")
    expect(resend).to_be_hidden()
    form.get_by_label("Email").fill("uma@example.com")
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Log in").click()
    expect(form.locator("[data-role=error]")).to_have_text(
        "Please verify your email address first: we sent you a link."
    )
    with reader.expect_response("**/api/auth/request-verification") as answer:
        resend.click()
    assert answer.value.status == 202
    expect(form.locator("[data-role=status]")).to_have_text(f"{ACCEPTED} Check your inbox.")
    expect(form.locator("[data-role=error]")).to_have_text("")

    second = next_link(outbox, "uma@example.com", "verify_email", seen=1)
    assert second != first
    page = reader.context.new_page()
    open_link(page, server, second, "verify_email")
    expect(page.locator("#br-account [data-role=status]")).to_contain_text("verified")
    page.close()

    form.get_by_role("button", name="Log in").click()  # the same form, now verified
    expect(comments.locator("[data-role=me]")).to_have_text("Uma")


def test_registering_in_the_comments_box_offers_the_link_again(reader, server, outbox):
    """Registration mails a link and signs straight in, which a verified-only site refuses."""
    from playwright.sync_api import expect

    comments = open_article(reader, server, "registration")
    form = comments.locator("form[data-role=register]")
    form.get_by_label("Email").fill("reg@example.com")
    form.get_by_label("Display name").fill("Reg")
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Register").click()
    expect(form.locator("[data-role=error]")).to_contain_text("Please verify your email address")
    form.get_by_role("button", name="Send the link again").click()
    expect(form.locator("[data-role=status]")).to_have_text(f"{ACCEPTED} Check your inbox.")
    assert next_link(outbox, "reg@example.com", "verify_email", seen=1)  # the second link
    ARTIFACTS.mkdir(exist_ok=True)
    comments.get_by_role("button", name="Forgot your password?").click()
    comments.screenshot(path=ARTIFACTS / "comments-forgot-password.png")


def test_a_reset_link_sets_a_new_password_and_ends_every_session(reader, server, outbox):
    from playwright.sync_api import expect

    email = "rita@example.com"
    register(server, email, "Rita")
    verify = token_from_link(next_link(outbox, email, "verify_email"), "verify_email")
    assert httpx.post(f"{server}/api/auth/verify-email", json={"token": verify}).status_code == 204
    session = login(server, email).json()

    comments = open_article(reader, server, "verification")  # "Forgot your password?"
    comments.locator("form[data-role=login]").get_by_label("Email").fill(email)
    forgot = comments.locator("form[data-role=forgot]")
    expect(forgot).to_be_hidden()
    comments.get_by_role("button", name="Forgot your password?").click()
    expect(forgot.get_by_label("Email")).to_have_value(email)  # carried over from log in
    expect(forgot.get_by_label("Email")).to_be_focused()
    with reader.expect_response("**/api/auth/forgot-password") as answer:
        forgot.get_by_role("button", name="Send me a reset link").click()
    assert answer.value.status == 202
    expect(forgot.locator("[data-role=status]")).to_have_text(f"{ACCEPTED} Check your inbox.")

    link = next_link(outbox, email, "reset_password")
    page = reader.context.new_page()
    token, sent = open_link(page, server, link, "reset_password")
    form = page.locator("form[data-role=reset]")
    field = form.get_by_label("New password")
    expect(field).to_have_attribute("type", "password")

    field.fill("password")  # weak: the reason, and the link still works
    with page.expect_response("**/api/auth/reset-password") as answer:
        form.get_by_role("button", name="Change my password").click()
    assert answer.value.status == 422
    (reason,) = [f["message"] for f in answer.value.json()["fields"]]
    expect(form.locator("[data-role=error]")).to_have_text(f"New password: {reason}")
    expect(field).to_have_attribute("aria-invalid", "true")

    field.fill(NEW_PASSWORD)
    form.get_by_role("button", name="Change my password").click()
    status = page.locator("#br-account [data-role=status]")
    expect(status).to_have_text(re.compile("^Your password was changed, and every session"))
    expect(form).to_be_hidden()
    expect(page.get_by_role("link", name="Back to the articles")).to_have_attribute("href", "/")
    assert not any(token in url for url in sent)

    assert login(server, email, NEW_PASSWORD).status_code == 200
    assert login(server, email).status_code == 401  # the old password is gone
    r = httpx.post(f"{server}/api/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert r.status_code == 401  # the session from before the reset has ended

    open_link(page, server, link, "reset_password")  # the link works once
    field.fill("another long passphrase entirely")
    form.get_by_role("button", name="Change my password").click()
    expect(status).to_have_text(re.compile(f"^{INVALID_LINK}"))
    expect(form).to_be_hidden()
    resend = page.locator("form[data-role=resend]")
    resend.get_by_label("Email").fill(email)
    resend.get_by_role("button", name="Send me a new link").click()
    expect(resend.locator("[data-role=sent]")).to_have_text(f"{ACCEPTED} Check your inbox.")
    assert next_link(outbox, email, "reset_password", seen=1) != link


def test_the_pages_without_a_token_offer_a_new_link(reader, server):
    from playwright.sync_api import expect

    for path in LINK_PATHS.values():
        reader.goto(f"{server}{path}")
        expect(reader.locator("#br-account [data-role=status]")).to_contain_text("has no token")
        expect(reader.get_by_role("button", name="Send me a new link")).to_be_visible()
    expect(reader.locator("form[data-role=reset]")).to_be_hidden()


def diagram_pages() -> list[str]:
    return sorted(
        page.name
        for page in SITE.glob("*.html")
        if re.search(r'<pre\s+class="mermaid', page.read_text(encoding="utf-8"))
    )


def test_every_mermaid_diagram_renders(reader, server):
    from playwright.sync_api import expect

    names = diagram_pages()
    assert {"databases.html", "registration.html", "verification.html"} <= set(names)
    broken = []
    for name in names:
        reader.goto(f"{server}/{name}")
        diagrams = reader.locator("pre.mermaid")
        count = diagrams.count()
        assert count >= 1, name
        expect(reader.locator("pre.mermaid svg")).to_have_count(count)  # every one was drawn
        for i in range(count):
            diagram = diagrams.nth(i)
            error = diagram.locator('svg[aria-roledescription="error"]').count()
            text = diagram.inner_text()
            if error or "Syntax error" in text:
                broken.append((name, i, text.strip()[:200]))
    assert broken == []
