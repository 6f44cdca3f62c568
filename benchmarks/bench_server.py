"""Overhead of ``optscale serve`` against calling the upstream directly, with a fast local fake upstream.

Both servers run as their own processes on 127.0.0.1: the fake upstream (tests/fake_upstream.py: answers
at once, honours ``n``, vLLM-style usage) and ``optscale serve --upstream <fake>`` (one uvicorn worker).
The client is this process (httpx, asyncio). Measured in one run:

1. latency, interleaved, same repetitions: one direct request for N samples (``n=N``) against one
   request through optscale that draws N samples (a fixed-N policy, so both draw the same work);
   p50/p99 of each, the added latency per request and per sample;
2. sustained requests/s of one worker (closed loop, ``--clients`` concurrent clients) and the server's
   CPU time per sample drawn (``/proc/<pid>/stat`` utime+stime of the server process over the run,
   divided by the samples its /metrics counted);
3. overload: 10x the configured concurrency sent at once; every request must end as 200 or 429, and the
   upstream must have received exactly the samples of the accepted requests (no request lost or
   duplicated: the multiset of upstream seeds equals the one the accepted requests imply);
4. time from client disconnect to upstream cancellation (the fake stalls; the client hangs up; the fake
   records when it saw the connection close; ``time.monotonic`` is system-wide on Linux).

Scorers: ``none`` with self-consistency (``sc``: pure proxy + loop cost) and the fake's vLLM-style
``/pooling`` reward endpoint with ``bon`` (one scorer HTTP call per sample on top).

    python benchmarks/bench_server.py            # about a minute on 2 cores
    python benchmarks/bench_server.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
MSG = [{"role": "user", "content": "What is 1 + 1? Put the final answer in \\boxed{}."}]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def start_fake() -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_upstream.py"), "--port", "0"],
                         stdout=subprocess.PIPE, text=True, env=env)
    port = int(p.stdout.readline())
    return p, port


def start_serve(fake_port: int, scorer: str, method: str, *, max_conc: int, max_queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = ["serve", "--upstream", f"http://127.0.0.1:{fake_port}/v1", "--model", "fake", "--scorer", scorer,
            "--method", method, "--port", str(port), "--log-level", "warning",
            "--max-concurrent-requests", str(max_conc), "--max-queue", str(max_queue)]
    code = f"import sys; from optscale.cli import main; sys.exit(main({args!r}))"
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    return p, wait_ready(p, port, "optscale serve")


def wait_ready(p: subprocess.Popen, port: int, what: str, timeout: float = 120.0) -> str:
    """Poll ``/health/ready`` of the server process ``p`` on ``port``; its root URL, or kill it and raise."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    p.kill()
    raise RuntimeError(f"{what} did not start")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def latency(direct: str, proxied: str, n: int, reps: int, method: str) -> dict:
    import httpx

    d, p = [], []
    async with httpx.AsyncClient(timeout=30) as c:
        body = {"model": "fake", "messages": MSG, "max_tokens": 16}
        for i in range(5):  # warm both paths
            await c.post(f"{direct}/v1/chat/completions", json={**body, "n": n, "seed": i})
            await c.post(f"{proxied}/v1/chat/completions", json={**body, "seed": i,
                                                                  "optscale": {"method": method, "n_max": n}})
        for i in range(reps):  # interleaved, same repetitions
            t0 = time.perf_counter()
            r = await c.post(f"{direct}/v1/chat/completions", json={**body, "n": n, "seed": i})
            d.append(time.perf_counter() - t0)
            assert r.status_code == 200 and len(r.json()["choices"]) == n
            t0 = time.perf_counter()
            r = await c.post(f"{proxied}/v1/chat/completions",
                             json={**body, "seed": i, "optscale": {"method": method, "n_max": n}})
            p.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json()["optscale"]["samples"] == n, r.text
    ms = 1000.0
    # what the same process spends to make one bare httpx request (the cost floor of any Python proxy hop)
    async with httpx.AsyncClient(timeout=30) as c:
        t0 = time.process_time()
        for i in range(reps):
            await c.post(f"{direct}/v1/chat/completions", json={**body, "n": n, "seed": i})
        bare = (time.process_time() - t0) / reps
    return {"httpx_client_cpu_ms_per_request": bare * ms, "direct_p50_ms": pct(d, .5) * ms, "direct_p99_ms": pct(d, .99) * ms,
            "proxy_p50_ms": pct(p, .5) * ms, "proxy_p99_ms": pct(p, .99) * ms,
            "added_p50_ms": (pct(p, .5) - pct(d, .5)) * ms, "added_p99_ms": (pct(p, .99) - pct(d, .99)) * ms,
            "added_p50_ms_per_sample": (pct(p, .5) - pct(d, .5)) * ms / n}


async def throughput(proxied: str, pid: int, n: int, clients: int, seconds: float, method: str) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients * 2)) as c:
        m0 = (await c.get(f"{proxied}/metrics")).text
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        done = 0
        errors = 0

        async def worker(w: int) -> None:
            nonlocal done, errors
            i = 0
            while time.perf_counter() - t0 < seconds:
                r = await c.post(f"{proxied}/v1/chat/completions", json={
                    "model": "fake", "messages": MSG, "max_tokens": 16, "seed": w * 100000 + i,
                    "optscale": {"method": method, "n_max": n}})
                i += 1
                if r.status_code == 200:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
        m1 = (await c.get(f"{proxied}/metrics")).text
    samples = metric(m1, "optscale_samples_drawn_total") - metric(m0, "optscale_samples_drawn_total")
    return {"req_per_s": done / wall, "samples_per_s": samples / wall, "errors": errors,
            "server_cpu_ms_per_sample": 1000 * cpu / max(samples, 1), "server_cpu_ms_per_request": 1000 * cpu / max(done, 1),
            "server_cpu_share": cpu / wall}


async def overload(proxied: str, fake_port: int, concurrency: int, n: int, method: str) -> dict:
    import httpx

    from optscale.online.loop import sample_seed

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=None)) as c:
        await c.post(f"http://127.0.0.1:{fake_port}/control", json={"reset": True, "delay": 0.05})
        total = 10 * concurrency
        rs = await asyncio.gather(*(c.post(f"{proxied}/v1/chat/completions", json={
            "model": "fake", "messages": MSG, "max_tokens": 16, "seed": 10_000 + i,
            "optscale": {"method": method, "n_max": n}}) for i in range(total)), return_exceptions=True)
        stats = (await c.get(f"http://127.0.0.1:{fake_port}/stats")).json()
        await c.post(f"http://127.0.0.1:{fake_port}/control", json={"delay": 0.0})
    codes = [getattr(r, "status_code", type(r).__name__) for r in rs]
    ok = [10_000 + i for i, r in enumerate(rs) if getattr(r, "status_code", None) == 200]
    want = sorted(sample_seed(s, "", 0) for s in ok)
    got = sorted(q["body"]["seed"] for q in stats["requests"])
    samples_up = sum(int(q["body"].get("n") or 1) for q in stats["requests"])
    return {"sent": total, "ok_200": len(ok), "rejected_429": codes.count(429),
            "other": [c for c in codes if c not in (200, 429)],
            "upstream_requests": len(stats["requests"]), "upstream_samples": samples_up,
            "expected_samples": n * len(ok), "lost_or_duplicated": got != want}


async def disconnect(proxied: str, fake_port: int, reps: int, stream: bool) -> dict:
    import httpx

    lags = []
    async with httpx.AsyncClient(timeout=30) as ctl:
        await ctl.post(f"http://127.0.0.1:{fake_port}/control", json={"reset": True, "stall": True})
        for i in range(reps):
            before = len((await ctl.get(f"http://127.0.0.1:{fake_port}/stats")).json()["disconnects"])
            body = {"model": "fake", "messages": MSG, "seed": i, "stream": stream,
                    "optscale": {"method": "sc", "n_max": 2}}
            async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as c:
                try:
                    await c.post(f"{proxied}/v1/chat/completions", json=body)
                except httpx.ReadTimeout:
                    pass
            t_close = time.monotonic()
            for _ in range(200):
                d = (await ctl.get(f"http://127.0.0.1:{fake_port}/stats")).json()["disconnects"]
                if len(d) > before:
                    lags.append(d[-1]["t"] - t_close)
                    break
                await asyncio.sleep(0.01)
            else:
                lags.append(float("inf"))
        await ctl.post(f"http://127.0.0.1:{fake_port}/control", json={"stall": False})
    return {"p50_ms": 1000 * pct(lags, .5), "max_ms": 1000 * max(lags), "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4, help="samples per request (default 4)")
    ap.add_argument("--reps", type=int, default=200, help="latency repetitions per side (default 200)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients for throughput (default 16)")
    ap.add_argument("--seconds", type=float, default=8.0, help="throughput run length (default 8)")
    ap.add_argument("--concurrency", type=int, default=8, help="server max_concurrent_requests (default 8)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.seconds = 30, 2.0
    fake, fake_port = start_fake()
    out: dict = {"n": args.n, "reps": args.reps}
    try:
        for label, scorer, method in [
            ("scorer=none, method=sc", "none", "sc"),
            ("scorer=reward-endpoint, one /pooling call per wave (input_format=text), method=bon",
             f"reward-endpoint:http://127.0.0.1:{fake_port}/pooling,max_retries=0,input_format=text", "bon"),
            ("scorer=reward-endpoint, one /pooling call per sample (messages), method=bon",
             f"reward-endpoint:http://127.0.0.1:{fake_port}/pooling,max_retries=0", "bon"),
        ]:
            serve, url = start_serve(fake_port, scorer, method, max_conc=args.concurrency,
                                     max_queue=args.concurrency)
            try:
                res = {"latency": asyncio.run(latency(f"http://127.0.0.1:{fake_port}", url, args.n, args.reps, method))}
                res["throughput"] = asyncio.run(throughput(url, serve.pid, args.n, args.clients, args.seconds, method))
                res["overload_10x"] = asyncio.run(overload(url, fake_port, args.concurrency, args.n, method))
                if scorer == "none":
                    res["disconnect"] = asyncio.run(disconnect(url, fake_port, 10 if args.quick else 30, False))
                    res["disconnect_stream"] = asyncio.run(disconnect(url, fake_port, 10 if args.quick else 30, True))
                out[label] = res
            finally:
                serve.terminate()
                serve.wait(10)
    finally:
        fake.terminate()
        fake.wait(10)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"optscale serve vs direct upstream (fake, n={args.n} samples per request, {args.reps} interleaved reps)")
    for label, res in out.items():
        if not isinstance(res, dict):
            continue
        la, th, ov = res["latency"], res["throughput"], res["overload_10x"]
        print(f"\n[{label}]")
        print(f"  latency p50  direct {la['direct_p50_ms']:.2f} ms  proxied {la['proxy_p50_ms']:.2f} ms  "
              f"ratio {la['proxy_p50_ms'] / la['direct_p50_ms']:.2f}x  added {la['added_p50_ms']:.2f} ms "
              f"({la['added_p50_ms_per_sample']:.2f} ms/sample)")
        print(f"  latency p99  direct {la['direct_p99_ms']:.2f} ms  proxied {la['proxy_p99_ms']:.2f} ms  "
              f"added {la['added_p99_ms']:.2f} ms")
        print(f"  (reference: a bare httpx client spends {la['httpx_client_cpu_ms_per_request']:.2f} ms CPU per request "
              "on this machine)")
        print(f"  one worker: {th['req_per_s']:.0f} req/s, {th['samples_per_s']:.0f} samples/s, server CPU "
              f"{th['server_cpu_ms_per_sample']:.3f} ms/sample ({th['server_cpu_ms_per_request']:.2f} ms/request), "
              f"errors {th['errors']}")
        print(f"  10x overload: sent {ov['sent']}, 200: {ov['ok_200']}, 429: {ov['rejected_429']}, other: "
              f"{ov['other'] or 'none'}; upstream samples {ov['upstream_samples']} (expected {ov['expected_samples']}); "
              f"lost or duplicated: {'YES' if ov['lost_or_duplicated'] else 'no'}")
        for key in ("disconnect", "disconnect_stream"):
            if key in res:
                d = res[key]
                print(f"  client disconnect -> upstream cancel ({'stream' if 'stream' in key else 'non-stream'}): "
                      f"p50 {d['p50_ms']:.1f} ms, max {d['max_ms']:.1f} ms over {d['reps']}")


if __name__ == "__main__":
    main()
