"""Rate limits on login and registration: per address, per account, shared through Redis."""

import asyncio
import contextlib
import os
import uuid

import httpx
import pytest
from conftest import register, running_server

PASSWORD = "pw-ann-12345"


@pytest.fixture
def limits(app):
    """Set this test's limits on the running app (the fixture app is generous by default)."""

    def set_limits(**rules):
        from backend_ref.rate_limits import RateLimiter

        app.state.settings = app.state.settings.model_copy(update=rules)
        app.state.limiter = RateLimiter(app.state.settings)

    return set_limits


def client_from(app, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def attempt(client, email, password):
    return await client.post("/api/auth/token", data={"username": email, "password": password})


async def test_logins_from_one_address_are_limited_with_retry_after(app, client, limits):
    await register(client)
    limits(login_limit_per_address="3/day")
    statuses = [(await attempt(client, "ann@example.com", PASSWORD)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = await attempt(client, "ann@example.com", PASSWORD)
    assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    async with client_from(app, "127.0.0.5") as elsewhere:
        assert (await attempt(elsewhere, "ann@example.com", PASSWORD)).status_code == 200


async def test_failures_limit_one_address_without_locking_out_the_owner(app, client, limits):
    await register(client)
    limits(login_failures_per_account="3/day")
    async with client_from(app, "127.0.0.6") as attacker, client_from(app, "127.0.0.7") as owner:
        for _ in range(3):
            assert (await attempt(attacker, "ann@example.com", "guess-guess")).status_code == 401
        assert (await attempt(attacker, "ann@example.com", PASSWORD)).status_code == 429
        assert (await attempt(owner, "ann@example.com", PASSWORD)).status_code == 200


async def test_limited_answers_do_not_reveal_whether_the_account_exists(app, client, limits):
    await register(client)
    limits(login_failures_per_account="2/day")
    answers = {}
    for email in ("ann@example.com", "nobody@example.com"):
        for _ in range(2):
            await attempt(client, email, "guess-guess")
        answers[email] = await attempt(client, email, "guess-guess")
    known, unknown = answers.values()
    assert known.status_code == unknown.status_code == 429
    assert known.content == unknown.content
    assert known.headers.keys() == unknown.headers.keys()


async def test_a_successful_login_clears_the_failures_of_its_address(client, limits):
    await register(client)
    limits(login_failures_per_account="3/day")
    for _ in range(2):
        assert (await attempt(client, "ann@example.com", "guess-guess")).status_code == 401
    assert (await attempt(client, "ann@example.com", PASSWORD)).status_code == 200
    for _ in range(2):  # the count starts again: two more failures are still allowed
        assert (await attempt(client, "ann@example.com", "guess-guess")).status_code == 401
    assert (await attempt(client, "ann@example.com", PASSWORD)).status_code == 200


async def test_registrations_from_one_address_are_limited(client, limits):
    limits(register_limit_per_address="2/hour")
    bodies = [
        {"email": f"u{i}@example.com", "display_name": "U", "password": PASSWORD} for i in range(3)
    ]
    statuses = [(await client.post("/api/auth/register", json=b)).status_code for b in bodies]
    assert statuses == [201, 201, 429]


def test_a_rate_limit_that_does_not_parse_is_a_configuration_error():
    from pydantic import ValidationError

    from backend_ref.config import Settings

    with pytest.raises(ValidationError, match="login_limit_per_address"):
        Settings(_env_file=None, login_limit_per_address="often")


REDIS = os.environ.get("BACKEND_REF_TEST_REDIS_URL")


@pytest.mark.skipif(not REDIS, reason="BACKEND_REF_TEST_REDIS_URL is not set: no Redis to share")
async def test_two_server_processes_share_one_count_through_redis(tmp_path):
    env = {
        "BACKEND_REF_REDIS_URL": REDIS,
        "BACKEND_REF_REDIS_KEY_PREFIX": f"backend-ref-test-{uuid.uuid4().hex}",
        "BACKEND_REF_REGISTER_LIMIT_PER_ADDRESS": "4/hour",
    }

    def own_databases(name: str) -> dict[str, str]:  # only the count is shared, not SQLite files
        return {
            **env,
            "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/{name}-users.sqlite3",
            "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/{name}-content.sqlite3",
        }

    with (
        running_server(tmp_path, own_databases("first"), tmp_path / "first.log") as first,
        running_server(tmp_path, own_databases("second"), tmp_path / "second.log") as second,
    ):
        async with httpx.AsyncClient(timeout=10) as http:

            async def sign_up(i: int) -> int:
                base = (first, second)[i % 2]
                body = {"email": f"r{i}@example.com", "display_name": "R", "password": PASSWORD}
                return (await http.post(f"{base}/api/auth/register", json=body)).status_code

            statuses = await asyncio.gather(*(sign_up(i) for i in range(8)))
    assert sorted(statuses) == [201] * 4 + [429] * 4  # not 4 per process: one count for both


async def test_guesses_sent_at_once_cannot_outrun_the_failure_limit(app, client, limits):
    await register(client)
    limits(login_failures_per_account="5/day")
    guesses = [f"wrong-guess-{i}" for i in range(20)] + [PASSWORD]
    answers = await asyncio.gather(*(attempt(client, "ann@example.com", p) for p in guesses))
    statuses = [r.status_code for r in answers]
    assert sum(s in (200, 401) for s in statuses) <= 5  # at most 5 passwords were checked
    assert statuses.count(429) >= 16


async def test_x_forwarded_for_is_ignored_unless_a_proxy_is_named(tmp_path):
    env = {
        "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/users.sqlite3",
        "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/content.sqlite3",
        "BACKEND_REF_REGISTER_LIMIT_PER_ADDRESS": "1/hour",
    }
    with running_server(tmp_path, env, tmp_path / "server.log") as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            body = {"email": "a@example.com", "display_name": "A", "password": PASSWORD}
            assert (await http.post("/api/auth/register", json=body)).status_code == 201
            body["email"] = "b@example.com"
            spoofed = {"X-Forwarded-For": "203.0.113.9"}
            r = await http.post("/api/auth/register", json=body, headers=spoofed)
            assert r.status_code == 429  # still counted against the real peer address


def test_serving_beyond_loopback_with_the_placeholder_secret_is_refused(tmp_path):
    import subprocess

    from conftest import CLI

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKEND_REF_")}
    done = subprocess.run(
        [*CLI, "serve", "--host", "0.0.0.0", "--port", "9"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "JWT_SECRET must be set to serve beyond this machine" in done.stderr


@pytest.mark.skipif(not REDIS, reason="BACKEND_REF_TEST_REDIS_URL is not set: no Redis to share")
async def test_failed_logins_are_counted_once_across_processes(tmp_path):
    """Guesses spread over two servers meet one per-account limit, held in Redis."""
    prefix = f"backend-ref-test-{uuid.uuid4().hex}"
    servers = []
    with contextlib.ExitStack() as stack:
        for name in ("first", "second"):
            env = {
                "BACKEND_REF_REDIS_URL": REDIS,
                "BACKEND_REF_REDIS_KEY_PREFIX": prefix,
                "BACKEND_REF_LOGIN_FAILURES_PER_ACCOUNT": "4/hour",
                "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/{name}-users.sqlite3",
                "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/{name}-content.sqlite3",
            }
            log = tmp_path / f"{name}.log"
            servers.append(stack.enter_context(running_server(tmp_path, env, log)))
        async with httpx.AsyncClient(timeout=10) as http:
            account = {"email": "ann@example.com", "display_name": "Ann", "password": PASSWORD}
            for base in servers:  # the same account in each server's own database
                r = await http.post(f"{base}/api/auth/register", json=account)
                assert r.status_code == 201
            statuses = []
            for i in range(6):
                form = {"username": "ann@example.com", "password": f"wrong-guess-{i}"}
                r = await http.post(f"{servers[i % 2]}/api/auth/token", data=form)
                statuses.append(r.status_code)
            right = {"username": "ann@example.com", "password": PASSWORD}
            blocked = await http.post(f"{servers[0]}/api/auth/token", data=right)
    assert statuses == [401] * 4 + [429] * 2  # 2 + 2 failures, not 4 per process
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0


async def test_registrations_of_one_email_are_limited_alike_taken_or_not(client, limits):
    limits(register_limit_per_account="3/hour")
    body = {"email": "ann@example.com", "display_name": "Ann", "password": PASSWORD}
    statuses = [(await client.post("/api/auth/register", json=body)).status_code for _ in range(4)]
    assert statuses == [201, 409, 409, 429]
    spellings = [
        "Nobody@Example.com",
        "nobody@example.com",
        "NOBODY@example.com",
        "nobody@EXAMPLE.com",
    ]
    statuses = [
        (await client.post("/api/auth/register", json={**body, "email": email})).status_code
        for email in spellings
    ]
    assert statuses == [201, 409, 409, 429]  # letter case does not make a new email
    other = {**body, "email": "bob@example.com"}
    assert (await client.post("/api/auth/register", json=other)).status_code == 201
