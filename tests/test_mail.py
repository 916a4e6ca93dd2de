"""Mail through a real SMTP server (aiosmtpd) on loopback, plain and STARTTLS; the outbox."""

import asyncio
import logging
import ssl
from email.message import EmailMessage

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import free_port
from fastapi import BackgroundTasks

from backend_ref.app import create_app
from backend_ref.config import Settings
from backend_ref.mail import (
    OutboxMailer,
    SmtpMailer,
    compose,
    make_mailer,
    read_outbox,
    send_later,
)


class Inbox:
    """An aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


def mail_settings(tmp_path, **overrides) -> Settings:
    return Settings(
        _env_file=None,
        users_db_url="sqlite://:memory:",
        content_db_url="sqlite://:memory:",
        schema_setup="create",  # in-memory databases cannot be migrated in a separate context
        outbox_dir=tmp_path / "outbox",
        mail_from="backend-ref <no-reply@app.example>",
        smtp_host="127.0.0.1",
        smtp_timeout_seconds=5,
        **overrides,
    )


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def plain_server():
    """An SMTP server on a free loopback port, without TLS."""
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def tls_server(ca):
    """An SMTP server that requires STARTTLS (certificate of a test CA) and a login."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"relay-password", handled=False)

    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context,
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    controller.start()
    yield inbox, port, logins
    controller.stop()


def message(settings, to="ann@example.com", subject="Hello") -> EmailMessage:
    return compose(settings, to, subject, "Käse, one line of text.\n")


async def test_plain_smtp_on_loopback_delivers_the_message(tmp_path, plain_server):
    inbox, port = plain_server
    settings = mail_settings(tmp_path, mail_backend="smtp", smtp_port=port, smtp_security="none")
    mailer = make_mailer(settings)
    assert isinstance(mailer, SmtpMailer)
    await mailer.send(message(settings))
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "no-reply@app.example"
    assert envelope.rcpt_tos == ["ann@example.com"]
    content = envelope.content.decode()
    assert "Subject: Hello" in content and "Message-ID: <" in content and "Date: " in content


async def test_starttls_with_a_verified_certificate_and_a_login(tmp_path, ca, tls_server):
    inbox, port, logins = tls_server
    settings = mail_settings(
        tmp_path,
        mail_backend="smtp",
        smtp_port=port,
        smtp_security="starttls",
        smtp_username="relay-user",
        smtp_password="relay-password",
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    await SmtpMailer(settings, tls_context=client_context).send(message(settings))
    assert logins == [(b"relay-user", b"relay-password")]
    assert [e.rcpt_tos for e in inbox.envelopes] == [["ann@example.com"]]
    assert "relay-password" not in repr(settings)


async def test_starttls_refuses_a_certificate_it_cannot_verify(tmp_path, tls_server):
    inbox, port, logins = tls_server
    settings = mail_settings(tmp_path, smtp_port=port, smtp_security="starttls")
    with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError)):
        await SmtpMailer(settings).send(message(settings))  # the system trust store: unknown CA
    assert inbox.envelopes == [] and logins == []


async def test_starttls_is_required_not_optional(tmp_path, plain_server):
    inbox, port = plain_server  # this server offers no STARTTLS
    settings = mail_settings(tmp_path, smtp_port=port, smtp_security="starttls")
    with pytest.raises(aiosmtplib.SMTPException):
        await SmtpMailer(settings).send(message(settings))
    assert inbox.envelopes == []  # nothing was sent in the clear


async def test_a_wrong_relay_password_is_an_error_not_a_silent_loss(tmp_path, ca, tls_server):
    inbox, port, _ = tls_server
    settings = mail_settings(
        tmp_path,
        smtp_port=port,
        smtp_username="relay-user",
        smtp_password="not-the-password",
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await SmtpMailer(settings, tls_context=client_context).send(message(settings))
    assert "not-the-password" not in str(refused.value)
    assert inbox.envelopes == []


async def test_a_relay_that_is_down_is_logged_by_class_only(tmp_path, caplog):
    settings = mail_settings(tmp_path, smtp_port=free_port(), smtp_security="none")
    mail = compose(settings, "ann@example.com", "Reset", "secret-link-token-123\n")
    tasks = BackgroundTasks()
    send_later(tasks, "reset mail", SmtpMailer(settings).send, mail)
    with caplog.at_level(logging.WARNING, logger="backend_ref.mail"):
        await tasks()  # does not raise
    (record,) = [r for r in caplog.records if r.name == "backend_ref.mail"]
    assert record.getMessage() == "reset mail failed: SMTPConnectError"
    assert "secret-link-token-123" not in caplog.text and "ann@example.com" not in caplog.text


async def test_the_outbox_writes_whole_files_that_read_back(tmp_path):
    settings = mail_settings(tmp_path)
    mailer = make_mailer(settings)
    assert isinstance(mailer, OutboxMailer)
    sent = [message(settings, to=f"user{i}@example.com", subject=f"n{i}") for i in range(20)]
    await asyncio.gather(*(mailer.send(m) for m in sent))
    received = read_outbox(settings.outbox_dir)
    assert sorted(m["To"] for m in received) == sorted(m["To"] for m in sent)
    assert all(m.get_content() == "Käse, one line of text.\n" for m in received)
    assert sorted(p.suffix for p in settings.outbox_dir.iterdir()) == [".eml"] * 20


def test_header_injection_is_refused(tmp_path):
    settings = mail_settings(tmp_path)
    with pytest.raises(ValueError):
        compose(settings, "ann@example.com", "Hi\r\nBcc: eve@example.com", "x")


async def test_the_app_creates_the_mailer_its_settings_name(tmp_path):
    for backend, kind in (("outbox", OutboxMailer), ("smtp", SmtpMailer)):
        settings = mail_settings(tmp_path, mail_backend=backend, site_dir=tmp_path / "no-site")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            assert isinstance(app.state.mailer, kind)


async def test_an_ascii_mail_keeps_its_links_whole_in_the_outbox_file(tmp_path):
    settings = mail_settings(tmp_path)
    link = "http://127.0.0.1:8000/account/reset-password#token=" + "A1_-" * 20
    mail = compose(settings, "ann@example.com", "Reset", f"Open:\n\n{link}\n")
    await OutboxMailer(settings.outbox_dir).send(mail)
    (path,) = settings.outbox_dir.iterdir()
    assert link.encode() in path.read_bytes()  # no quoted-printable soft breaks to undo
