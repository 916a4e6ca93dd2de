"""`make bench-enumeration`: does the time of an answer tell whether an account exists?

Starts backend-ref on a loopback port (embedded SQLite, the default hashing parameters,
abuse limits lifted because every request comes from one address), registers one account,
then sends, one at a time and in a shuffled order, pairs of requests that differ only in
whether the account exists:

- login: the real address with a wrong password, against an address nobody uses;
- forgot-password and request-verification: the real address against an unknown one;
- registration in `enumeration_safe` mode: the taken address against a fresh one.

For each pair it reports the median and the 10th/90th percentiles of the response time, the
ratio of the medians (1.00 means indistinguishable at the median) and whether status, body and
headers (the Date header aside) were identical. Results go to `bench/results/enumeration.json`
and `bench/results/enumeration.md`. The test suite checks the bodies and headers; timing is
only ever measured here, never asserted in a test.
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, UNLIMITED, Server, log  # noqa: E402

EMAIL, PASSWORD = "owner@example.com", "owner-password-123"


def pairs(fresh) -> dict[str, tuple]:
    """name -> (request for an existing account, request for a missing one), as httpx kwargs."""
    return {
        "login, wrong password vs unknown address": (
            dict(method="POST", url="/api/auth/token", data={"username": EMAIL, "password": "x" * 12}),
            dict(method="POST", url="/api/auth/token", data={"username": fresh(), "password": "x" * 12}),
        ),
        "forgot-password": (
            dict(method="POST", url="/api/auth/forgot-password", json={"email": EMAIL}),
            dict(method="POST", url="/api/auth/forgot-password", json={"email": fresh()}),
        ),
        "request-verification": (
            dict(method="POST", url="/api/auth/request-verification", json={"email": EMAIL}),
            dict(method="POST", url="/api/auth/request-verification", json={"email": fresh()}),
        ),
        "register (enumeration_safe), taken vs fresh address": (
            dict(method="POST", url="/api/auth/register", json={"email": EMAIL, "display_name": "Someone", "password": "a long new passphrase"}),
            dict(method="POST", url="/api/auth/register", json={"email": fresh(), "display_name": "Someone", "password": "a long new passphrase"}),
        ),
    }  # fmt: skip


def comparable(r: httpx.Response) -> tuple:
    headers = sorted((k, v) for k, v in r.headers.items() if k not in ("date", "content-length"))
    return r.status_code, r.content, tuple(headers)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=10)[int(q * 10) - 1]


def measure(http: httpx.Client, samples: int) -> dict:
    counter = iter(range(10**9))
    results = {}
    for name, _ in pairs(lambda: "x@example.com").items():
        times = {"exists": [], "missing": []}
        shapes = {"exists": set(), "missing": set()}
        plan = ["exists", "missing"] * samples
        random.shuffle(plan)
        for _ in range(3):  # warm both paths
            for kind in ("exists", "missing"):
                request = pairs(lambda: f"nobody{next(counter)}@example.com")[name]
                http.request(**request[kind == "missing"])
        for kind in plan:
            request = pairs(lambda: f"nobody{next(counter)}@example.com")[name]
            started = time.perf_counter()
            r = http.request(**request[kind == "missing"])
            times[kind].append((time.perf_counter() - started) * 1000)
            shapes[kind].add(comparable(r))
        medians = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {
            "samples": samples,
            "statuses": sorted({s[0] for shape in shapes.values() for s in shape}),
            "identical_answers": len(shapes["exists"] | shapes["missing"]) == 1,
            "ratio_of_medians": medians["missing"] / medians["exists"],
            **{
                kind: {
                    "median_ms": medians[kind],
                    "p10_ms": percentile(values, 0.1),
                    "p90_ms": percentile(values, 0.9),
                }
                for kind, values in times.items()
            },
        }
        log(f"{name}: ratio {results[name]['ratio_of_medians']:.2f}")
    return results


def markdown(report: dict) -> str:
    lines = [
        f"# Enumeration timing, {report['date']}",
        "",
        "`make bench-enumeration`: one server (SQLite, default Argon2id), requests one at a time"
        f" in a shuffled order, {report['samples']} per kind. Times in ms: median (p10–p90).",
        "",
        "| request | account exists | no account | ratio of medians | same status, body, headers |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["pairs"].items():
        cells = [
            f"{r[k]['median_ms']:.1f} ({r[k]['p10_ms']:.1f}–{r[k]['p90_ms']:.1f})"
            for k in ("exists", "missing")
        ]
        same = "yes" if r["identical_answers"] else f"**no** ({r['statuses']})"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {r['ratio_of_medians']:.2f} | {same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=150, help="requests per kind and pair")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backend-ref-enum-") as tmp:
        env = {
            "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp}/users.sqlite3",
            "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp}/content.sqlite3",
            "BACKEND_REF_OUTBOX_DIR": f"{tmp}/outbox",
            "BACKEND_REF_REGISTRATION_MODE": "enumeration_safe",
            "BACKEND_REF_EMAIL_LIMIT_PER_ADDRESS": "1000000/minute",
            "BACKEND_REF_EMAIL_LIMIT_PER_ACCOUNT": "1000000/minute",
            **UNLIMITED,
        }
        server = Server("enumeration", "backend_ref.app:create_app", env, Path(tmp))
        try:
            server.wait_ready("/api/health")
            with httpx.Client(base_url=server.url, timeout=30) as http:
                r = http.post(
                    "/api/auth/register",
                    json={"email": EMAIL, "display_name": "Owner", "password": PASSWORD},
                )
                assert r.status_code in (201, 202), r.text
                report = {
                    "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "samples": args.samples,
                    "pairs": measure(http, args.samples),
                }
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "enumeration.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (RESULTS / "enumeration.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
