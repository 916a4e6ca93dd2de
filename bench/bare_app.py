"""The reference point of every benchmark: a bare FastAPI endpoint returning a small constant JSON.

Served by `bench/run.py` with exactly the server settings of the real app (one uvicorn worker,
uvloop, httptools, no access log), so every figure can be read as a ratio to this one.
"""

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/bare")
    async def bare() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_app_with_libraries() -> FastAPI:
    """The bare app, after importing the libraries backend-ref imports at start-up.

    Its cold start is the floor of the real app's: what the ORM, the JWT, hashing, settings,
    rate-limit, email-validation and SMTP libraries cost to import, with none of backend-ref's
    own code. `make bench` reports it next to the bare app and the real app.
    """
    import aiosmtplib  # noqa: F401
    import email_validator  # noqa: F401
    import jwt  # noqa: F401
    import limits.aio.strategies  # noqa: F401
    import pwdlib.hashers.argon2  # noqa: F401
    import pydantic_settings  # noqa: F401
    import tortoise.contrib.pydantic  # noqa: F401

    return create_app()
