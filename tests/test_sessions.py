"""Sessions: refresh rotation and reuse detection, logout, password change, and token attacks."""

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from conftest import bearer, login, make_settings, register, started_app, token_pair

from backend_ref.app import create_app
from backend_ref.databases import AccountToken, RefreshToken, User
from backend_ref.security import create_access_token, key_id
from backend_ref.sessions import hash_token, purge_spent_tokens

PASSWORD = "pw-ann-12345"


async def refresh(client, pair: dict) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})


async def test_login_returns_a_pair_stored_only_as_a_digest(client, ctx):
    user = await register(client)
    pair = await token_pair(client)
    assert pair["token_type"] == "bearer" and pair["expires_in"] == 15 * 60
    assert pair["refresh_expires_in"] == 72 * 3600  # the idle limit
    with ctx:
        row = await RefreshToken.get(user_id=user["id"])
    assert row.token_hash == hash_token(pair["refresh_token"])
    assert pair["refresh_token"] not in (row.token_hash, row.family)
    assert (
        jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"] == row.family
    )


async def test_rotation_and_reuse_revokes_the_family(client, ctx):
    await register(client)
    first = await token_pair(client)
    other_session = await token_pair(client)
    r = await refresh(client, first)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["refresh_expires_in"] <= first["refresh_expires_in"]  # absolute lifetime
    third = (await refresh(client, second)).json()

    replay = await refresh(client, first)
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_refresh_token")
    assert replay.headers["www-authenticate"] == "Bearer"
    assert (await refresh(client, third)).status_code == 401  # the family died with the replay
    # the other login session is untouched
    assert (await refresh(client, other_session)).status_code == 200


async def test_concurrent_refreshes_of_one_token_never_both_succeed(client, ctx):
    await register(client)
    pair = await token_pair(client)
    results = await asyncio.gather(*(refresh(client, pair) for _ in range(5)))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) <= 1 and statuses.count(401) >= 4, statuses
    with ctx:  # every loser is a replay: the family, winner's new token included, is revoked
        assert not await RefreshToken.filter(revoked_at=None, used_at=None).exists()


async def test_expired_refresh_token(client, ctx):
    await register(client)
    pair = await token_pair(client)
    with ctx:
        await RefreshToken.all().update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert (await refresh(client, pair)).status_code == 401


async def test_a_refreshed_session_never_outlives_its_absolute_end(client, ctx):
    await register(client)
    pair = await token_pair(client)
    with ctx:
        row = await RefreshToken.get(token_hash=hash_token(pair["refresh_token"]))
        assert (row.session_ends_at - row.created_at).days in (13, 14)
        await RefreshToken.all().update(session_ends_at=datetime.now(UTC) + timedelta(hours=1))
    renewed = (await refresh(client, pair)).json()
    assert 0 < renewed["refresh_expires_in"] <= 3600  # capped by the session's end, not 72 h
    with ctx:
        row = await RefreshToken.get(token_hash=hash_token(renewed["refresh_token"]))
        assert row.expires_at <= row.session_ends_at


async def test_refresh_for_a_disabled_user_fails_and_ends_the_session(client, ctx):
    user = await register(client)
    pair = await token_pair(client)
    with ctx:
        await User.filter(id=user["id"]).update(is_active=False)
    assert (await refresh(client, pair)).status_code == 401
    with ctx:
        await User.filter(id=user["id"]).update(is_active=True)
        assert not await RefreshToken.filter(revoked_at=None, used_at=None).exists()
    assert (await refresh(client, pair)).status_code == 401


async def test_logout_ends_one_session_and_is_idempotent(client):
    await register(client)
    phone, laptop = await token_pair(client), await token_pair(client)
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 200  # cached
    for _ in range(2):
        r = await client.post("/api/auth/logout", json={"refresh_token": phone["refresh_token"]})
        assert r.status_code == 204 and r.content == b""
    assert (await refresh(client, phone)).status_code == 401
    # the session's access token died with it, on the cached read and on a write
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 401
    r = await client.patch("/api/users/me", headers=bearer(phone), json={"bio": "x"})
    assert r.status_code == 401
    # the other session is untouched, and does not revive the first one through the cache
    assert (await client.get("/api/users/me", headers=bearer(laptop))).status_code == 200
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 401
    assert (await refresh(client, laptop)).status_code == 200
    r = await client.post("/api/auth/logout", json={"refresh_token": "never-issued"})
    assert r.status_code == 204


async def test_logout_everywhere(client, ctx):
    await register(client)
    phone, laptop = await token_pair(client), await token_pair(client)
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 200  # cached
    r = await client.post("/api/auth/logout-all", headers=bearer(laptop))
    assert r.status_code == 204
    for pair in (phone, laptop):
        assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 401
        r = await client.patch("/api/users/me", headers=bearer(pair), json={"bio": "x"})
        assert r.status_code == 401
        assert (await refresh(client, pair)).status_code == 401
    assert (await client.post("/api/auth/logout-all")).status_code == 401
    fresh = await token_pair(client)
    assert (await client.get("/api/users/me", headers=bearer(fresh))).status_code == 200


async def test_password_change_ends_other_sessions_and_reset_links(client, ctx):
    user = await register(client)
    here, elsewhere = await token_pair(client), await token_pair(client)
    with ctx:
        await AccountToken.create(
            user_id=user["id"],
            purpose="reset_password",
            token_hash=hash_token("mailed-link"),
            expires_at=datetime.now(UTC) + timedelta(minutes=30),
        )
    body = {"current_password": PASSWORD, "new_password": "another long passphrase"}
    r = await client.post("/api/users/me/password", headers=bearer(here), json=body)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    new_pair = r.json()
    assert "another long passphrase" not in r.text
    assert (await client.get("/api/users/me", headers=bearer(new_pair))).status_code == 200
    assert (await refresh(client, new_pair)).status_code == 200
    for old in (here, elsewhere):
        assert (await client.get("/api/users/me", headers=bearer(old))).status_code == 401
        assert (await refresh(client, old)).status_code == 401
    with ctx:
        # the reset link died; the verification link mailed at registration lives on
        assert not await AccountToken.filter(user_id=user["id"], purpose="reset_password").exists()
        assert await AccountToken.filter(user_id=user["id"], purpose="verify_email").exists()
    r = await client.post(
        "/api/auth/token", data={"username": "ann@example.com", "password": PASSWORD}
    )
    assert r.status_code == 401
    await token_pair(client, password="another long passphrase")


@pytest.mark.parametrize(
    "body, status, field, error",
    [
        (
            {"current_password": "wrong-password", "new_password": "another long passphrase"},
            400,
            "current_password",
            "wrong_password",
        ),
        (
            {"current_password": PASSWORD, "new_password": "short"},
            422,
            "new_password",
            "validation_failed",
        ),
        (
            {"current_password": PASSWORD, "new_password": "x" * 1025},
            422,
            "new_password",
            "validation_failed",
        ),
        (
            {"current_password": PASSWORD, "new_password": "ann@example.com"},
            422,
            "new_password",  # the body field that holds the weak password
            "weak_password",
        ),
        ({"current_password": PASSWORD}, 422, "new_password", "validation_failed"),
        ({"new_password": "another long passphrase"}, 422, "current_password", "validation_failed"),
        (
            {"current_password": PASSWORD, "new_password": None},
            422,
            "new_password",
            "validation_failed",
        ),
    ],
)
async def test_password_change_bad_input(client, ctx, body, status, field, error):
    user = await register(client)
    pair = await token_pair(client)
    r = await client.post("/api/users/me/password", headers=bearer(pair), json=body)
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert r.json()["fields"][0]["field"] == field
    for value in body.values():
        if isinstance(value, str) and len(value) > 5:
            assert value not in r.text
    with ctx:  # nothing changed: the session and the password are as they were
        assert (await User.get(id=user["id"])).token_version == 0
    assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 200
    await token_pair(client)


async def test_wrong_current_password_counts_as_a_failed_login(backend, tmp_path):
    settings = make_settings(backend, tmp_path, login_failures_per_account="3/day")
    async with started_app(settings) as client:
        await register(client)
        pair = await token_pair(client)
        body = {"current_password": "guess-number-n", "new_password": "another long passphrase"}
        statuses = [
            (
                await client.post("/api/users/me/password", headers=bearer(pair), json=body)
            ).status_code
            for _ in range(4)
        ]
        assert statuses == [400, 400, 400, 429]


async def test_failed_logins_and_wrong_current_passwords_share_one_count(backend, tmp_path):
    settings = make_settings(backend, tmp_path, login_failures_per_account="3/day")
    async with started_app(settings) as client:
        await register(client)
        pair = await token_pair(client)  # a success: the count starts at zero
        form = {"username": "ann@example.com", "password": "guess-number-n"}
        body = {"current_password": "guess-number-n", "new_password": "another long passphrase"}
        statuses = [
            (await client.post("/api/auth/token", data=form)).status_code,
            (await client.post("/api/auth/token", data=form)).status_code,
            (
                await client.post("/api/users/me/password", headers=bearer(pair), json=body)
            ).status_code,
            (await client.post("/api/auth/token", data=form)).status_code,
        ]
        assert statuses == [401, 401, 400, 429]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "refresh_token"),
        ({"refresh_token": ""}, "refresh_token"),
        ({"refresh_token": "r" * 201}, "refresh_token"),
        ({"refresh_token": 12}, "refresh_token"),
        ({"refresh_token": None}, "refresh_token"),
        ([], "body"),
    ],
)
@pytest.mark.parametrize("route", ["/api/auth/refresh", "/api/auth/logout"])
async def test_refresh_and_logout_bad_input(client, route, body, field):
    r = await client.post(route, json=body)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == field
    assert "r" * 201 not in r.text


async def test_require_verified_email(backend, tmp_path):
    settings = make_settings(backend, tmp_path, require_verified_email=True)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        from conftest import empty_tables

        await empty_tables(app.state.tortoise)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            user = await register(client)
            form = {"username": "ann@example.com", "password": PASSWORD}
            r = await client.post("/api/auth/token", data=form)
            assert (r.status_code, r.json()["error"]) == (403, "email_not_verified")
            r = await client.post("/api/auth/token", data={**form, "password": "wrong-password"})
            assert r.status_code == 401  # a wrong password learns nothing about verification
            with app.state.tortoise:
                await User.filter(id=user["id"]).update(email_verified=True)
            assert (await client.post("/api/auth/token", data=form)).status_code == 200


# Token attacks: every one is a 401 with WWW-Authenticate: Bearer, on the cached read and on a
# route that reads the row.
def _claims(user_id: int, **changes) -> dict:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=5),
        "typ": "access",
        "ver": 0,
        "aud": "backend-ref",
    }
    return {k: v for k, v in {**claims, **changes}.items() if v is not None}


def raw_jwt(header, claims: dict, secret: str) -> str:
    """A JWT built by hand, for headers PyJWT refuses to write."""

    def part(value) -> str:
        data = json.dumps(value, default=lambda d: int(d.timestamp())).encode()
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


ATTACKER_KEY = "a key the attacker chose, 32+ chars"
ATTACKER_KEY_B64 = base64.urlsafe_b64encode(ATTACKER_KEY.encode()).rstrip(b"=").decode()


def forged_tokens(settings, user_id: int, refresh_token: str) -> dict[str, str]:
    secret = settings.jwt_secret.get_secret_value()
    kid = {"kid": key_id(settings.jwt_secret)}
    now = datetime.now(UTC)

    def sign(claims, key=secret, alg="HS256", headers=kid):
        return jwt.encode(claims, key, algorithm=alg, headers=headers)

    return {
        "alg none": sign(_claims(user_id), key=None, alg="none"),
        "HS512": sign(_claims(user_id), alg="HS512"),
        "HS384": sign(_claims(user_id), alg="HS384"),
        "wrong key": sign(_claims(user_id), key="an-attackers-guess-of-32-characters!"),
        "unknown kid": sign(_claims(user_id), headers={"kid": "f" * 16}),
        "kid not a string": raw_jwt({"alg": "HS256", "kid": 5}, _claims(user_id), secret),
        "kid a list": raw_jwt({"alg": "HS256", "kid": [1]}, _claims(user_id), secret),
        "header not an object": raw_jwt([1, 2], _claims(user_id), secret),
        "no kid": sign(_claims(user_id), headers=None),
        # ASVS 9.1.3: keys named by the token itself are never fetched nor trusted
        "jwk header": sign(
            _claims(user_id),
            key=ATTACKER_KEY,
            headers={"kid": kid["kid"], "jwk": {"kty": "oct", "k": ATTACKER_KEY_B64}},
        ),
        "jku header": sign(
            _claims(user_id),
            key=ATTACKER_KEY,
            headers={"kid": kid["kid"], "jku": "http://127.0.0.1:9/keys.json"},
        ),
        "x5u header": sign(
            _claims(user_id), key=ATTACKER_KEY, headers={"kid": "x", "x5u": "http://127.0.0.1:9/c"}
        ),
        "expired": create_access_token(user_id, settings, now=now - timedelta(hours=2)),
        "not yet valid": sign(_claims(user_id, nbf=now + timedelta(minutes=2))),
        "no exp": sign(_claims(user_id, exp=None)),
        "refresh token as access": refresh_token,
        "reset token as access": secrets.token_urlsafe(32),
        "typ refresh": sign(_claims(user_id, typ="refresh")),
        "typ reset": sign(_claims(user_id, typ="reset_password")),
        "no audience": sign(_claims(user_id, aud=None)),
        "other audience": sign(_claims(user_id, aud="another-service")),
        "audience list without ours": sign(_claims(user_id, aud=["a", "b"])),
        "old version": sign(_claims(user_id, ver=-1)),
        "version as text": sign(_claims(user_id, ver="0")),
        "sub not a number": sign(_claims(user_id, sub="admin")),
        "sub out of range": sign(_claims(user_id, sub=str(2**63))),
        "no such user": sign(_claims(user_id + 1000)),
        "garbage": "not.a.token",
        "three dots": "a.b.c.d",
        "empty segments": "..",
        "unicode": "ü.ö.ä",
    }


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_token_attacks_are_401_bearer(client, settings, ctx):
    user = await register(client)
    pair = await token_pair(client)
    forged = forged_tokens(settings, user["id"], pair["refresh_token"])
    for name, token in forged.items():
        for method, path, body in [("GET", "/api/users/me", None), ("PATCH", "/api/users/me", {})]:
            r = await client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {token}".encode()}
            )
            assert r.status_code == 401, (name, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer", name
            assert r.json()["error"] in ("invalid_token", "not_authenticated"), name
    # the real token still works: none of the above was refused for another reason
    assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 200
    # ...and so does a hand-made one with nothing changed: each forgery fails for its own reason
    kid = {"kid": key_id(settings.jwt_secret)}
    control = jwt.encode(
        _claims(user["id"]), settings.jwt_secret.get_secret_value(), "HS256", headers=kid
    )
    r = await client.get("/api/users/me", headers={"Authorization": f"Bearer {control}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "bearer x y", "Basic YW5uOnB3", "Token abc", "x" * 8000],
)
async def test_garbage_authorization_headers(client, authorization):
    await register(client)
    r = await client.get("/api/users/me", headers={"Authorization": authorization})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_deleted_and_disabled_users_get_401(client, ctx):
    user = await register(client)
    pair = await token_pair(client)
    with ctx:
        await User.filter(id=user["id"]).update(is_active=False)
    app_cache_bypass = {"Authorization": bearer(pair)["Authorization"]}
    r = await client.patch("/api/users/me", headers=app_cache_bypass, json={"bio": "x"})
    assert r.status_code == 401
    with ctx:
        await User.filter(id=user["id"]).delete()
    r = await client.patch("/api/users/me", headers=app_cache_bypass, json={"bio": "x"})
    assert r.status_code == 401
    assert (await refresh(client, pair)).status_code == 401


async def test_key_rotation_keeps_sessions(backend, tmp_path):
    """A token signed with the previous key is accepted after rotation, refused once dropped."""
    old_key, new_key = "o" * 40, "n" * 40
    before = make_settings(backend, tmp_path, jwt_secret=old_key)
    async with started_app(before) as client:
        await register(client)
        headers = await login(client)
    for secrets_, status in [({"jwt_previous_secrets": [old_key]}, 200), ({}, 401)]:
        after = make_settings(backend, tmp_path, jwt_secret=new_key, **secrets_)
        app = create_app(after)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                assert (await client.get("/api/users/me", headers=headers)).status_code == status
                if status == 200:  # new logins are signed with the new key
                    pair = await token_pair(client)
                    header = jwt.get_unverified_header(pair["access_token"])
                    assert header["kid"] == key_id(after.jwt_secret) != key_id(before.jwt_secret)


async def test_authentication_events_are_logged_without_secrets(client, caplog):
    user = await register(client)
    caplog.set_level(logging.INFO, logger="backend_ref.sessions")
    form = {"username": "ann@example.com", "password": "hunter2-guessed-wrong"}
    assert (await client.post("/api/auth/token", data=form)).status_code == 401
    pair = await token_pair(client)
    await refresh(client, pair)
    assert (await refresh(client, pair)).status_code == 401  # a replay
    pair = await token_pair(client)
    body = {"current_password": PASSWORD, "new_password": "another long passphrase"}
    pair = (await client.post("/api/users/me/password", headers=bearer(pair), json=body)).json()
    await client.post("/api/auth/logout", json={"refresh_token": pair["refresh_token"]})
    messages = [r.getMessage() for r in caplog.records if r.name == "backend_ref.sessions"]
    expected = ["login failed", "login: user=", "reused", "password changed", "logout: user="]
    for part in expected:
        assert any(part in m for m in messages), (part, messages)
    assert any(f"user={user['id']}" in m for m in messages)
    for secret in ["hunter2", PASSWORD, "another long passphrase", "ann@example.com"]:
        assert not any(secret in m for m in messages), secret
    assert not any(pair["refresh_token"] in m or pair["access_token"] in m for m in messages)


def session_id(pair: dict) -> str:
    return jwt.decode(pair["access_token"], options={"verify_signature": False})["sid"]


async def end_session(client, pair, sid, password=PASSWORD) -> httpx.Response:
    url = f"/api/auth/sessions/{sid}/end"
    return await client.post(url, headers=bearer(pair), json={"password": password})


async def test_the_session_list_shows_live_sessions_only(client):
    await register(client)
    phone, laptop, gone = [await token_pair(client) for _ in range(3)]
    phone = (await refresh(client, phone)).json()  # a refreshed session is listed once
    await client.post("/api/auth/logout", json={"refresh_token": gone["refresh_token"]})
    r = await client.get("/api/auth/sessions", headers=bearer(laptop))
    assert r.status_code == 200
    listed = {s["id"]: s for s in r.json()}
    assert set(listed) == {session_id(phone), session_id(laptop)}
    assert listed[session_id(laptop)]["current"] and not listed[session_id(phone)]["current"]
    refreshed = listed[session_id(phone)]
    assert refreshed["started_at"] < refreshed["last_used_at"] < refreshed["expires_at"]
    for secret in (phone["refresh_token"], laptop["refresh_token"], phone["access_token"]):
        assert secret not in r.text


async def test_ending_a_session_by_id(client):
    await register(client)
    phone, laptop = await token_pair(client), await token_pair(client)
    r = await end_session(client, laptop, session_id(phone))
    assert r.status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 401
    assert (await refresh(client, phone)).status_code == 401
    assert (await client.get("/api/users/me", headers=bearer(laptop))).status_code == 200
    again = await end_session(client, laptop, session_id(phone))
    assert (again.status_code, again.json()["error"]) == (404, "session_not_found")
    r = await end_session(client, laptop, session_id(laptop))  # one's own session: a logout
    assert r.status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(laptop))).status_code == 401


async def test_nobody_ends_another_users_session(client):
    await register(client)
    await register(client, email="bob@example.com", password="pw-bob-12345", name="Bob")
    ann = await token_pair(client)
    bob = await token_pair(client, "bob@example.com", "pw-bob-12345")
    r = await end_session(client, bob, session_id(ann), password="pw-bob-12345")
    unknown = await end_session(client, bob, secrets.token_hex(16), password="pw-bob-12345")
    assert r.status_code == unknown.status_code == 404
    assert r.content == unknown.content
    assert (await client.get("/api/users/me", headers=bearer(ann))).status_code == 200
    r = await client.get("/api/auth/sessions", headers=bearer(bob))
    assert [s["id"] for s in r.json()] == [session_id(bob)]


@pytest.mark.parametrize(
    "sid, body, status, field",
    [
        ("0" * 31, {"password": PASSWORD}, 422, "session_id"),
        ("G" * 32, {"password": PASSWORD}, 422, "session_id"),
        (None, {}, 422, "password"),
        (None, {"password": "p" * 1025}, 422, "password"),
        (None, {"password": "wrong-password-1"}, 400, "password"),
    ],
)
async def test_ending_a_session_bad_input(client, sid, body, status, field):
    await register(client)
    phone, laptop = await token_pair(client), await token_pair(client)
    url = f"/api/auth/sessions/{sid or session_id(phone)}/end"
    r = await client.post(url, headers=bearer(laptop), json=body)
    assert (r.status_code, r.json()["fields"][0]["field"]) == (status, field)
    assert "wrong-password-1" not in r.text and "p" * 1025 not in r.text
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 200


async def test_session_routes_need_a_valid_access_token(client):
    await register(client)
    pair = await token_pair(client)
    for r in (
        await client.get("/api/auth/sessions"),
        await client.post(
            f"/api/auth/sessions/{session_id(pair)}/end", json={"password": PASSWORD}
        ),
        await client.get("/api/auth/sessions", headers={"Authorization": "Bearer nope"}),
    ):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_purge_keeps_what_reuse_detection_needs(client, ctx):
    user = await register(client)
    first = await token_pair(client)
    second = (await refresh(client, first)).json()  # first is used, second is the live head
    ended = await token_pair(client)
    await client.post("/api/auth/logout", json={"refresh_token": ended["refresh_token"]})
    old = await token_pair(client)
    now = datetime.now(UTC)
    with ctx:
        await RefreshToken.filter(token_hash=hash_token(old["refresh_token"])).update(
            session_ends_at=now - timedelta(seconds=1)
        )
        fresh = await AccountToken.create(
            user_id=user["id"],
            purpose="reset_password",
            token_hash="a" * 64,
            expires_at=now + timedelta(minutes=5),
        )
        await AccountToken.create(
            user_id=user["id"],
            purpose="reset_password",
            token_hash="b" * 64,
            expires_at=now - timedelta(minutes=5),
        )
        assert await purge_spent_tokens() == (2, 1)  # the logged-out and the ended session
        # left: the live reset link and the verification link mailed at registration
        kept = await AccountToken.all().order_by("id").values_list("purpose", "token_hash")
        assert kept == [("verify_email", kept[0][1]), ("reset_password", fresh.token_hash)]
        assert await RefreshToken.filter(user_id=user["id"]).count() == 2
    assert (await refresh(client, first)).status_code == 401  # a replay is still recognised...
    assert (await refresh(client, second)).status_code == 401  # ...and ends its session


async def test_purge_deletes_idle_ended_sessions_and_used_links(client, ctx):
    user = await register(client)
    idle, live = await token_pair(client), await token_pair(client)
    now = datetime.now(UTC)
    with ctx:
        await RefreshToken.filter(token_hash=hash_token(idle["refresh_token"])).update(
            expires_at=now - timedelta(seconds=1)  # unused past the idle limit
        )
        used = await AccountToken.create(
            user_id=user["id"],
            purpose="reset_password",
            token_hash="c" * 64,
            expires_at=now + timedelta(minutes=5),
            used_at=now,
        )
        assert await purge_spent_tokens() == (1, 1)
        assert not await AccountToken.filter(id=used.id).exists()
    assert (await refresh(client, idle)).status_code == 401
    assert (await refresh(client, live)).status_code == 200


SURROGATE = "\\ud800"  # a lone surrogate, escaped in the JSON text: no valid string holds it


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/api/auth/register", '{"email": "x@example.com", "display_name": "X", '
         f'"password": "{SURROGATE} tangerine submarine"}}', "password"),
        ("/api/auth/refresh", f'{{"refresh_token": "{SURROGATE}"}}', "refresh_token"),
        ("/api/auth/logout", f'{{"refresh_token": "{SURROGATE}"}}', "refresh_token"),
        ("/api/auth/verify-email", f'{{"token": "{SURROGATE}"}}', "token"),
        ("/api/auth/reset-password",
         f'{{"token": "{SURROGATE}", "new_password": "a whole new passphrase"}}', "token"),
        ("/api/auth/reset-password",
         f'{{"token": "abc", "new_password": "{SURROGATE} whole new passphrase"}}', "new_password"),
        ("/api/users/me/password",
         f'{{"current_password": "{SURROGATE}", "new_password": "another passphrase"}}',
         "current_password"),
        ("/api/users/me/password",
         f'{{"current_password": "{PASSWORD}", "new_password": "{SURROGATE} passphrase"}}',
         "new_password"),
        ("/api/auth/sessions/" + "0" * 32 + "/end", f'{{"password": "{SURROGATE}"}}', "password"),
    ],
)  # fmt: skip
async def test_a_lone_surrogate_in_a_secret_is_a_422_not_a_500(client, path, body, field):
    await register(client)
    headers = {"content-type": "application/json", **bearer(await token_pair(client))}
    r = await client.post(path, content=body.encode(), headers=headers)
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["fields"]] == [field]
    assert "ud800" not in r.text and "tangerine" not in r.text
