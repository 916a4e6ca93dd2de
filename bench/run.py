"""`make bench`: every hot path of backend-ref as a ratio to a bare FastAPI endpoint, in one run.

Starts its own servers on loopback ports (the bare app of `bench/bare_app.py` and the real app,
with identical uvicorn settings), loads them with wrk for a bounded time and number of
connections, stops everything it started, and writes `bench/results/<date>.json`,
`bench/results/<date>.md` and `bench/results/latest.md`.

Runs on the embedded SQLite default, and on PostgreSQL when `BACKEND_REF_BENCH_POSTGRES_URL`
names a loopback server (e.g. `postgres://postgres@127.0.0.1:5432`); it creates and drops the
throwaway databases `backend_ref_bench_users` and `backend_ref_bench_content` itself.
"""

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PYTHON = sys.executable
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
SERVER_OPTIONS = [  # identical for the bare app and the real app
    "--host", "127.0.0.1", "--loop", "uvloop", "--http", "httptools",
    "--no-access-log", "--log-level", "warning", "--workers", "1",
]  # fmt: skip

# Bounds of every load: seconds per measurement, connections, rounds.
ROUNDS = 5
SECONDS = 4
WARMUP_SECONDS = 2
CONNECTIONS = 32
STORM_SECONDS = 12  # logins run this long; /users/me is measured inside, 2 s in from each end
OVERLOAD_CONNECTIONS = 160  # more waiting logins than the hasher's queue accepts
COLD_STARTS = 5
# What `--scenario` can pick; the default is all of them.
SCENARIOS = ("me_uncached", "me_cached", "comments", "login", "storm", "overload", "cold_start")
ONLY: set[str] = set(SCENARIOS)
USER_EMAIL, USER_PASSWORD = "bench@example.com", "bench-password-123"
COMMENTS, AUTHORS = 60, 10

TARGETS = {
    "me_uncached": 0.20,
    "me_cached": 0.60,
    "comments": 0.09,
    "storm_me_ratio": 0.5,
    "storm_me_p99_ms": 150.0,
    "storm_peak_mb": 256.0,
    "login_capacity_ratio": 0.8,
    "cold_start_ratio": 1.3,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- servers


class Server:
    """One uvicorn process on a loopback port; `stop()` ends it (and only it)."""

    def __init__(self, name: str, target: str, env: dict[str, str], cwd: Path, app_dir=None):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [PYTHON, "-m", "uvicorn", "--factory", target, *SERVER_OPTIONS]
        cmd += ["--port", str(self.port)] + (["--app-dir", str(app_dir)] if app_dir else [])
        self.log_path = cwd / f"{name}-{self.port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            cmd, env={**os.environ, **env}, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, path: str, timeout: float = 30.0) -> float:
        """Seconds from process launch to the first 200 on `path`."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError(f"{self.name} did not answer 200 on {path} within {timeout} s")

    def peak_rss_mb(self) -> float:
        """VmHWM: the highest resident set size the process has had so far."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


UNLIMITED = {
    "BACKEND_REF_LOGIN_LIMIT_PER_ADDRESS": "1000000/minute",
    "BACKEND_REF_LOGIN_FAILURES_PER_ACCOUNT": "1000000/minute",
    "BACKEND_REF_REGISTER_LIMIT_PER_ADDRESS": "1000000/minute",
    "BACKEND_REF_REGISTER_LIMIT_PER_ACCOUNT": "1000000/minute",
    "BACKEND_REF_COMMENT_LIMIT_PER_USER": "1000000/minute",
}


def bare_server(cwd: Path) -> Server:
    return Server("bare", "bare_app:create_app", {}, cwd, app_dir=BENCH)


def app_server(name: str, db: dict, cwd: Path, cache_seconds: float) -> Server:
    env = {
        "BACKEND_REF_USERS_DB_URL": db["users"],
        "BACKEND_REF_CONTENT_DB_URL": db["content"],
        "BACKEND_REF_CURRENT_USER_CACHE_SECONDS": str(cache_seconds),
        # The bench measures capacity, not abuse limits: every load comes from one address,
        # so the default per-address limits would turn the login storm into 429s.
        **UNLIMITED,
    }
    return Server(name, "backend_ref.app:create_app", env, cwd)


# ---------------------------------------------------------------------------- wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * UNITS[unit]


def wrk(url, seconds, connections=CONNECTIONS, headers=(), script=None, env=None, timeout=2):
    """One bounded wrk run; 2xx per second, latency percentiles, errors and statuses."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(
        [*cmd, url],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    m = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m)),", out)
    requests, duration_s = int(m.group(1)), _ms(m.group(2)) / 1e3
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors = dict(zip(errors, map(int, m.groups()), strict=True))
    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M))
    if len(pct) != 2:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    result = {
        "rps": (requests - non2xx) / duration_s,
        "requests": requests,
        "non_2xx": non2xx,
        "socket_errors": errors,
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "seconds": duration_s,
    }
    if m := re.search(r"^STATUS (\{.*\})$", out, re.M):
        result["statuses"] = json.loads(m.group(1))
    return result


# ---------------------------------------------------------------------------- databases


def sqlite_databases(workdir: Path) -> dict:
    return {
        "name": "sqlite",
        "users": f"sqlite://{workdir}/users.sqlite3",
        "content": f"sqlite://{workdir}/content.sqlite3",
    }


PG_DATABASES = ("backend_ref_bench_users", "backend_ref_bench_content")


async def _pg(server_url: str, statements: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url.rstrip("/") + "/postgres")
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def postgres_databases(server_url: str) -> dict:
    host = urlsplit(server_url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to benchmark against {host}: loopback only")
    statements = []
    for name in PG_DATABASES:
        statements += [f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"]
    asyncio.run(_pg(server_url, statements))
    base = server_url.rstrip("/")
    return {
        "name": "postgres",
        "users": f"{base}/{PG_DATABASES[0]}",
        "content": f"{base}/{PG_DATABASES[1]}",
    }


def drop_postgres_databases(server_url: str) -> None:
    asyncio.run(_pg(server_url, [f"DROP DATABASE IF EXISTS {name}" for name in PG_DATABASES]))


def seed(app_url: str) -> tuple[str, str]:
    """A real user to log in as, and an article with COMMENTS comments by AUTHORS authors."""
    with httpx.Client(base_url=app_url, timeout=30) as http:

        def account(email: str, password: str, name: str) -> str:
            r = http.post(
                "/api/auth/register",
                json={"email": email, "display_name": name, "password": password},
            )
            assert r.status_code == 201, r.text
            r = http.post("/api/auth/token", data={"username": email, "password": password})
            assert r.status_code == 200, r.text
            return r.json()["access_token"]

        token = account(USER_EMAIL, USER_PASSWORD, "Bench")
        authors = [
            account(f"author{i}@example.com", f"author-password-{i}", f"Author {i}")
            for i in range(AUTHORS)
        ]
        slug = http.get("/api/articles").json()[0]["slug"]
        for i in range(COMMENTS):
            r = http.post(
                f"/api/articles/{slug}/comments",
                headers={"Authorization": f"Bearer {authors[i % AUTHORS]}"},
                json={"body": f"Comment {i}: " + "a thoughtful remark about the article " * 3},
            )
            assert r.status_code == 201, r.text
        page = http.get(f"/api/articles/{slug}/comments", params={"limit": 50}).json()
        assert len(page["items"]) == 50 and page["items"][0]["author"]["display_name"]
    return token, slug


# ---------------------------------------------------------------------------- measurements


def verify_seconds(samples: int = 15) -> float:
    """Median time of one Argon2id verify with the app's default parameters, in this process."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from backend_ref.config import Settings

    s = Settings(_env_file=None)
    pwd = PasswordHash(
        (
            Argon2Hasher(
                time_cost=s.argon2_time_cost,
                memory_cost=s.argon2_memory_kib,
                parallelism=s.argon2_parallelism,
            ),
        )
    )
    stored = pwd.hash(USER_PASSWORD)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        pwd.verify(USER_PASSWORD, stored)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parallel_verify_rate(threads: int, seconds: float = 3.0) -> float:
    """Verifies per second that `threads` threads achieve right now, in this process, each at
    the niceness the app gives its hash threads (so other work on the machine weighs on both
    alike)."""
    from pwdlib.hashers.argon2 import Argon2Hasher

    from backend_ref.config import Settings

    s = Settings(_env_file=None)
    argon2 = Argon2Hasher(
        time_cost=s.argon2_time_cost,
        memory_cost=s.argon2_memory_kib,
        parallelism=s.argon2_parallelism,
    )
    stored = argon2.hash(USER_PASSWORD)
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(i: int) -> None:
        if sys.platform == "linux" and s.hash_thread_niceness > 0:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), s.hash_thread_niceness)
        while time.perf_counter() < deadline:
            argon2.verify(USER_PASSWORD, stored)
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_database(db: dict, workdir: Path) -> dict:
    """Every scenario (of `ONLY`) on one database; servers started here are stopped here."""
    log(f"{db['name']}: preparing articles and users")
    load_before = os.getloadavg()
    env = {
        "BACKEND_REF_USERS_DB_URL": db["users"],
        "BACKEND_REF_CONTENT_DB_URL": db["content"],
        **UNLIMITED,
    }
    subprocess.run(
        [
            PYTHON,
            "-c",
            "from backend_ref.app import main; main()",
            "sync-articles",
            str(ROOT / "nbs"),
        ],
        env={**os.environ, **env},
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=60,
    )
    servers = []
    try:
        bare = bare_server(workdir)
        uncached = app_server("app-uncached", db, workdir, cache_seconds=0)
        servers += [bare, uncached]
        bare.wait_ready("/bare")
        uncached.wait_ready("/api/health")
        token, slug = seed(uncached.url)
        cached = app_server("app-cached", db, workdir, cache_seconds=5)
        servers.append(cached)
        cached.wait_ready("/api/health")
        auth = [f"Authorization: Bearer {token}"]
        scenarios = {
            "bare": (bare.url + "/bare", []),
            "me_uncached": (uncached.url + "/api/users/me", auth),
            "me_cached": (cached.url + "/api/users/me", auth),
            "comments": (f"{uncached.url}/api/articles/{slug}/comments?limit=50", []),
        }
        me_url = scenarios["me_uncached"][0]  # the storm measures it even when not picked
        scenarios = {k: v for k, v in scenarios.items() if k == "bare" or k in ONLY}
        for url, headers in scenarios.values():
            wrk(url, WARMUP_SECONDS, headers=headers)
        rounds: dict[str, list[dict]] = {name: [] for name in scenarios}
        for i in range(ROUNDS):
            log(f"{db['name']}: round {i + 1}/{ROUNDS} of {', '.join(scenarios)}")
            for name, (url, headers) in scenarios.items():
                rounds[name].append(wrk(url, SECONDS, headers=headers))
        result = {"scenarios": {}}
        for name, runs in rounds.items():
            ratios = [r["rps"] / b["rps"] for r, b in zip(runs, rounds["bare"], strict=True)]
            result["scenarios"][name] = {
                "rps": summary([r["rps"] for r in runs]),
                "ratio_to_bare": summary(ratios),
                "p50_ms": summary([r["p50_ms"] for r in runs]),
                "p99_ms": summary([r["p99_ms"] for r in runs]),
                "errors": sum(r["non_2xx"] + sum(r["socket_errors"].values()) for r in runs),
                "runs": runs,
            }

        login_env = {
            "BENCH_LOGIN_BODY": urlencode({"username": USER_EMAIL, "password": USER_PASSWORD})
        }
        login_url, script = uncached.url + "/api/auth/token", BENCH / "login.lua"
        if "login" in ONLY:
            result["login"] = measure_logins(db, login_url, script, login_env)
        if "storm" in ONLY:
            unloaded = (
                result["scenarios"]["me_uncached"]["rps"]["median"]
                if "me_uncached" in result["scenarios"]
                else wrk(me_url, SECONDS, headers=auth)["rps"]
            )
            result["storm"] = measure_storm(
                db, uncached, login_url, script, login_env, me_url, auth, unloaded
            )
        if "overload" in ONLY:
            result["overload"] = measure_overload(db, uncached, login_url, script, login_env)
    finally:
        for server in servers:
            server.stop()
    if "cold_start" in ONLY:
        result["cold_start"] = measure_cold_start(db, workdir)
    # The machine's 1-minute load average (runnable processes, ours included) before and after:
    # on a shared machine it says how much of the spread is other people's work.
    result["load_average"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    return result


def measure_logins(db: dict, login_url: str, script: Path, login_env: dict) -> dict:
    """Login throughput of 32 connections, against what the hasher allows."""
    log(f"{db['name']}: login throughput, {CONNECTIONS} connections")
    verify_s = verify_seconds()
    logins = [
        wrk(login_url, SECONDS, script=script, env=login_env, timeout=10) for _ in range(ROUNDS)
    ]
    capacity = (os.cpu_count() or 1) / verify_s
    measured_capacity = parallel_verify_rate(os.cpu_count() or 1)
    return {
        "verify_ms": verify_s * 1e3,
        "hasher_capacity_per_s": capacity,
        "measured_parallel_verifies_per_s": measured_capacity,
        "ratio_to_measured_capacity": summary(
            [r["statuses"]["2xx"] / r["seconds"] / measured_capacity for r in logins]
        ),
        "rps": summary([r["statuses"]["2xx"] / r["seconds"] for r in logins]),
        "ratio_to_capacity": summary(
            [r["statuses"]["2xx"] / r["seconds"] / capacity for r in logins]
        ),
        "p50_ms": summary([r["p50_ms"] for r in logins]),
        "p99_ms": summary([r["p99_ms"] for r in logins]),
        "runs": logins,
    }


def measure_storm(db, uncached, login_url, script, login_env, me_url, auth, unloaded) -> dict:
    """`/users/me` (uncached) while 32 connections log in; the server's peak memory."""
    log(f"{db['name']}: /users/me during a login storm of {CONNECTIONS} connections")
    storms = []
    for _ in range(ROUNDS):
        storm = {}

        def run_logins(storm=storm):
            storm["logins"] = wrk(
                login_url, STORM_SECONDS, script=script, env=login_env, timeout=10
            )

        thread = threading.Thread(target=run_logins)
        thread.start()
        time.sleep(2)
        storm["me"] = wrk(me_url, STORM_SECONDS - 4, headers=auth)
        thread.join(timeout=STORM_SECONDS + 60)
        storm["peak_rss_mb"] = uncached.peak_rss_mb()
        storms.append(storm)
    return {
        "me_rps": summary([s["me"]["rps"] for s in storms]),
        "me_ratio_to_unloaded": summary([s["me"]["rps"] / unloaded for s in storms]),
        "me_p50_ms": summary([s["me"]["p50_ms"] for s in storms]),
        "me_p99_ms": summary([s["me"]["p99_ms"] for s in storms]),
        "me_errors": sum(
            s["me"]["non_2xx"] + sum(s["me"]["socket_errors"].values()) for s in storms
        ),
        "logins": {
            key: sum(s["logins"]["statuses"][key] for s in storms)
            for key in ("2xx", "429", "503", "other")
        },
        "login_timeouts": sum(s["logins"]["socket_errors"]["timeout"] for s in storms),
        "login_rps": summary(
            [s["logins"]["statuses"]["2xx"] / s["logins"]["seconds"] for s in storms]
        ),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in storms),
        "runs": storms,
    }


def measure_overload(db, uncached, login_url, script, login_env) -> dict:
    """More logins at once than the hasher's queue accepts: shed with 503, never time out."""
    log(f"{db['name']}: overload, {OVERLOAD_CONNECTIONS} connections logging in")
    over = wrk(
        login_url, SECONDS, connections=OVERLOAD_CONNECTIONS, script=script, env=login_env,
        timeout=10,
    )  # fmt: skip
    return {
        "connections": OVERLOAD_CONNECTIONS,
        "statuses": over["statuses"],
        "timeouts": over["socket_errors"]["timeout"],
        "login_rps": over["statuses"]["2xx"] / over["seconds"],
        "p99_ms": over["p99_ms"],
        "peak_rss_mb": uncached.peak_rss_mb(),
    }


def measure_cold_start(db: dict, workdir: Path) -> dict:
    """Process launch to the first 200: the bare app, the bare app after importing the libraries
    the real app is built on (its floor), and the real app."""
    log(f"{db['name']}: cold start, launch to first 200, {COLD_STARTS} times each")
    starts = {"bare": [], "libraries": [], "app": []}
    for i in range(COLD_STARTS + 1):  # the first round only warms the page cache
        for name in starts:
            if name == "bare":
                server = bare_server(workdir)
            elif name == "libraries":
                target = "bare_app:create_app_with_libraries"
                server = Server("bare-libraries", target, {}, workdir, app_dir=BENCH)
            else:
                server = app_server("app", db, workdir, 5)
            try:
                seconds = server.wait_ready("/api/health" if name == "app" else "/bare")
            finally:
                server.stop()
            if i:
                starts[name].append(seconds)
    return {
        "bare_s": summary(starts["bare"]),
        "app_s": summary(starts["app"]),
        "libraries_s": summary(starts["libraries"]),
        "ratio": summary([a / b for a, b in zip(starts["app"], starts["bare"], strict=True)]),
        "libraries_ratio": summary(
            [a / b for a, b in zip(starts["libraries"], starts["bare"], strict=True)]
        ),
    }


def time_make_test() -> dict:
    log("timing `make test`")
    start = time.perf_counter()
    done = subprocess.run(
        ["make", "test"], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    lines = done.stdout.strip().splitlines() if done.stdout else []
    summaries = [line for line in lines if re.search(r"\d+ (passed|failed)", line)]
    tail = summaries[-1:] or lines[-1:]  # pytest's summary line, e.g. "699 passed in 120 s"
    return {"seconds": time.perf_counter() - start, "passed": done.returncode == 0, "tail": tail}


# ---------------------------------------------------------------------------- report


def _fmt(s: dict, digits: int = 0) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _storm_lines(db: str, st: dict) -> list[str]:
    lg = st["logins"]
    met = (
        st["me_ratio_to_unloaded"]["median"] >= TARGETS["storm_me_ratio"]
        and st["me_p99_ms"]["median"] <= TARGETS["storm_me_p99_ms"]
        and st["me_errors"] == 0
    )
    return [
        f"| `/users/me` during a login storm ({CONNECTIONS} connections), "
        f"ratio to its own unloaded rate; errors: {st['me_errors']} | {db} | "
        f"{_fmt(st['me_rps'])} | {_fmt(st['me_ratio_to_unloaded'], 2)} | "
        f"{_fmt(st['me_p50_ms'], 1)} | {_fmt(st['me_p99_ms'], 1)} | "
        f"≥ 0.50, p99 ≤ 150 ms, no errors | {_met(met)} |",
        f"| logins during the storm: {lg['2xx']} 2xx, {lg['429']} 429, {lg['503']} 503, "
        f"{lg['other']} other, {st['login_timeouts']} timeouts | {db} | "
        f"{_fmt(st['login_rps'], 1)} | | | | (counted) | |",
        f"| peak server memory (VmHWM) during the storm | {db} | {st['peak_rss_mb']:.0f} MB "
        f"| | | | ≤ 256 MB | {_met(st['peak_rss_mb'] <= TARGETS['storm_peak_mb'])} |",
    ]


def _login_lines(db: str, lo: dict, results: dict) -> list[str]:
    cpus = results["machine"]["cpus"]
    met = lo["ratio_to_capacity"]["median"] >= TARGETS["login_capacity_ratio"]
    return [
        f"| login throughput ({CONNECTIONS} connections) vs hasher capacity: "
        f"{cpus} cores / {lo['verify_ms']:.1f} ms per verify = "
        f"{lo['hasher_capacity_per_s']:.0f}/s | {db} | {_fmt(lo['rps'], 1)} | "
        f"{_fmt(lo['ratio_to_capacity'], 2)} | {_fmt(lo['p50_ms'], 0)} | {_fmt(lo['p99_ms'], 0)} "
        f"| ≥ 0.80 | {_met(met)} |",
        f"| login throughput vs the verifies/s that {cpus} threads (niced like the app's) "
        f"actually achieved in the bench process in this run: "
        f"{lo['measured_parallel_verifies_per_s']:.0f}/s (machine load included) | {db} | "
        f"{_fmt(lo['rps'], 1)} | {_fmt(lo['ratio_to_measured_capacity'], 2)} | | | "
        "(context) | |",
    ]


def _overload_lines(db: str, ov: dict) -> list[str]:
    st = ov["statuses"]
    return [
        f"| overload: {ov['connections']} connections logging in: {st['2xx']} 2xx, "
        f"{st['429']} 429, {st['503']} 503, {st['other']} other, {ov['timeouts']} timeouts "
        f"| {db} | {ov['login_rps']:.1f} | | | {ov['p99_ms']:.0f} | shed, no timeouts | "
        f"{_met(ov['timeouts'] == 0 and st['other'] == 0)} |"
    ]


def _cold_start_lines(db: str, cs: dict) -> list[str]:
    lines = [
        f"| cold start, launch to first 200: app {_fmt(cs['app_s'], 2)} s, bare "
        f"{_fmt(cs['bare_s'], 2)} s | {db} | | {_fmt(cs['ratio'], 2)} | | | ≤ 1.30 | "
        f"{_met(cs['ratio']['median'] <= TARGETS['cold_start_ratio'])} |"
    ]
    if "libraries_s" in cs:
        lines.append(
            f"| cold start floor: the bare app after importing the app's libraries (Tortoise, "
            f"PyJWT, pwdlib, limits, pydantic-settings, email-validator, aiosmtplib), "
            f"{_fmt(cs['libraries_s'], 2)} s | {db} | | {_fmt(cs['libraries_ratio'], 2)} "
            "| | | (context) | |"
        )
    return lines


def markdown(results: dict) -> str:
    lines = [
        f"# Benchmark results, {results['date']}",
        "",
        f"`make bench` on {results['machine']['cpus']} cores, Python {results['machine']['python']}, "
        f"uvicorn {results['versions']['uvicorn']} (uvloop, httptools, one worker, no access log), "
        f"FastAPI {results['versions']['fastapi']}, Tortoise ORM {results['versions']['tortoise-orm']}. "
        f"Each figure: median of {ROUNDS} runs of {SECONDS} s with {CONNECTIONS} connections "
        "(min–max in brackets); ratios are taken run by run against the bare endpoint measured "
        "in the same round.",
        "",
        "| scenario | db | req/s | ratio | p50 ms | p99 ms | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "bare": ("bare FastAPI endpoint (reference)", None),
        "me_uncached": ("`GET /api/users/me`, user row read every time", "me_uncached"),
        "me_cached": ("`GET /api/users/me`, 5 s current-user cache", "me_cached"),
        "comments": ("`GET /api/articles/{slug}/comments`, 50 with authors", "comments"),
    }
    for db, r in results["databases"].items():
        if "skipped" in r:
            continue
        for key, (label, target) in names.items():
            if key not in r["scenarios"]:
                continue
            s = r["scenarios"][key]
            goal = f"≥ {TARGETS[target]:.2f}" if target else ""
            met = _met(s["ratio_to_bare"]["median"] >= TARGETS[target]) if target else ""
            lines.append(
                f"| {label} | {db} | {_fmt(s['rps'])} | {_fmt(s['ratio_to_bare'], 3)} | "
                f"{_fmt(s['p50_ms'], 1)} | {_fmt(s['p99_ms'], 1)} | {goal} | {met} |"
            )
        st, lo = r.get("storm"), r.get("login")
        lines += _storm_lines(db, st) if st else []
        lines += _login_lines(db, lo, results) if lo else []
        lines += _overload_lines(db, r["overload"]) if "overload" in r else []
        lines += _cold_start_lines(db, r["cold_start"]) if "cold_start" in r else []
        if load := r.get("load_average"):
            lines.append(
                f"| machine load (1-minute load average, before → after) | {db} | "
                f"{load['before']:.1f} → {load['after']:.1f} on {results['machine']['cpus']} cores "
                "| | | | (context) | |"
            )
    mt = results.get("make_test")
    if mt:
        lines.append(
            f"| `make test` wall time ({'passed' if mt['passed'] else 'FAILED'}) | | "
            f"{mt['seconds']:.0f} s | | | | reported | |"
        )
    for db, r in results["databases"].items():
        if "skipped" in r:
            lines += ["", f"{db}: skipped ({r['skipped']})."]
    lines += ["", f"`make bench` wall time: {results['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-make-test", action="store_true", help="do not time `make test`")
    parser.add_argument("--only", choices=["sqlite", "postgres"], help="one database only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short round (a smoke test; prints, writes no file)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only these (repeatable); a partial run prints its table and writes no file",
    )
    args = parser.parse_args()
    if args.scenario:
        ONLY.intersection_update(args.scenario)
    if args.quick:
        global ROUNDS, SECONDS, STORM_SECONDS, COLD_STARTS
        ROUNDS, SECONDS, STORM_SECONDS, COLD_STARTS = 1, 3, 8, 1
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench installs it: apt-get install -y wrk)")
    started = time.perf_counter()
    date = datetime.now(UTC)
    results = {
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            p: version(p)
            for p in (
                "fastapi",
                "starlette",
                "uvicorn",
                "uvloop",
                "httptools",
                "tortoise-orm",
                "pydantic",
                "asyncpg",
                "argon2-cffi",
                "PyJWT",
            )
        },  # fmt: skip
        "settings": {
            "rounds": ROUNDS,
            "seconds": SECONDS,
            "connections": CONNECTIONS,
            "storm_seconds": STORM_SECONDS,
            "server_options": SERVER_OPTIONS,
        },
        "targets": TARGETS,
        "databases": {},
    }
    partial = bool(args.scenario or args.quick)  # printed, never written over the results
    if not (args.skip_make_test or partial):
        results["make_test"] = time_make_test()
    pg_url = os.environ.get("BACKEND_REF_BENCH_POSTGRES_URL")
    with tempfile.TemporaryDirectory(prefix="backend-ref-bench-") as tmp:
        if args.only in (None, "sqlite"):
            workdir = Path(tmp) / "sqlite"
            workdir.mkdir()
            results["databases"]["sqlite"] = run_database(sqlite_databases(workdir), workdir)
        if args.only in (None, "postgres"):
            if not pg_url:
                results["databases"]["postgres"] = {
                    "skipped": "BACKEND_REF_BENCH_POSTGRES_URL is not set"
                }
                log("postgres: skipped, BACKEND_REF_BENCH_POSTGRES_URL is not set")
            else:
                workdir = Path(tmp) / "postgres"
                workdir.mkdir()
                try:
                    results["databases"]["postgres"] = run_database(
                        postgres_databases(pg_url), workdir
                    )
                finally:
                    drop_postgres_databases(pg_url)
    results["wall_seconds"] = time.perf_counter() - started
    if partial:
        print(markdown(results))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = date.strftime("%Y-%m-%d")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (RESULTS / f"{stem}.md").write_text(table)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    log(f"wrote bench/results/{stem}.json, {stem}.md and latest.md")


if __name__ == "__main__":
    main()
