"""A fast loopback fake of an OpenAI-compatible upstream (and of a vLLM-style reward endpoint), for the
server's fault tests and benchmarks/bench_server.py. Stdlib only (asyncio streams, HTTP/1.1 keep-alive).

Runs in a daemon thread (``FakeUpstream()`` as a context manager) or as a process
(``python tests/fake_upstream.py --port P``). Behaviour is set with ``configure(**mode)`` or
``POST /control`` (JSON), and what happened is read with ``stats()`` or ``GET /stats``:

* ``requests``: every completion request (path, body, arrival time);
* ``disconnects``: completion requests whose client closed the connection before the answer was sent,
  with the time (``time.monotonic()``, system-wide on Linux) the fake noticed it;
* ``completed``: answers sent.

Modes: ``n`` = ``"honour"`` (vLLM: n choices, prompt counted once, completion tokens summed) |
``"ignore"`` (llama-cpp-python: one choice) | ``"reject"`` (llama.cpp's server: HTTP 400 for n != 1);
``delay`` seconds before answering; ``stall`` (never answer, until the client leaves); ``status`` (answer
every completion with that HTTP error); ``fail_after`` (after that many good answers, answer 500);
``judge`` (a chat request with ``max_tokens: 1`` and ``logprobs`` gets ``Yes``/``No`` as its first token's
alternatives, for an LLM-judge scorer); ``score`` for /pooling: a number, ``"nan"``, ``"seed"`` (default: derived from the sample text) or an
HTTP status int via ``score_status``.

Each sample is deterministic in its seed: the answer ``\\boxed{seed % 3}``, 8 tokens with log-probabilities
derived from the seed, usage ``prompt_tokens = 5 + len(last message) // 8`` and 8 completion tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from typing import Any

TOKENS = 8


def _sample(seed: int, i: int) -> tuple[str, list[float]]:
    s = (seed if seed is not None else 12345) + i
    text = f"We compute step by step. The answer is \\boxed{{{s % 3}}}."
    base = -0.05 - 0.9 * ((s * 2654435761) % 1000) / 1000.0
    return text, [base - 0.01 * t for t in range(TOKENS)]


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **mode: Any) -> None:
        self.host, self.port = host, port
        self.mode: dict[str, Any] = {"n": "honour", "delay": 0.0, "stall": False, "status": None,
                                     "fail_after": None, "score": "seed", "score_status": None,
                                     "score_delay": 0.0, "judge": False}
        self.mode.update(mode)
        self.requests: list[dict] = []
        self.disconnects: list[dict] = []
        self.completed = 0
        self.score_requests = 0
        self.open_requests = 0
        self._good = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ control
    def configure(self, **mode: Any) -> None:
        self.mode.update(mode)

    def reset(self) -> None:
        self.requests.clear()
        self.disconnects.clear()
        self.completed = 0
        self.score_requests = 0
        self._good = 0

    def stats(self) -> dict:
        return {"requests": list(self.requests), "disconnects": list(self.disconnects),
                "completed": self.completed, "score_requests": self.score_requests,
                "open_requests": self.open_requests}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------------ running
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> FakeUpstream:
        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start())
                self._ready.set()
                loop.run_forever()
            finally:  # close the loop and its sockets here, not in a later test's garbage collection
                pending = asyncio.all_tasks(loop)
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                if self._server is not None:
                    self._server.close()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def close(self) -> None:
        """Stop listening and drop every connection (like a killed upstream)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                for t in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                    t.cancel()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(length) if length else b""
                status, body = await self._route(method, path, raw, reader)
                if status is None:  # client gone
                    return
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
                    "connection: keep-alive\r\n\r\n".encode() + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _wait_or_gone(self, reader: asyncio.StreamReader, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: forever, bounded at 120 s); True if the client closed meanwhile."""
        try:
            got = await asyncio.wait_for(reader.read(1), timeout=120.0 if seconds is None else seconds)
        except TimeoutError:
            return False
        return got == b""

    async def _route(self, method: str, path: str, raw: bytes, reader: asyncio.StreamReader):
        path = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "fake", "object": "model"},
                                                    {"id": "fake-2", "object": "model"}]}
        if method == "GET" and path == "/stats":
            return 200, self.stats()
        if method == "POST" and path == "/control":
            body = json.loads(raw or b"{}")
            if body.pop("reset", False):
                self.reset()
            self.configure(**body)
            return 200, {"ok": True}
        if method == "POST" and path.endswith("/pooling"):
            return await self._score(json.loads(raw or b"{}"), reader)
        if method == "POST" and path.endswith(("/chat/completions", "/completions")):
            body = json.loads(raw or b"{}")
            self.requests.append({"path": path, "body": body, "t": time.monotonic()})
            self.open_requests += 1
            try:
                return await self._complete(path, body, reader)
            finally:
                self.open_requests -= 1
        return 404, {"error": {"message": f"no route {method} {path}"}}

    async def _complete(self, path: str, body: dict, reader: asyncio.StreamReader):
        mode = self.mode
        if mode["stall"] or mode["delay"]:
            if await self._wait_or_gone(reader, None if mode["stall"] else mode["delay"]):
                self.disconnects.append({"t": time.monotonic(), "path": path})
                return None, None
        if mode["status"]:
            return int(mode["status"]), {"error": {"message": f"fake upstream error {mode['status']}"}}
        if mode["fail_after"] is not None and self._good >= int(mode["fail_after"]):
            return 500, {"error": {"message": "fake upstream failure after some samples"}}
        n = int(body.get("n") or 1)
        if n != 1 and mode["n"] == "reject":
            return 400, {"error": {"message": "n != 1 is not supported", "type": "invalid_request_error"}}
        count = n if mode["n"] == "honour" else 1
        seed = body.get("seed")
        chat = path.endswith("/chat/completions")
        if chat:
            msgs = body.get("messages") or [{}]
            prompt_len = len(str(msgs[-1].get("content") or ""))
        else:
            prompt_len = len(str(body.get("prompt") or ""))
        choices = []
        for i in range(count):
            text, lps = _sample(seed, i)
            if chat:
                ch: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}
                if body.get("tools"):
                    ch["message"]["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": {
                        "name": body["tools"][0]["function"]["name"], "arguments": "{\"x\": 1}"}}]
                if body.get("logprobs"):
                    ch["logprobs"] = {"content": [
                        {"token": f"t{t}", "logprob": lp, "top_logprobs": [{"token": f"t{t}", "logprob": lp}]}
                        for t, lp in enumerate(lps)]}
                    if mode.get("judge") and body.get("max_tokens") == 1:  # a yes/no judge's first token
                        first = ch["logprobs"]["content"][0]
                        first["top_logprobs"] = [{"token": "Yes", "logprob": lps[0]},
                                                 {"token": "No", "logprob": math.log1p(-math.exp(lps[0]))}]
            else:
                ch = {"index": i, "text": text, "finish_reason": "stop"}
                if body.get("logprobs") is not None:
                    ch["logprobs"] = {"tokens": [f"t{t}" for t in range(TOKENS)], "token_logprobs": lps,
                                      "top_logprobs": [{f"t{t}": lp} for t, lp in enumerate(lps)]}
            choices.append(ch)
        self._good += 1
        self.completed += 1
        usage = {"prompt_tokens": 5 + prompt_len // 8, "completion_tokens": TOKENS * count}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {"id": f"fake-{len(self.requests)}", "object": "chat.completion" if chat else "text_completion",
                     "created": int(time.time()), "model": body.get("model"), "choices": choices, "usage": usage}

    async def _score(self, body: dict, reader: asyncio.StreamReader):
        self.score_requests += 1
        mode = self.mode
        if mode["score_delay"] and await self._wait_or_gone(reader, mode["score_delay"]):
            self.disconnects.append({"t": time.monotonic(), "path": "/pooling"})
            return None, None
        if mode["score_status"]:
            return int(mode["score_status"]), {"error": {"message": "fake scorer down"}}
        if isinstance(body.get("input"), list):  # input_format=text: all completions in one request
            texts = [str(t) for t in body["input"]]
        else:
            texts = [next((m.get("content") or "" for m in reversed(body.get("messages") or [])
                           if m.get("role") == "assistant"), "")]
        s = mode["score"]

        def value(text: str) -> Any:
            if s == "nan":
                return math.nan
            if s == "seed":
                return 0.2 + 0.6 * ((sum(map(ord, text)) * 7919) % 1000) / 1000.0
            return float(s)

        data = [{"index": i, "data": value(t)} for i, t in enumerate(texts)]
        return 200, json.dumps({"data": data}).encode()


def main() -> None:  # pragma: no cover - process mode for benchmarks
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--n", default="honour")
    args = p.parse_args()

    async def run() -> None:
        fake = FakeUpstream(port=args.port, n=args.n)
        await fake.start()
        print(fake.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":  # pragma: no cover
    main()
