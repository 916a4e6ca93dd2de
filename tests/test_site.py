"""The articles site: the built pages (offline, executed, no nbdev directives, working links) and
the comments section driven in a real browser (Debian's Chromium through Playwright) against a
real server process on a loopback port."""

import html
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import ROOT, running_server

SITE = ROOT / "_site"
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "article-with-comments.png"
CHROMIUM = Path(os.environ.get("BACKEND_REF_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

needs_site = pytest.mark.skipif(
    not (SITE / "index.html").is_file(), reason="no built site in _site/: run `make docs`"
)
pytestmark = needs_site


def pages() -> list[Path]:
    return sorted(SITE.rglob("*.html"))


def article_slugs() -> list[str]:
    return [a["slug"] for a in json.loads((SITE / "articles.json").read_text())]


class Resources(HTMLParser):
    """Every URL a page would load (not links a reader may follow), and inline scripts/styles."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "embed": "src"}
    LOADS |= {"video": "src", "audio": "src", "object": "data", "track": "src"}

    def __init__(self):
        super().__init__()
        self.urls, self.inline, self.links, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.LOADS and attrs.get(self.LOADS[tag]):
            self.urls.append(attrs[self.LOADS[tag]])
        if tag == "link" and attrs.get("href"):
            if not {"canonical", "alternate"} & set((attrs.get("rel") or "").split()):
                self.urls.append(attrs["href"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if "style" in attrs:
            self.inline.append(attrs["style"])
        self._in = tag if tag in ("script", "style") else None

    def handle_data(self, data):
        if self._in:
            self.inline.append(data)

    def handle_endtag(self, tag):
        self._in = None


def parse(page: Path) -> Resources:
    parser = Resources()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


# URLs that code or CSS would fetch: url(...), @import, import ... from "...", import("...")
FETCHED = re.compile(
    r"""(?:url\(\s*["']?|@import\s+(?:url\()?["']?|\bfrom\s*["']|\bimport\s*\(?\s*["'])"""
    r"""((?:https?:)?//[^"')\s]+)"""
)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def foreign(url: str) -> bool:
    """A URL on another host (relative URLs and loopback are ours)."""
    parts = urlsplit(url)
    return bool(parts.netloc) and parts.hostname not in LOOPBACK


def test_password_fields_are_masked_and_let_password_managers_fill_them():
    """ASVS 6.2.6 and 6.2.7: type=password, and no attribute that blocks paste or autofill."""
    page = (SITE / "databases.html").read_text(encoding="utf-8")
    fields = re.findall(r"<input[^>]*name=\"password\"[^>]*>", page)
    assert len(fields) == 2, fields  # log in, register
    for field in fields:
        assert 'type="password"' in field
        assert re.search(r'autocomplete="(current|new)-password"', field)
        assert "onpaste" not in field and 'autocomplete="off"' not in field


def test_pages_load_nothing_from_another_host():
    problems = []
    for page in pages():
        found = parse(page)
        problems += [(page.name, url) for url in found.urls if foreign(url)]
        for text in found.inline:
            problems += [(page.name, url) for url in FETCHED.findall(text) if foreign(url)]
    for asset in [*SITE.rglob("*.css"), *SITE.rglob("*.js"), *SITE.rglob("*.mjs")]:
        text = asset.read_text(encoding="utf-8", errors="replace")
        text = CSS_COMMENT.sub("", text) if asset.suffix == ".css" else text
        problems += [(asset.name, url) for url in FETCHED.findall(text) if foreign(url)]
    assert problems == []
    assert (SITE / "_static" / "mermaid.esm.min.mjs").is_file()  # Mermaid is served by us


def code_of(slug: str) -> str:
    """The text of every code block (cells and outputs) of a page."""
    blocks = re.findall(r"<pre.*?</pre>", (SITE / f"{slug}.html").read_text(), re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", "\n".join(blocks)))


def test_every_notebook_is_an_executed_article_without_directives():
    slugs = article_slugs()
    assert {"config", "databases", "registration", "comments", "app", "site"} <= set(slugs)
    for slug in [*slugs, "index"]:
        directives = re.findall(r"^\s*#\|.*$", code_of(slug), re.M)
        assert directives == [], slug  # no `#| export`, `#| default_exp`, `#| hide` line
    app_code = code_of("app")
    assert "import tempfile" not in app_code  # a `#| hide` cell: it ran, it is not shown
    assert "def create_app(settings: Settings | None = None)" in app_code  # an exported cell
    outputs = re.findall(
        r'<div class="cell_output.*?</div>\s*</div>', (SITE / "app.html").read_text(), re.S
    )
    assert any("/api/articles/{slug}/comments" in o for o in outputs)  # executed at build time


def test_links_between_pages_resolve():
    broken = []
    for page in pages():
        for href in parse(page).links:
            target = urlsplit(href)
            if target.scheme or target.netloc or not target.path or href.startswith("/api/"):
                continue
            path = (
                SITE / target.path.lstrip("/")
                if href.startswith("/")
                else page.parent / target.path
            )
            if not path.resolve().exists():
                broken.append((page.relative_to(SITE).as_posix(), href))
    assert broken == []
    index_links = parse(SITE / "index.html").links
    assert "databases.html" in index_links and "app.html" in index_links
    assert "databases.html" in parse(SITE / "app.html").links
    databases = (SITE / "databases.html").read_text()  # previous and next in reading order
    assert re.search(r'class="left-prev"\s+href="config.html"', databases)
    assert re.search(r'class="right-next"\s+href="schemas.html"', databases)


def test_the_archive_and_the_feed_list_every_article():
    feed = (SITE / "articles" / "atom.xml").read_text()
    archive = (SITE / "articles.html").read_text()
    for slug in article_slugs():
        assert f"{slug}.html" in feed and f"{slug}.html" in archive, slug


def test_diagrams_are_in_the_articles():
    assert 'class="mermaid' in (SITE / "databases.html").read_text()  # entity diagram
    assert "sequenceDiagram" in (SITE / "registration.html").read_text()


# The browser tests: a real server process serving the built site and the API.


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("site-server")
    env = {
        "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/users.sqlite3",
        "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/content.sqlite3",
        "BACKEND_REF_SITE_DIR": str(SITE),
    }
    with running_server(tmp_path, env, tmp_path / "server.log") as base:
        yield base
    assert "Traceback" not in (tmp_path / "server.log").read_text()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BACKEND_REF_CHROMIUM)"
        )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def reader(browser, server):
    """A new reader: a fresh browser context (no cookies, no storage) and a page in it."""
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    hosts = set()
    context.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    page = context.new_page()
    page.hosts = hosts
    yield page
    context.close()
    assert hosts <= {urlsplit(server).netloc}  # nothing loaded from another host


def open_article(page, server, slug="databases"):
    from playwright.sync_api import expect

    page.goto(f"{server}/{slug}.html")
    expect(page.locator("#br-comments [data-role=count]")).not_to_have_text("Loading comments…")
    return page.locator("#br-comments")


def register(comments, email, name, password="a long passphrase"):
    form = comments.locator("form[data-role=register]")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Display name").fill(name)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Register").click()


def log_in(comments, email, password="a long passphrase"):
    form = comments.locator("form[data-role=login]")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Log in").click()


def post(comments, body):
    comments.get_by_label("Your comment").fill(body)
    comments.get_by_role("button", name="Post comment").click()


def test_readers_register_log_in_comment_and_see_each_other(reader, browser, server):
    from playwright.sync_api import expect

    comments = open_article(reader, server)
    expect(comments.locator("[data-role=count]")).to_have_text("No comments yet.")
    register(comments, "ann@example.com", "Ann")
    expect(comments.locator("[data-role=me]")).to_have_text("Ann")
    post(comments, "Clear, thanks!\nThe diagram helps.")
    expect(comments.locator(".br-comment")).to_have_count(1)
    expect(comments.locator("[data-role=count]")).to_have_text("1 comment")

    reader.reload()  # the token was in memory only: logged out, the comment stays
    expect(comments.locator(".br-comment .br-body")).to_have_text(
        ["Clear, thanks!\nThe diagram helps."]
    )
    expect(comments.locator(".br-comment .br-author")).to_have_text(["Ann"])
    expect(comments.locator("form[data-role=login]")).to_be_visible()
    expect(comments.locator("[data-role=signed-in]")).to_be_hidden()

    log_in(comments, "ANN@example.com")  # any letter case
    expect(comments.locator("[data-role=me]")).to_have_text("Ann")
    post(comments, "One more thing.")
    expect(comments.locator(".br-comment")).to_have_count(2)

    second = browser.new_context().new_page()
    try:
        other = open_article(second, server)
        expect(other.locator(".br-comment .br-body")).to_have_text(
            ["Clear, thanks!\nThe diagram helps.", "One more thing."]
        )
        expect(other.locator("[data-role=count]")).to_have_text("2 comments")
        register(other, "bob@example.com", "Bob")
        expect(other.locator("[data-role=me]")).to_have_text("Bob")
        post(other, "Agreed.")
        expect(other.locator(".br-comment .br-author")).to_have_text(["Ann", "Ann", "Bob"])
        other.get_by_role("button", name="Log out").click()
        expect(other.locator("form[data-role=login]")).to_be_visible()
    finally:
        second.context.close()

    reader.reload()
    expect(comments.locator(".br-comment")).to_have_count(3)
    expect(comments.locator(".br-comment time").first).to_have_attribute(
        "datetime", re.compile("20")
    )
    comments.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    reader.set_viewport_size({"width": 1280, "height": 1400})
    reader.evaluate("document.getElementById('br-comments').scrollIntoView({block: 'end'})")
    reader.screenshot(path=SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


def test_an_expired_access_token_is_refreshed_once_and_logout_ends_the_session(reader, server):
    """The page renews its access token with the refresh token, and "Log out" tells the server."""
    from playwright.sync_api import expect

    comments = open_article(reader, server, slug="sessions")
    register(comments, "cy@example.com", "Cy")
    expect(comments.locator("[data-role=me]")).to_have_text("Cy")

    expired = {"error": "invalid_token", "message": "The access token is invalid or expired."}
    refused = []

    def expire_once(route):  # the server's answer to an expired access token, once
        if route.request.method == "POST" and not refused:
            refused.append(route.request.url)
            route.fulfill(status=401, json=expired, headers={"WWW-Authenticate": "Bearer"})
        else:
            route.continue_()

    reader.route("**/api/articles/sessions/comments", expire_once)
    with reader.expect_response("**/api/auth/refresh") as refresh:
        post(comments, "Posted after a silent refresh.")
    assert refresh.value.status == 200 and refused
    expect(comments.locator(".br-comment .br-body")).to_have_text(
        ["Posted after a silent refresh."]
    )
    expect(comments.locator("[data-role=me]")).to_have_text("Cy")  # still signed in

    with reader.expect_response("**/api/auth/logout") as logout:
        comments.get_by_role("button", name="Log out").click()
    assert logout.value.status == 204
    sent = json.loads(logout.value.request.post_data)
    assert set(sent) == {"refresh_token"}
    r = httpx.post(f"{server}/api/auth/refresh", json=sent)  # the session is over on the server
    assert (r.status_code, r.json()["error"]) == (401, "invalid_refresh_token")
    expect(comments.locator("form[data-role=login]")).to_be_visible()


def test_comments_are_text_never_html(reader, server):
    from playwright.sync_api import expect

    attacks = [
        "<script>window.pwned = 'script'</script>",
        "<img src=x onerror=\"window.pwned = 'img'\">",
    ]
    comments = open_article(reader, server, "schemas")
    register(comments, "mallory@example.com", "<b>Mallory</b>")
    expect(comments.locator("[data-role=me]")).to_have_text("<b>Mallory</b>")
    for attack in attacks:
        post(comments, attack)
    expect(comments.locator(".br-comment .br-body")).to_have_text(attacks)
    reader.reload()  # and as rendered from the API
    expect(comments.locator(".br-comment .br-body")).to_have_text(attacks)
    expect(comments.locator(".br-comment .br-author")).to_have_text(["<b>Mallory</b>"] * 2)
    assert comments.locator(".br-list img, .br-list script, .br-list b").count() == 0
    assert reader.evaluate("window.pwned") is None


def test_api_errors_are_shown_in_words(reader, server):
    from playwright.sync_api import expect

    comments = open_article(reader, server, "errors")
    register_form = comments.locator("form[data-role=register]")
    register(comments, "not-an-email", "Eve", password="short")
    error = register_form.locator("[data-role=error]")
    expect(error).to_contain_text("Email:")  # 422, each field named
    expect(error).to_contain_text("Password:")
    expect(register_form.get_by_label("Password")).to_have_attribute("aria-invalid", "true")

    register(comments, "eve@example.com", "Eve")
    expect(comments.locator("[data-role=me]")).to_have_text("Eve")
    post(comments, "")
    expect(comments.locator("form[data-role=post] [data-role=error]")).to_contain_text("Comment:")
    comments.get_by_role("button", name="Log out").click()

    register(comments, "EVE@example.com", "Eve again")  # 409
    expect(register_form.locator("[data-role=error]")).to_have_text(
        "An account with this email already exists. Log in instead."
    )
    log_in(comments, "eve@example.com", "the wrong password")  # 401
    login_error = comments.locator("form[data-role=login] [data-role=error]")
    expect(login_error).to_have_text("Wrong email or password.")

    # 429 and an expired token, as the API would answer them
    reader.route(
        "**/api/auth/token",
        lambda route: route.fulfill(
            status=429, json={"error": "too_many_requests", "message": "Slow down.", "fields": []}
        ),
    )
    log_in(comments, "eve@example.com")
    expect(login_error).to_have_text(
        "Too many requests right now. Please wait a moment and try again."
    )
    reader.unroute("**/api/auth/token")
    log_in(comments, "eve@example.com")
    expect(comments.locator("[data-role=me]")).to_have_text("Eve")
    reader.route(
        "**/api/articles/errors/comments",
        lambda route: (
            route.fulfill(
                status=401, json={"error": "invalid_token", "message": "Expired.", "fields": []}
            )
            if route.request.method == "POST"
            else route.continue_()
        ),
    )
    post(comments, "Still there?")
    expect(login_error).to_have_text("Your session has ended. Please log in again.")
    expect(comments.locator("[data-role=signed-in]")).to_be_hidden()


def test_the_server_serves_the_site_at_the_root_and_the_api_under_api(server):
    home = httpx.get(f"{server}/")
    assert home.status_code == 200 and "backend-ref" in home.text
    assert httpx.get(f"{server}/api/health").json()["status"] == "ok"
    synced = {a["slug"] for a in httpx.get(f"{server}/api/articles").json()}
    assert synced == set(article_slugs())  # rows made from the site's articles.json at start-up
