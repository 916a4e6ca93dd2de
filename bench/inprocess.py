"""CPU time of one request, with no server and no sockets: the ASGI app called directly.

`make bench` measures throughput through uvicorn and wrk, which is what users see but moves
with the machine's load. This script answers the narrower question an optimisation needs:
how many microseconds of the event loop's thread one request costs (`time.thread_time`, so
other processes on the machine do not count). It builds the bare app and backend-ref on
SQLite in a temporary folder, seeds 10 users and 60 comments through the API, and prints the
median of 5 runs for each path. `--profile NAME` prints a cProfile of 300 requests instead.

    .venv/bin/python bench/inprocess.py            # bare, me, me_cached, comments
    .venv/bin/python bench/inprocess.py --profile comments
"""

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_app import create_app as create_bare_app  # noqa: E402

from backend_ref.app import create_app  # noqa: E402
from backend_ref.comments import sync_articles  # noqa: E402
from backend_ref.config import Settings  # noqa: E402

PASSWORD = "a-long-password-zz9"  # noqa: S105 (bench users on a throwaway database)


async def call(app, path: str, headers=(), query: bytes = b"") -> int:
    """One GET through the whole ASGI stack; the response status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    statuses = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def cpu_us(app, path, headers=(), query=b"", n=1000) -> float:
    """Median event-loop-thread CPU time of one request, in µs, over 5 runs of `n`."""
    assert await call(app, path, headers, query) == 200
    runs = []
    for _ in range(5):
        start = time.thread_time()
        for _ in range(n):
            await call(app, path, headers, query)
        runs.append((time.thread_time() - start) / n * 1e6)
    return statistics.median(runs)


async def seed(app) -> str:
    """10 users, an article with 60 comments; an access token of the first user."""
    with app.state.tortoise:
        await sync_articles([("bench", "Bench")])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        tokens = []
        for i in range(10):
            email = f"user{i}@example.com"
            body = {"email": email, "display_name": f"User {i}", "password": PASSWORD}
            assert (await http.post("/api/auth/register", json=body)).status_code == 201
            form = {"username": email, "password": PASSWORD}
            tokens.append((await http.post("/api/auth/token", data=form)).json()["access_token"])
        for i in range(60):
            body = {"body": f"Comment {i}: " + "a thoughtful remark about the article " * 3}
            auth = {"Authorization": f"Bearer {tokens[i % 10]}"}
            r = await http.post("/api/articles/bench/comments", json=body, headers=auth)
            assert r.status_code == 201
    return tokens[0]


async def main(profile: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="backend-ref-inprocess-"))
    common = {
        "_env_file": None,
        "users_db_url": f"sqlite://{work}/users.sqlite3",
        "content_db_url": f"sqlite://{work}/content.sqlite3",
        "site_dir": work / "no-site",
        "outbox_dir": work / "outbox",
        "register_limit_per_address": "1000/minute",
        "login_limit_per_address": "1000/minute",
    }
    uncached = create_app(Settings(current_user_cache_seconds=0, **common))
    cached = create_app(Settings(current_user_cache_seconds=5, **common))
    async with uncached.router.lifespan_context(uncached), cached.router.lifespan_context(cached):
        token = await seed(uncached)
        auth = [(b"authorization", f"Bearer {token}".encode())]
        paths = {
            "bare": (create_bare_app(), "/bare", (), b""),
            "me": (uncached, "/api/users/me", auth, b""),
            "me_cached": (cached, "/api/users/me", auth, b""),
            "comments": (uncached, "/api/articles/bench/comments", (), b"limit=50"),
        }
        if profile:
            app, path, headers, query = paths[profile]
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(300):
                await call(app, path, headers, query)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
            return
        bare = await cpu_us(*paths["bare"])
        print(f"{'path':<10} {'µs/request':>11} {'ratio to bare':>14}")
        for name, (app, path, headers, query) in paths.items():
            us = bare if name == "bare" else await cpu_us(app, path, headers, query, n=300)
            print(f"{name:<10} {us:>11.0f} {bare / us:>14.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["bare", "me", "me_cached", "comments"])
    asyncio.run(main(parser.parse_args().profile))
