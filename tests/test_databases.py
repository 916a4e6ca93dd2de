"""Two databases, never merged: on SQLite always, on PostgreSQL and MariaDB when configured."""

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
from tortoise.exceptions import ParamsError
from tortoise.transactions import in_transaction

from backend_ref.app import create_app
from backend_ref.config import Settings
from backend_ref.databases import Article, User, table_names, user_exists


async def test_each_table_lives_only_in_its_own_database(ctx):
    assert await table_names(ctx.db("users")) == {"users", "refresh_tokens", "account_tokens"}
    assert await table_names(ctx.db("content")) == {"articles", "comments"}


async def test_rollback_on_one_database_leaves_the_other_untouched(ctx):
    with ctx:
        async with in_transaction("users"):
            user = await User.create(
                email="a@example.com",
                email_key="a@example.com",
                display_name="A",
                password_hash="x",
            )
        with pytest.raises(RuntimeError):
            async with in_transaction("content"):
                await Article.create(slug="draft", title="Draft")
                assert await Article.filter(slug="draft").exists()
                raise RuntimeError("fail after the write")
        assert await user_exists(user.id)
        assert not await Article.filter(slug="draft").exists()


async def test_rollback_on_users_leaves_content_untouched(ctx):
    with ctx:
        await Article.create(slug="kept", title="Kept")
        with pytest.raises(RuntimeError):
            async with in_transaction("users"):
                await User.create(
                    email="b@example.com",
                    email_key="b@example.com",
                    display_name="B",
                    password_hash="x",
                )
                raise RuntimeError("fail")
        assert await Article.filter(slug="kept").exists()
        assert not await User.filter(email_key="b@example.com").exists()


async def test_a_transaction_must_name_its_database(ctx):
    with ctx, pytest.raises(ParamsError):
        async with in_transaction():
            pass


async def test_length_counts_characters_on_every_backend(ctx):
    """50 four-byte characters fit a 50-character column everywhere (bytes would not)."""
    with ctx:
        user = await User.create(
            email="e@example.com",
            email_key="e@example.com",
            display_name="😀" * 50,
            password_hash="x",
        )
        assert (await User.get(id=user.id)).display_name == "😀" * 50


async def test_health_reports_each_database(client):
    r = await client.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "databases": {"users": "ok", "content": "ok"}}


async def test_health_is_503_when_a_database_is_gone(app, client, monkeypatch):
    async def database_down(*args, **kwargs):
        raise ConnectionError("database is down")

    monkeypatch.setattr(app.state.tortoise.db("content"), "execute_query", database_down)
    r = await client.get("/api/health")
    assert r.status_code == 503
    assert r.json() == {
        "status": "degraded",
        "databases": {"users": "ok", "content": "unavailable"},
    }


async def test_two_apps_in_one_process_keep_their_own_databases(tmp_path):
    def settings(name):
        return Settings(
            _env_file=None,
            users_db_url=f"sqlite://{tmp_path}/{name}-users.sqlite3",
            content_db_url=f"sqlite://{tmp_path}/{name}-content.sqlite3",
        )

    first, second = create_app(settings("first")), create_app(settings("second"))
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        with first.state.tortoise:
            await Article.create(slug="only-in-first", title="First")
        with second.state.tortoise:
            assert not await Article.filter(slug="only-in-first").exists()
        with first.state.tortoise:
            assert await Article.filter(slug="only-in-first").exists()


def test_importing_the_package_connects_to_nothing_and_reads_no_settings():
    """Import every module with unreadable settings and an unreachable database."""
    env = {
        **os.environ,
        "BACKEND_REF_PORT": "not a port",
        "BACKEND_REF_USERS_DB_URL": "postgres://nobody@127.0.0.1:1/nothing",
    }
    code = "import backend_ref.app, backend_ref.comments, backend_ref.registration; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
    with pytest.raises(ValueError, match="port"):
        Settings(_env_file=None, port="not a port")


async def test_overlapping_requests_each_keep_their_own_orm_context(app, ctx):
    """Regression: the middleware entered the shared context object with `with ctx:`, which keeps
    one reset token per object, so overlapping requests swapped tokens and failed with
    "ValueError: ... was created in a different Context" (a browser loads pages in parallel)."""
    with ctx:
        await Article.create(slug="hello", title="Hello")
    transport = httpx.ASGITransport(app)  # raises what the app raises, even after the response
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        paths = ["/api/articles", "/api/health", "/api/articles/hello", "/api/articles/nope"]
        answers = await asyncio.gather(*(client.get(path) for path in paths * 10))
    assert [r.status_code for r in answers] == [200, 200, 200, 404] * 10
