"""End to end: the `backend-ref` command, a real server process, a real HTTP client."""

import asyncio
import os
import subprocess

import httpx
import pytest
from conftest import CLI, ROOT, running_server


@pytest.fixture
def server_log(tmp_path):
    return tmp_path / "server.log"


@pytest.fixture
def server(tmp_path, server_log):
    env = {
        "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/users.sqlite3",
        "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/content.sqlite3",
    }
    synced = subprocess.run(
        [*CLI, "sync-articles", str(ROOT / "nbs")],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith("synced ")
    with running_server(tmp_path, env, server_log) as base:
        yield base


async def test_a_reader_registers_logs_in_and_comments_over_real_http(server):
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        articles = (await http.get("/api/articles")).json()
        slugs = {a["slug"] for a in articles}
        assert {"config", "databases", "schemas", "registration", "comments", "app"} <= slugs

        r = await http.post(
            "/api/auth/register",
            json={
                "email": "Reader@Example.com",
                "display_name": "Reader",
                "password": "a long passphrase",
            },
        )
        assert r.status_code == 201, r.text
        r = await http.post(
            "/api/auth/token",
            data={"username": "reader@example.com", "password": "a long passphrase"},
        )
        assert r.status_code == 200
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}

        me = (await http.get("/api/users/me", headers=headers)).json()
        assert (me["email"], me["display_name"]) == ("Reader@example.com", "Reader")

        r = await http.post(
            "/api/articles/databases/comments", headers=headers, json={"body": "Clear, thanks!"}
        )
        assert r.status_code == 201
        page = (await http.get("/api/articles/databases/comments")).json()
        assert page["total"] == 1
        assert page["items"][0]["body"] == "Clear, thanks!"
        assert page["items"][0]["author"] == {"id": me["id"], "display_name": "Reader"}

        assert (await http.get("/api/docs")).status_code == 200
        r = await http.post(
            "/api/auth/register", content=b"{", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"] == "malformed_json"


async def test_concurrent_requests_on_keep_alive_connections_all_succeed(server, server_log):
    """Requests that overlap in one process must not disturb each other's ORM context."""
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=server, timeout=10, limits=limits) as http:

        async def worker():
            url = "/api/articles/databases/comments"
            return [(await http.get(url)).status_code for _ in range(20)]

        batches = await asyncio.gather(*(worker() for _ in range(20)))
    assert [status for batch in batches for status in batch] == [200] * 400
    log = server_log.read_text()
    assert "Traceback" not in log and "Exception" not in log, log[-2000:]


async def test_a_large_body_gets_a_413_from_the_real_server(server):
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        r = await http.post("/api/auth/register", content=b"{" + b" " * 2_000_000 + b"}")
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")


async def test_every_response_carries_the_security_headers(server):
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        for path in ("/api/health", "/api/nowhere", "/api/articles/Bad_Slug"):
            r = await http.get(path)
            assert r.headers["x-content-type-options"] == "nosniff", path
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["referrer-policy"] == "same-origin", path


@pytest.mark.parametrize(
    "method, path, status, allow",
    [
        ("GET", "/api/auth/token", 405, {"POST"}),
        ("PUT", "/api/auth/token", 405, {"POST"}),
        ("DELETE", "/api/users/me", 405, None),  # Starlette's Allow names the first route only
        ("GET", "/api/no-such-route", 404, None),
        ("POST", "/api", 404, None),
    ],
)
async def test_the_site_at_the_root_leaves_api_errors_to_the_api(
    tmp_path, method, path, status, allow
):
    """A built site is mounted at `/`; it must not answer for `/api` paths that have no route."""
    from conftest import make_settings

    from backend_ref.app import create_app

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>articles</h1>")
    app = create_app(make_settings("sqlite", tmp_path, site_dir=site))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).text == "<h1>articles</h1>"
            r = await client.request(method, path)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert r.json()["error"] in ("not_found", "method_not_allowed")
    if allow:
        assert {m.strip() for m in r.headers["allow"].split(",")} == allow


async def test_the_server_logs_account_events_with_time_level_and_logger(server, server_log):
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        body = {"email": "logged@example.com", "display_name": "L", "password": "a long passphrase"}
        assert (await http.post("/api/auth/register", json=body)).status_code == 201
        form = {"username": "logged@example.com", "password": "a long passphrase"}
        assert (await http.post("/api/auth/token", data=form)).status_code == 200
        form["password"] = "a wrong passphrase"
        assert (await http.post("/api/auth/token", data=form)).status_code == 401
    await asyncio.sleep(0.2)  # the server writes its log lines as it goes
    log = server_log.read_text()
    lines = [line for line in log.splitlines() if " backend_ref.sessions: " in line]
    assert any(" INFO backend_ref.sessions: login: user=" in line for line in lines), log
    assert any(" WARNING backend_ref.sessions: login failed: " in line for line in lines), log
    assert all(line[:4].isdigit() for line in lines)  # starts with the date and time
    assert "a long passphrase" not in log and "a wrong passphrase" not in log


async def test_personal_responses_are_not_stored_by_caches(server):
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        body = {"email": "cache@example.com", "display_name": "C", "password": "a long passphrase"}
        assert (await http.post("/api/auth/register", json=body)).status_code == 201
        form = {"username": "cache@example.com", "password": "a long passphrase"}
        token = (await http.post("/api/auth/token", data=form)).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        for path in ("/api/users/me", "/api/auth/sessions", "/api/articles"):
            r = await http.get(path, headers=auth)
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store", path
        r = await http.get("/api/users/me", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.headers["cache-control"] == "no-store"
        assert "cache-control" not in (await http.get("/api/articles")).headers  # public
