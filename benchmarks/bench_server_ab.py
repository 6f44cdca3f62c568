"""Server CPU per request of ``optscale serve`` at two versions of the code, interleaved in one run.

Starts the fake upstream (tests/fake_upstream.py, its own process) and two servers in front of it, each in
its own process with one uvicorn worker: "before" runs the ``src/`` tree of git revision ``--baseline``
(extracted with ``git archive`` into a temporary folder) with ``--baseline-loop``/``--baseline-http`` (by
default asyncio + h11: what uvicorn picked before uvloop and httptools were part of the ``server`` extra),
"after" runs this checkout's ``src/`` with uvicorn's automatic choice. Then ``--rounds`` rounds, each a
closed-loop slice of ``--nreq`` requests (``--clients`` concurrent clients, ``--n`` samples per request, a
fixed-N policy) against each side in alternating order; the server's CPU time (``/proc/<pid>/stat``
utime+stime) per request of each slice; medians per side and their ratio.

    python benchmarks/bench_server_ab.py --baseline 0be2099          # about 3 minutes on 2 cores
    python benchmarks/bench_server_ab.py --baseline main --configs none --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import bench_server as B  # noqa: E402

LAUNCH = """
import sys, uvicorn
from optscale.server.config import ServerConfig
from optscale.server.app import create_app
cfg = ServerConfig(upstream=sys.argv[1], model="fake", scorer=sys.argv[2], method=sys.argv[3],
                   max_concurrent_requests=8, max_queue=64)
uvicorn.run(create_app(cfg), host="127.0.0.1", port=int(sys.argv[4]), log_level="warning",
            loop=sys.argv[5], http=sys.argv[6])
"""


def start(src: str, fake_port: int, scorer: str, method: str, loop: str, http: str):

    port = B.free_port()
    env = {**os.environ, "PYTHONPATH": src}
    p = subprocess.Popen([sys.executable, "-c", LAUNCH, f"http://127.0.0.1:{fake_port}/v1", scorer, method,
                          str(port), loop, http], env=env, stderr=subprocess.DEVNULL)
    return p, B.wait_ready(p, port, f"the server from {src}")


async def one_slice(c, url: str, pid: int, n: int, clients: int, nreq: int, method: str, seed0: int) -> float:
    cpu0 = B.cpu_seconds(pid)
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        for i in range(nreq // clients):
            r = await c.post(f"{url}/v1/chat/completions", json={
                "model": "fake", "messages": B.MSG, "max_tokens": 16, "seed": seed0 + k * 1000 + i,
                "optscale": {"method": method, "n_max": n}})
            assert r.status_code == 200 and r.json()["optscale"]["samples"] == n, r.text
            done += 1

    await asyncio.gather(*(worker(k) for k in range(clients)))
    return (B.cpu_seconds(pid) - cpu0) / done


async def compare(sides: dict, n: int, clients: int, nreq: int, rounds: int, method: str) -> dict:
    import httpx

    res: dict[str, list[float]] = {k: [] for k in sides}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
        for p, url in sides.values():  # warm both
            await one_slice(c, url, p.pid, n, clients, 5 * clients, method, 0)
        for r in range(rounds):
            order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
            for k, (p, url) in order:
                res[k].append(await one_slice(c, url, p.pid, n, clients, nreq, method, 100_000 * (r + 1)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision whose src/ is the 'before' side")
    ap.add_argument("--baseline-loop", default="asyncio")
    ap.add_argument("--baseline-http", default="h11")
    ap.add_argument("--n", type=int, default=4, help="samples per request (default 4)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--nreq", type=int, default=160, help="requests per slice (default 160)")
    ap.add_argument("--rounds", type=int, default=7, help="slices per side (default 7)")
    ap.add_argument("--configs", default="none,wave,sample",
                    help="comma list of: none (sc, no scorer), wave (reward endpoint, input_format=text), "
                         "sample (reward endpoint, one call per sample)")
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", a.baseline, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp.name], input=archive, check=True)
    fake, fake_port = B.start_fake()
    pool = f"http://127.0.0.1:{fake_port}/pooling"
    configs = {"none": ("none", "sc"),
               "wave": (f"reward-endpoint:{pool},max_retries=0,input_format=text", "bon"),
               "sample": (f"reward-endpoint:{pool},max_retries=0", "bon")}
    print(f"server CPU per request, {a.baseline} ({a.baseline_loop} + {a.baseline_http}) vs this checkout "
          f"(uvicorn's choice); n={a.n}, {a.rounds} interleaved slices of {a.nreq} requests per side")
    try:
        for name in a.configs.split(","):
            scorer, method = configs[name]
            sides = {"before": start(f"{tmp.name}/src", fake_port, scorer, method, a.baseline_loop,
                                     a.baseline_http),
                     "after": start(str(REPO / "src"), fake_port, scorer, method, "auto", "auto")}
            try:
                res = asyncio.run(compare(sides, a.n, a.clients, a.nreq, a.rounds, method))
            finally:
                for p, _ in sides.values():
                    p.terminate()
                    p.wait(10)
            med = {k: 1000 * sorted(v)[len(v) // 2] for k, v in res.items()}
            print(f"\n[{name}: scorer={scorer.split(':')[0]}, method={method}]")
            for k, v in med.items():
                print(f"  {k:6s} {v:6.2f} ms/request  {v / a.n:.3f} ms/sample   slices: "
                      + " ".join(f"{1000 * x:.2f}" for x in res[k]))
            print(f"  after/before {med['after'] / med['before']:.2f}", flush=True)
    finally:
        fake.terminate()
        fake.wait(10)
        tmp.cleanup()


if __name__ == "__main__":
    main()
