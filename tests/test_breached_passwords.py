"""The breached-password check against a real HTTP server on loopback speaking the range API."""

import asyncio
import hashlib
import logging

import httpx
import pytest
import uvicorn
from conftest import empty_tables, free_port, make_settings, register

from backend_ref.app import create_app
from backend_ref.config import Settings
from backend_ref.databases import User

LEAKED = "correct horse battery staple"  # strong by zxcvbn's measure, and in every breach list


def sha1(password: str) -> str:
    return hashlib.sha1(password.encode(), usedforsecurity=False).hexdigest().upper()


@pytest.fixture
async def range_api():
    """A Pwned Passwords range API on a free loopback port; yields (url, the paths it was asked)."""
    asked: list[str] = []
    breached = {sha1(LEAKED): 3730, sha1("another leaked passphrase"): 2}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        prefix = scope["path"].rsplit("/", 1)[-1]
        asked.append(scope["path"])
        lines = [f"{h[5:]}:{n}" for h, n in breached.items() if h.startswith(prefix)]
        lines.append(f"{sha1('padding')[5:]}:0")  # a padding line: count 0, never a match
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": "\r\n".join(lines).encode()})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # up to 5 s
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "the range API did not start"
    try:
        yield f"http://127.0.0.1:{port}/range/", asked
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(backend, tmp_path, range_api):
    url, asked = range_api
    app = create_app(make_settings(backend, tmp_path, breached_password_api=url))
    async with app.router.lifespan_context(app):
        await empty_tables(app.state.tortoise)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app.state.tortoise, asked


async def test_a_breached_password_is_refused_at_registration(api):
    client, ctx, asked = api
    body = {"email": "ann@example.com", "display_name": "Ann", "password": LEAKED}
    r = await client.post("/api/auth/register", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "weak_password"
    assert r.json()["fields"][0] == {
        "field": "password",
        "location": "body",
        "message": "This password appears in known data breaches.",
        "type": "password_breached",
    }
    assert LEAKED not in r.text
    with ctx:
        assert await User.all().count() == 0  # nothing written
    assert asked == [f"/range/{sha1(LEAKED)[:5]}"]  # only the 5-digit prefix left the server


async def test_a_password_not_in_a_breach_is_accepted(api):
    client, _, asked = api
    await register(client, password="a passphrase nobody leaked")
    assert len(asked) == 1 and sha1("a passphrase nobody leaked")[5:] not in asked[0]


async def test_a_password_change_to_a_breached_password_names_new_password(api):
    client, _, _ = api
    await register(client)
    r = await client.post(
        "/api/auth/token", data={"username": "ann@example.com", "password": "pw-ann-12345"}
    )
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    change = {"current_password": "pw-ann-12345", "new_password": "another leaked passphrase"}
    r = await client.post("/api/users/me/password", headers=headers, json=change)
    assert r.status_code == 422
    assert (r.json()["fields"][0]["field"], r.json()["fields"][0]["type"]) == (
        "new_password",
        "password_breached",
    )


async def test_the_check_fails_open_when_the_service_is_down(tmp_path, caplog):
    down = f"http://127.0.0.1:{free_port()}/range/"  # nothing listens there
    app = create_app(make_settings("sqlite", tmp_path, breached_password_api=down))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            with caplog.at_level(logging.WARNING, logger="backend_ref.security"):
                await register(client, password=LEAKED)  # zxcvbn alone judges it: accepted
    assert "breached-password check skipped: ConnectError" in caplog.text
    assert LEAKED not in caplog.text


@pytest.mark.parametrize(
    "url",
    ["http://pwned.example/range/", "ftp://127.0.0.1/range/", "http://10.0.0.1/range/"],
)
def test_the_range_api_must_be_https_or_loopback(url):
    with pytest.raises(ValueError, match="must be https"):
        Settings(_env_file=None, breached_password_api=url)
