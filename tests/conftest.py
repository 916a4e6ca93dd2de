"""Fixtures: one app per database backend, started through its real lifespan."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
from tortoise.context import TortoiseContext

from backend_ref.app import create_app
from backend_ref.config import Settings
from backend_ref.databases import AccountToken, Article, Comment, RefreshToken, User

# A server URL prefix per backend; the suite uses the databases <prefix>_users and <prefix>_content.
# .ci/run sets both and creates the databases; on a machine without them those tests skip.
SERVER_ENV = {
    "postgres": "BACKEND_REF_TEST_POSTGRES_URL",
    "mariadb": "BACKEND_REF_TEST_MARIADB_URL",
}


def backend_params():
    params = [pytest.param("sqlite", id="sqlite")]
    for name, env in SERVER_ENV.items():
        reason = f"{env} is not set: no {name} server to test against"
        marks = [] if os.environ.get(env) else [pytest.mark.skip(reason=reason)]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


# Tests register and log in far more often than a person; tests of the limits set their own.
GENEROUS_LIMITS = {
    "login_limit_per_address": "10000/minute",
    "login_failures_per_account": "10000/minute",
    "register_limit_per_address": "10000/minute",
    "register_limit_per_account": "10000/minute",
    "comment_limit_per_user": "10000/minute",
    "refresh_limit_per_address": "10000/minute",
    "email_limit_per_address": "10000/minute",
    "email_limit_per_account": "10000/minute",
}


def make_settings(backend: str, tmp_path, **overrides) -> Settings:
    if backend == "sqlite":
        users, content = (
            f"sqlite://{tmp_path}/users.sqlite3",
            f"sqlite://{tmp_path}/content.sqlite3",
        )
    else:
        prefix = os.environ[SERVER_ENV[backend]]
        users, content = f"{prefix}_users", f"{prefix}_content"
    return Settings(
        _env_file=None,
        environment="test",
        users_db_url=users,
        content_db_url=content,
        outbox_dir=tmp_path / "outbox",
        # generate_schemas, fast; tests/test_migrations.py migrates
        **{"schema_setup": "create", **GENEROUS_LIMITS, **overrides},
    )


async def empty_tables(ctx: TortoiseContext) -> None:
    """Servers keep their databases between tests: start each test from empty tables."""
    with ctx:
        await Comment.all().delete()
        await Article.all().delete()
        await RefreshToken.all().delete()
        await AccountToken.all().delete()
        await User.all().delete()


@asynccontextmanager
async def started_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `create_app(settings)`, started through its lifespan, on empty tables."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await empty_tables(app.state.tortoise)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture(params=backend_params())
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(backend, tmp_path) -> Settings:
    return make_settings(backend, tmp_path)


@pytest.fixture
async def app(settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await empty_tables(app.state.tortoise)
        yield app


@pytest.fixture
def ctx(app) -> TortoiseContext:
    """The app's ORM context: `with ctx:` to query the models directly in a test."""
    return app.state.tortoise


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app)  # an exception in the app fails the test
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def register(client, email="ann@example.com", password="pw-ann-12345", name="Ann"):
    r = await client.post(
        "/api/auth/register", json={"email": email, "display_name": name, "password": password}
    )
    assert r.status_code == 201, r.text
    return r.json()


async def token_pair(client, email="ann@example.com", password="pw-ann-12345") -> dict:
    """Log in; the answer's access and refresh tokens."""
    r = await client.post("/api/auth/token", data={"username": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


async def login(client, email="ann@example.com", password="pw-ann-12345") -> dict[str, str]:
    return bearer(await token_pair(client, email, password))


ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from backend_ref.app import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(cwd: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`backend-ref serve` on a free loopback port until the block ends; yields its base URL."""
    port = free_port()
    env = {**os.environ, **env, "BACKEND_REF_HOST": "127.0.0.1", "BACKEND_REF_PORT": str(port)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*CLI, "serve"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "server did not become healthy in 30 s"
                time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=10)
