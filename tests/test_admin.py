"""Admin: the superuser check, the list of users, disable and enable, and the console commands."""

import logging
import os
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from conftest import CLI, bearer, login, make_settings, register, token_pair

from backend_ref.app import main
from backend_ref.config import Settings
from backend_ref.databases import AccountToken, RefreshToken, User
from backend_ref.mail import read_outbox, token_from_link
from backend_ref.security import create_access_token

PASSWORD = "pw-ann-12345"
ADMIN_EMAIL, ADMIN_PASSWORD = "root@example.com", "quiet river of lanterns"
ITEM_FIELDS = {
    "id",
    "email",
    "display_name",
    "is_active",
    "email_verified",
    "is_superuser",
    "created_at",
}


async def make_superuser(client, ctx, email=ADMIN_EMAIL, password=ADMIN_PASSWORD) -> dict:
    """Register an account, promote it in the database, log in; its Authorization header."""
    user = await register(client, email=email, password=password, name="Root")
    with ctx:
        await User.filter(id=user["id"]).update(is_superuser=True)
    return {**await login(client, email=email, password=password), "id": str(user["id"])}


def auth(headers: dict) -> dict:
    return {"Authorization": headers["Authorization"]}


def admin_routes(user_id: int) -> list[tuple[str, str]]:
    return [
        ("GET", "/api/admin/users"),
        ("POST", f"/api/admin/users/{user_id}/disable"),
        ("POST", f"/api/admin/users/{user_id}/enable"),
        ("POST", f"/api/admin/users/{user_id}/end-sessions"),
        ("POST", f"/api/admin/users/{user_id}/send-reset"),
    ]


async def test_without_a_token_every_admin_route_is_401_with_bearer(client, ctx):
    ann = await register(client)
    for method, path in admin_routes(ann["id"]):
        for headers in ({}, {"Authorization": "Bearer not.a.token"}, {"Authorization": "Basic x"}):
            r = await client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"] in ("not_authenticated", "invalid_token")


async def test_a_normal_user_gets_403_whatever_the_parameters(client, ctx):
    ann = await register(client)
    headers = await login(client)
    for method, path in admin_routes(ann["id"]):
        r = await client.request(method, path, headers=headers)
        assert (r.status_code, r.json()["error"]) == (403, "superuser_required")
        assert set(r.json()) == {"error", "message", "fields"}
    # Bad parameters from a non-superuser: still 403, nothing about the route leaks.
    for path in ["/api/admin/users?limit=0", "/api/admin/users?after=x", "/api/admin/users?q="]:
        r = await client.get(path, headers=headers)
        assert r.status_code == 403, path
    r = await client.post("/api/admin/users/abc/disable", headers=headers)
    assert r.status_code == 403
    with ctx:  # and nothing was changed
        assert (await User.get(id=ann["id"])).is_active


async def test_pagination_walks_every_user_once_with_limit_2(client, ctx):
    admin = await make_superuser(client, ctx)
    for i in range(6):
        await register(client, email=f"user{i}@example.com", name=f"User {i}")
    with ctx:
        expected = sorted(await User.all().values_list("id", flat=True))
    assert len(expected) == 7
    seen, after, pages = [], 0, 0
    while True:
        r = await client.get(f"/api/admin/users?limit=2&after={after}", headers=auth(admin))
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "next"}
        assert len(page["items"]) <= 2
        for item in page["items"]:
            assert set(item) == ITEM_FIELDS  # no password hash, email key or token version
        seen += [item["id"] for item in page["items"]]
        pages += 1
        if page["next"] is None:
            break
        assert page["next"] == page["items"][-1]["id"]
        after = page["next"]
    assert seen == expected  # in id order, no duplicates, no gaps
    assert pages == 4  # 2 + 2 + 2 + 1
    r = await client.get("/api/admin/users", headers=auth(admin))
    assert [u["id"] for u in r.json()["items"]] == expected and r.json()["next"] is None
    root = next(u for u in r.json()["items"] if u["email"] == ADMIN_EMAIL)
    assert root["is_superuser"] is True and root["is_active"] is True


async def test_the_default_page_is_50_and_a_page_after_the_last_id_is_empty(client, ctx):
    admin = await make_superuser(client, ctx)
    with ctx:
        await User.bulk_create(
            [
                User(
                    email=f"bulk{i}@example.com",
                    email_key=f"{i:064x}",
                    display_name="Bulk",
                    password_hash="x",
                )
                for i in range(55)
            ]
        )
    r = await client.get("/api/admin/users", headers=auth(admin))
    page = r.json()
    assert len(page["items"]) == 50 and page["next"] == page["items"][-1]["id"]
    r = await client.get(f"/api/admin/users?after={page['next']}&limit=100", headers=auth(admin))
    assert len(r.json()["items"]) == 6 and r.json()["next"] is None
    r = await client.get(f"/api/admin/users?after={2**31 - 1}", headers=auth(admin))
    assert r.json() == {"items": [], "next": None}


async def test_email_prefix_filter_ignores_case_and_is_not_a_pattern(client, ctx):
    admin = await make_superuser(client, ctx)
    for email in ("ann@example.com", "anna_b@example.com", "annaxb@example.com", "bob@example.com"):
        await register(client, email=email, name="Someone")
    r = await client.get("/api/admin/users?q=ANN", headers=auth(admin))
    assert sorted(u["email"] for u in r.json()["items"]) == [
        "ann@example.com",
        "anna_b@example.com",
        "annaxb@example.com",
    ]
    r = await client.get("/api/admin/users?q=anna_", headers=auth(admin))
    assert [u["email"] for u in r.json()["items"]] == ["anna_b@example.com"]
    r = await client.get("/api/admin/users?q=%25", headers=auth(admin))  # "%"
    assert r.json()["items"] == []


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=two", "limit"),
        ("after=-1", "after"),
        ("after=abc", "after"),
        (f"after={2**31}", "after"),
        ("q=", "q"),
        ("q=" + "a" * 255, "q"),
    ],
)
async def test_bad_query_parameters_are_422_naming_the_field(client, ctx, query, field):
    admin = await make_superuser(client, ctx)
    r = await client.get(f"/api/admin/users?{query}", headers=auth(admin))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "validation_failed"
    assert (body["fields"][0]["field"], body["fields"][0]["location"]) == (field, "query")
    assert "a" * 255 not in r.text


async def test_a_bad_user_id_is_422_and_an_unknown_one_404(client, ctx):
    admin = await make_superuser(client, ctx)
    for action in ("disable", "enable"):
        for bad in ("abc", "0", "-3", str(2**31)):
            r = await client.post(f"/api/admin/users/{bad}/{action}", headers=auth(admin))
            assert r.status_code == 422, (action, bad)
            assert r.json()["fields"][0]["field"] == "user_id"
        r = await client.post(f"/api/admin/users/999999/{action}", headers=auth(admin))
        assert (r.status_code, r.json()["error"]) == (404, "user_not_found")


async def test_disable_kills_the_users_tokens_at_once_and_enable_restores_login(client, ctx):
    admin = await make_superuser(client, ctx)
    ann = await register(client)
    pair = await token_pair(client)
    other = await token_pair(client)  # a second device
    assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 200  # cached
    with ctx:
        await AccountToken.create(
            user_id=ann["id"],
            purpose="reset_password",
            token_hash="a" * 64,
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
        )

    r = await client.post(f"/api/admin/users/{ann['id']}/disable", headers=auth(admin))
    assert r.status_code == 200
    assert set(r.json()) == ITEM_FIELDS and r.json()["is_active"] is False

    for tokens in (pair, other):
        for method, path in (("GET", "/api/users/me"), ("GET", "/api/auth/sessions")):
            r = await client.request(method, path, headers=bearer(tokens))
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await client.patch("/api/users/me", headers=bearer(tokens), json={"bio": "still me"})
        assert r.status_code == 401
        r = await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert (r.status_code, r.json()["error"]) == (401, "invalid_refresh_token")
    r = await client.post("/api/auth/token", data={"username": ann["email"], "password": PASSWORD})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_credentials")
    with ctx:
        assert not await RefreshToken.filter(user_id=ann["id"], revoked_at=None).exists()
        resets = AccountToken.filter(user_id=ann["id"], purpose="reset_password")
        assert not await resets.exists()  # the reset link died

    # Idempotent: disabling again answers the same.
    r = await client.post(f"/api/admin/users/{ann['id']}/disable", headers=auth(admin))
    assert r.status_code == 200 and r.json()["is_active"] is False
    listed = (await client.get("/api/admin/users", headers=auth(admin))).json()["items"]
    assert next(u for u in listed if u["id"] == ann["id"])["is_active"] is False

    r = await client.post(f"/api/admin/users/{ann['id']}/enable", headers=auth(admin))
    assert r.status_code == 200 and r.json()["is_active"] is True
    r = await client.post(f"/api/admin/users/{ann['id']}/enable", headers=auth(admin))
    assert r.status_code == 200 and r.json()["is_active"] is True
    fresh = await token_pair(client)
    assert (await client.get("/api/users/me", headers=bearer(fresh))).status_code == 200
    # Enabling lets the user log in; it does not bring back the sessions that were ended.
    assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 401
    r = await client.post("/api/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert r.status_code == 401


async def test_a_superuser_cannot_disable_themselves(client, ctx):
    admin = await make_superuser(client, ctx)
    r = await client.post(f"/api/admin/users/{admin['id']}/disable", headers=auth(admin))
    assert (r.status_code, r.json()["error"]) == (409, "cannot_disable_self")
    assert "disable" in r.json()["message"]
    assert (await client.get("/api/admin/users", headers=auth(admin))).status_code == 200
    with ctx:
        assert (await User.get(id=int(admin["id"]))).is_active


async def test_demotion_and_disabling_take_effect_on_the_next_request(client, ctx):
    admin = await make_superuser(client, ctx)
    other = await make_superuser(client, ctx, email="second@example.com")
    assert (await client.get("/api/admin/users", headers=auth(admin))).status_code == 200
    assert (await client.get("/api/users/me", headers=auth(admin))).status_code == 200  # cached
    with ctx:  # demoted behind the app's back: no cache keeps the old answer
        await User.filter(id=int(admin["id"])).update(is_superuser=False)
    r = await client.get("/api/admin/users", headers=auth(admin))
    assert (r.status_code, r.json()["error"]) == (403, "superuser_required")
    with ctx:
        await User.filter(id=int(admin["id"])).update(is_superuser=True)
    # Another superuser disables this one: their token is refused at once (401, not 403).
    r = await client.post(f"/api/admin/users/{admin['id']}/disable", headers=auth(other))
    assert r.status_code == 200
    r = await client.get("/api/admin/users", headers=auth(admin))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await client.post(f"/api/admin/users/{other['id']}/disable", headers=auth(admin))
    assert r.status_code == 401
    with ctx:
        assert (await User.get(id=int(other["id"]))).is_active


async def test_an_access_token_of_a_deleted_superuser_is_401(client, ctx, settings):
    admin = await make_superuser(client, ctx)
    with ctx:
        await User.filter(id=int(admin["id"])).delete()
    r = await client.get("/api/admin/users", headers=auth(admin))
    assert r.status_code == 401
    forged = create_access_token(int(admin["id"]), settings, 0)  # a valid signature, no user
    r = await client.get("/api/admin/users", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401


async def test_admin_actions_are_logged_with_ids_only(client, ctx, caplog):
    admin = await make_superuser(client, ctx)
    ann = await register(client)
    normal = await login(client)
    caplog.set_level(logging.INFO, logger="backend_ref.admin")
    assert (await client.get("/api/admin/users", headers=normal)).status_code == 403
    await client.post(f"/api/admin/users/{ann['id']}/disable", headers=auth(admin))
    await client.post(f"/api/admin/users/{ann['id']}/enable", headers=auth(admin))
    messages = [r.getMessage() for r in caplog.records if r.name == "backend_ref.admin"]
    assert f"admin disabled a user: admin={admin['id']} user={ann['id']}" in messages
    assert f"admin enabled a user: admin={admin['id']} user={ann['id']}" in messages
    assert f"admin route refused to a non-superuser: user={ann['id']}" in messages
    text = "\n".join(messages)
    assert "@" not in text and admin["Authorization"].split()[1] not in text


# --- The console commands, as real processes on the configured databases ---


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment a `backend-ref` process needs to use the test's databases."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKEND_REF_")}
    return {
        **env,
        "BACKEND_REF_ENVIRONMENT": "test",
        "BACKEND_REF_USERS_DB_URL": settings.users_db_url.get_secret_value(),
        "BACKEND_REF_CONTENT_DB_URL": settings.content_db_url.get_secret_value(),
        "BACKEND_REF_OUTBOX_DIR": str(settings.outbox_dir),
        "BACKEND_REF_SCHEMA_SETUP": settings.schema_setup,  # the tables the test's app made
    }


def run_cli(settings, tmp_path, *args, stdin="") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        env=cli_env(settings),
        cwd=tmp_path,  # no .env file here
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_create_superuser_command_creates_one_who_can_list_users(
    client, ctx, settings, tmp_path
):
    await register(client)
    done = run_cli(
        settings,
        tmp_path,
        "create-superuser",
        ADMIN_EMAIL,
        "--password-stdin",
        stdin=ADMIN_PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("created superuser: user ")
    assert ADMIN_PASSWORD not in done.stdout + done.stderr
    with ctx:
        root = await User.get(email=ADMIN_EMAIL)
    assert root.is_superuser and root.is_active and root.display_name == "root"
    headers = await login(client, email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    r = await client.get("/api/admin/users", headers=headers)
    assert r.status_code == 200 and len(r.json()["items"]) == 2


@pytest.mark.parametrize(
    "email, password, reason",
    [
        (ADMIN_EMAIL, "password1", "password"),  # weak: zxcvbn
        (ADMIN_EMAIL, "root@example.com!", "password"),  # built from the address
        (ADMIN_EMAIL, "backend-ref2026", "password"),  # the site's own name
        (ADMIN_EMAIL, "short", "password"),  # under 8 characters
        ("not-an-email", "quiet river of lanterns", "email"),
        ("root@", "quiet river of lanterns", "email"),
    ],
)
async def test_create_superuser_refuses_weak_passwords_and_bad_emails(
    client, ctx, settings, tmp_path, email, password, reason
):
    done = run_cli(
        settings, tmp_path, "create-superuser", email, "--password-stdin", stdin=password + "\n"
    )
    assert done.returncode != 0
    # (MariaDB warns "Table ... already exists" on stderr first: the safe schema creation)
    refusal = done.stderr.splitlines()[-1]
    assert refusal.startswith("backend-ref: ") and reason in refusal
    assert password not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    with ctx:
        assert await User.all().count() == 0  # nothing was written


async def test_create_superuser_promotes_an_existing_account_only_with_its_password(
    client, ctx, settings, tmp_path
):
    ann = await register(client)
    with ctx:
        await User.filter(id=ann["id"]).update(is_active=False)
    wrong = run_cli(
        settings,
        tmp_path,
        "create-superuser",
        "ANN@example.com",
        "--password-stdin",
        stdin="someone else's guess\n",
    )
    assert wrong.returncode != 0 and "not its password" in wrong.stderr
    assert "someone else's guess" not in wrong.stdout + wrong.stderr
    with ctx:
        row = await User.get(id=ann["id"])
    assert not row.is_superuser and not row.is_active  # unchanged

    done = run_cli(
        settings,
        tmp_path,
        "create-superuser",
        "ANN@example.com",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"promoted to superuser (and enabled): user {ann['id']} ")
    assert PASSWORD not in done.stdout + done.stderr
    with ctx:
        row = await User.get(id=ann["id"])
        assert await User.all().count() == 1
    assert row.is_superuser and row.is_active
    headers = await login(client)
    assert (await client.get("/api/admin/users", headers=headers)).status_code == 200


async def test_purge_tokens_command_deletes_spent_tokens_and_prints_the_counts(
    client, ctx, settings, tmp_path
):
    ann = await register(client)
    ended = await token_pair(client)
    await token_pair(client)  # a live session: kept
    r = await client.post("/api/auth/logout", json={"refresh_token": ended["refresh_token"]})
    assert r.status_code == 204
    with ctx:
        await AccountToken.create(
            user_id=ann["id"],
            purpose="reset_password",
            token_hash="b" * 64,
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )
        account_tokens = await AccountToken.all().count()  # the expired one + the verify link
    done = run_cli(settings, tmp_path, "purge-tokens")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "purged 1 refresh tokens and 1 account tokens"
    with ctx:
        assert await RefreshToken.all().count() == 1
        assert await AccountToken.all().count() == account_tokens - 1
    again = run_cli(settings, tmp_path, "purge-tokens")
    assert again.stdout.strip() == "purged 0 refresh tokens and 0 account tokens"


# --- The interactive prompt, in this process (SQLite only: it needs no server) ---


@pytest.fixture
def sqlite_env(tmp_path, monkeypatch) -> Settings:
    settings = make_settings("sqlite", tmp_path)
    for name, value in cli_env(settings).items():
        if name.startswith("BACKEND_REF_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return settings


def count_users(settings: Settings) -> int:
    path = settings.users_db_url.get_secret_value().removeprefix("sqlite://")
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM users").fetchone()[0]


def test_the_prompt_asks_twice_for_a_new_account_and_refuses_a_mismatch(
    sqlite_env, monkeypatch, capsys
):
    typed = iter([ADMIN_PASSWORD, ADMIN_PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    with pytest.raises(SystemExit) as exited:
        main(["create-superuser", ADMIN_EMAIL])
    assert "differ" in str(exited.value) and ADMIN_PASSWORD not in str(exited.value)
    assert count_users(sqlite_env) == 0

    prompts = []

    def getpass(prompt=""):
        prompts.append(prompt)
        return ADMIN_PASSWORD

    monkeypatch.setattr("getpass.getpass", getpass)
    main(["create-superuser", ADMIN_EMAIL, "--display-name", "The Root"])
    assert prompts == ["Password: ", "Password (again): "]
    assert capsys.readouterr().out.startswith("created superuser: user ")
    assert count_users(sqlite_env) == 1

    prompts.clear()  # an existing account: its password, once
    main(["create-superuser", ADMIN_EMAIL])
    assert prompts == ["Password: "]
    out = capsys.readouterr()
    assert "promoted" in out.out and ADMIN_PASSWORD not in out.out + out.err


def test_invalid_settings_exit_with_the_reason_not_a_traceback(sqlite_env, monkeypatch):
    monkeypatch.setenv("BACKEND_REF_ACCESS_TOKEN_MINUTES", "600")
    for argv in (["create-superuser", ADMIN_EMAIL, "--password-stdin"], ["purge-tokens"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert "invalid settings" in str(exited.value)
        assert "access_token_minutes" in str(exited.value)


async def test_an_admin_ends_every_session_of_a_user_who_keeps_the_password(client, ctx):
    admin = await make_superuser(client, ctx)
    ann = await register(client)
    pairs = [await token_pair(client), await token_pair(client)]
    r = await client.post(f"/api/admin/users/{ann['id']}/end-sessions", headers=auth(admin))
    assert r.status_code == 204
    for pair in pairs:
        assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 401
        r = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401
    await token_pair(client)  # the password still works
    assert (await client.get("/api/users/me", headers=auth(admin))).status_code == 200
    r = await client.post("/api/admin/users/999999/end-sessions", headers=auth(admin))
    assert (r.status_code, r.json()["error"]) == (404, "user_not_found")


async def test_an_admin_starts_a_reset_without_ever_seeing_the_password(client, ctx, settings):
    admin = await make_superuser(client, ctx)
    ann = await register(client)
    before = len(read_outbox(settings.outbox_dir))
    r = await client.post(f"/api/admin/users/{ann['id']}/send-reset", headers=auth(admin))
    assert r.status_code == 202 and "#token=" not in r.text
    (mail,) = read_outbox(settings.outbox_dir)[before:]
    assert mail["To"] == "ann@example.com" and "An administrator" in mail.get_content()
    token = token_from_link(mail.get_content(), "reset_password")
    assert token and token not in r.text
    body = {"token": token, "new_password": "chosen by ann alone"}
    assert (await client.post("/api/auth/reset-password", json=body)).status_code == 204
    await token_pair(client, password="chosen by ann alone")
    with ctx:
        await User.filter(id=ann["id"]).update(is_active=False)
    before = len(read_outbox(settings.outbox_dir))
    r = await client.post(f"/api/admin/users/{ann['id']}/send-reset", headers=auth(admin))
    assert (r.status_code, r.json()["error"]) == (409, "account_disabled")
    assert len(read_outbox(settings.outbox_dir)) == before  # nothing for a disabled account
    r = await client.post("/api/admin/users/999999/send-reset", headers=auth(admin))
    assert r.status_code == 404
