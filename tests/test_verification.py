"""Email verification and password reset through the app, on every database backend."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import make_settings, register, started_app

from backend_ref.databases import AccountToken, User
from backend_ref.mail import read_outbox, token_from_link
from backend_ref.sessions import hash_token

PASSWORD = "pw-ann-12345"
NEW_PASSWORD = "a whole new passphrase"


def mails(settings) -> list:
    return read_outbox(settings.outbox_dir)


def last_token(settings, purpose: str) -> str:
    token = token_from_link(mails(settings)[-1].get_content(), purpose)
    assert token is not None, f"the newest mail carries no {purpose} link"
    return token


async def log_in(client, password=PASSWORD) -> httpx.Response:
    return await client.post(
        "/api/auth/token", data={"username": "ann@example.com", "password": password}
    )


async def ask_reset(client, settings, email="ann@example.com") -> str:
    r = await client.post("/api/auth/forgot-password", json={"email": email})
    assert r.status_code == 202
    return last_token(settings, "reset_password")


async def reset(client, token: str, new_password=NEW_PASSWORD) -> httpx.Response:
    return await client.post(
        "/api/auth/reset-password", json={"token": token, "new_password": new_password}
    )


async def test_forgot_password_answers_alike_for_every_kind_of_address(client, ctx, settings):
    await register(client)
    await register(client, email="bob@example.com", name="Bob")
    await register(client, email="cy@example.com", name="Cy")
    with ctx:
        await User.filter(email="cy@example.com").update(is_active=False)
    before = len(mails(settings))
    answers = [
        await client.post("/api/auth/forgot-password", json={"email": email})
        for email in ("ann@example.com", "nobody@example.com", "cy@example.com", "BOB@example.com")
    ]
    assert {r.status_code for r in answers} == {202}
    assert len({r.content for r in answers}) == 1
    assert len({tuple(sorted(r.headers.items())) for r in answers}) == 1
    sent = mails(settings)[before:]
    assert sorted(m["To"] for m in sent) == ["ann@example.com", "bob@example.com"]  # not Cy
    link = next(line for line in sent[0].get_content().splitlines() if "#token=" in line)
    assert link.startswith(settings.public_url.rstrip("/") + "/")


async def test_reset_token_is_stored_as_a_digest_and_expires_within_an_hour(client, ctx, settings):
    user = await register(client)
    token = await ask_reset(client, settings)
    with ctx:
        (row,) = await AccountToken.filter(user_id=user["id"], purpose="reset_password")
    assert row.token_hash == hash_token(token) and token not in row.token_hash
    lifetime = row.expires_at - row.created_at
    assert timedelta(minutes=1) < lifetime <= timedelta(hours=1)
    assert len(token) >= 43  # 256 random bits, URL-safe base64


async def test_reset_is_single_use_and_ends_every_session(client, settings):
    await register(client)
    pair = (await log_in(client)).json()
    access = {"Authorization": f"Bearer {pair['access_token']}"}
    token = await ask_reset(client, settings)
    r = await reset(client, token)
    assert r.status_code == 204 and r.content == b""
    assert (await client.get("/api/users/me", headers=access)).status_code == 401
    r = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401
    assert (await log_in(client)).status_code == 401
    assert (await log_in(client, NEW_PASSWORD)).status_code == 200
    again = await reset(client, token, "yet another passphrase")
    assert (again.status_code, again.json()["error"]) == (400, "invalid_token")
    assert again.json()["fields"][0]["field"] == "token" and token not in again.text
    assert (await log_in(client, NEW_PASSWORD)).status_code == 200  # the replay changed nothing


async def test_an_expired_reset_link_is_refused(client, ctx, settings):
    await register(client)
    token = await ask_reset(client, settings)
    with ctx:
        await AccountToken.filter(token_hash=hash_token(token)).update(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    assert (await reset(client, token)).status_code == 400
    assert (await log_in(client)).status_code == 200  # the password did not change


async def test_a_password_change_kills_a_mailed_reset_link(client, settings):
    await register(client)
    token = await ask_reset(client, settings)
    access = {"Authorization": f"Bearer {(await log_in(client)).json()['access_token']}"}
    body = {"current_password": PASSWORD, "new_password": "the changed passphrase"}
    assert (await client.post("/api/users/me/password", headers=access, json=body)).is_success
    assert (await reset(client, token)).status_code == 400
    assert (await log_in(client, "the changed passphrase")).status_code == 200


async def test_a_reset_kills_the_other_reset_links(client, settings):
    await register(client)
    first = await ask_reset(client, settings)
    second = await ask_reset(client, settings)
    assert first != second
    assert (await reset(client, second)).status_code == 204
    assert (await reset(client, first, "yet another passphrase")).status_code == 400


async def test_a_weak_new_password_keeps_the_link(client, settings):
    await register(client)
    token = await ask_reset(client, settings)
    r = await reset(client, token, "ann@example.com")
    assert (r.status_code, r.json()["error"]) == (422, "weak_password")
    assert r.json()["fields"][0]["field"] == "new_password"
    assert (await reset(client, token)).status_code == 204


async def test_two_resets_racing_with_one_link_change_the_password_once(client, settings):
    await register(client)
    token = await ask_reset(client, settings)
    answers = await asyncio.gather(
        reset(client, token, "first racing passphrase"),
        reset(client, token, "second racing passphrase"),
    )
    assert sorted(r.status_code for r in answers) == [204, 400]
    winner = (
        "first racing passphrase" if answers[0].status_code == 204 else "second racing passphrase"
    )
    assert (await log_in(client, winner)).status_code == 200


async def test_links_are_bound_to_their_purpose_and_their_account_state(client, ctx, settings):
    user = await register(client)
    verify = last_token(settings, "verify_email")
    assert (await reset(client, verify)).status_code == 400  # a verification link cannot reset
    token = await ask_reset(client, settings)
    r = await client.post("/api/auth/verify-email", json={"token": token})
    assert r.status_code == 400  # nor the other way round
    with ctx:
        await User.filter(id=user["id"]).update(is_active=False)
    assert (await reset(client, token)).status_code == 400  # a disabled account cannot reset
    with ctx:
        await User.filter(id=user["id"]).update(is_active=True)
    assert (await reset(client, token)).status_code == 204  # the failed tries did not spend it


async def test_verification_link_single_use_and_expiry(client, ctx, settings):
    user = await register(client)
    token = last_token(settings, "verify_email")
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 204
    with ctx:
        assert (await User.get(id=user["id"])).email_verified
    r = await client.post("/api/auth/verify-email", json={"token": token})
    assert (r.status_code, r.json()["fields"][0]["field"]) == (400, "token")

    bob = await register(client, email="bob@example.com", name="Bob")
    late = last_token(settings, "verify_email")
    with ctx:
        await AccountToken.filter(token_hash=hash_token(late)).update(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
    assert (await client.post("/api/auth/verify-email", json={"token": late})).status_code == 400
    with ctx:
        assert not (await User.get(id=bob["id"])).email_verified


async def test_request_verification_answers_alike_and_mails_only_the_unverified(client, settings):
    await register(client)
    await register(client, email="bob@example.com", name="Bob")
    token = last_token(settings, "verify_email")  # Bob's
    assert (await client.post("/api/auth/verify-email", json={"token": token})).status_code == 204
    before = len(mails(settings))
    answers = [
        await client.post("/api/auth/request-verification", json={"email": email})
        for email in ("ann@example.com", "bob@example.com", "nobody@example.com")
    ]
    assert {r.status_code for r in answers} == {202}
    assert len({r.content for r in answers}) == 1
    assert len({tuple(sorted(r.headers.items())) for r in answers}) == 1
    assert [m["To"] for m in mails(settings)[before:]] == ["ann@example.com"]
    fresh = last_token(settings, "verify_email")
    assert (await client.post("/api/auth/verify-email", json={"token": fresh})).status_code == 204


async def test_unverified_login_waits_for_the_link_when_required(backend, tmp_path):
    settings = make_settings(backend, tmp_path, require_verified_email=True)
    async with started_app(settings) as client:
        await register(client)
        assert (await log_in(client)).status_code == 403
        token = last_token(settings, "verify_email")
        r = await client.post("/api/auth/verify-email", json={"token": token})
        assert r.status_code == 204
        assert (await log_in(client)).status_code == 200


async def test_mail_requests_are_limited_per_inbox_alike_for_unknown_addresses(backend, tmp_path):
    settings = make_settings(backend, tmp_path, email_limit_per_account="2/hour")
    async with started_app(settings) as client:
        await register(client)
        for email in ("ann@example.com", "nobody@example.com"):
            statuses = [
                (await client.post("/api/auth/forgot-password", json={"email": email}))
                for _ in range(3)
            ]
            assert [r.status_code for r in statuses] == [202, 202, 429]
            assert int(statuses[-1].headers["retry-after"]) > 0
        # the owner can still log in: the limit guards the inbox, not the account
        assert (await log_in(client)).status_code == 200


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/api/auth/forgot-password", {}, "email"),
        ("/api/auth/forgot-password", {"email": "not-an-address"}, "email"),
        ("/api/auth/forgot-password", ["ann@example.com"], None),
        ("/api/auth/request-verification", {"email": "x" * 300 + "@example.com"}, "email"),
        ("/api/auth/verify-email", {}, "token"),
        ("/api/auth/verify-email", {"token": 12}, "token"),
        ("/api/auth/forgot-password", {"email": "ann@example.com", "admin": True}, "admin"),
        ("/api/auth/verify-email", {"token": "abc", "user_id": 1}, "user_id"),
        ("/api/auth/reset-password", {"token": "abc"}, "new_password"),
        ("/api/auth/reset-password", {"token": "abc", "new_password": "short"}, "new_password"),
        ("/api/auth/reset-password", {"token": "t" * 201, "new_password": NEW_PASSWORD}, "token"),
        (
            "/api/auth/reset-password",
            {"token": "abc", "new_password": "p" * 1025},
            "new_password",
        ),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(client, path, body, field):
    r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    fields = [f["field"] for f in r.json()["fields"]]
    if field is not None:
        assert field in fields
    assert "p" * 1025 not in r.text and "t" * 201 not in r.text and NEW_PASSWORD not in r.text


async def test_an_unknown_token_is_a_400_and_changes_nothing(client):
    await register(client)
    r = await reset(client, "made-up-token")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_token")
    assert "made-up-token" not in r.text
    assert (await log_in(client)).status_code == 200


async def test_tokens_never_reach_the_log(client, settings, caplog):
    await register(client)
    with caplog.at_level(logging.DEBUG):
        token = await ask_reset(client, settings)
        assert (await reset(client, token)).status_code == 204
    assert token not in caplog.text and NEW_PASSWORD not in caplog.text
    assert "password reset, every session ended" in caplog.text


async def test_the_owner_is_told_when_the_password_changes(client, settings):
    await register(client)
    token = await ask_reset(client, settings)
    assert (await reset(client, token)).status_code == 204
    notice = mails(settings)[-1]
    assert (notice["To"], notice["Subject"]) == ("ann@example.com", "Your password was changed")
    assert "#token=" not in notice.get_content() and NEW_PASSWORD not in notice.get_content()
    access = {
        "Authorization": f"Bearer {(await log_in(client, NEW_PASSWORD)).json()['access_token']}"
    }
    body = {"current_password": NEW_PASSWORD, "new_password": "the changed passphrase"}
    before = len(mails(settings))
    r = await client.post("/api/users/me/password", headers=access, json=body)
    assert r.status_code == 200
    assert [m["Subject"] for m in mails(settings)[before:]] == ["Your password was changed"]
    access = {"Authorization": f"Bearer {r.json()['access_token']}"}
    body = {"current_password": "not the password", "new_password": "one more passphrase"}
    before = len(mails(settings))
    r = await client.post("/api/users/me/password", headers=access, json=body)
    assert r.status_code == 400
    assert len(mails(settings)) == before  # a refused change sends nothing


async def test_a_disabled_account_cannot_verify_its_address(client, ctx, settings):
    user = await register(client)
    token = last_token(settings, "verify_email")
    with ctx:
        await User.filter(id=user["id"]).update(is_active=False)
    r = await client.post("/api/auth/verify-email", json={"token": token})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_token")
    with ctx:
        assert not (await User.get(id=user["id"])).email_verified
        await User.filter(id=user["id"]).update(is_active=True)
    r = await client.post("/api/auth/verify-email", json={"token": token})
    assert r.status_code == 204  # the refused try did not spend the link
