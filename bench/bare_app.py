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
