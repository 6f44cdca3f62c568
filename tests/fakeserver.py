"""A tiny scripted OpenAI-compatible HTTP server for fault tests (loopback only, stdlib only).

``FakeServer(script)`` listens on 127.0.0.1 (a free port) in a daemon thread. ``script(i, body)`` gets the
0-based request number and the JSON body and returns an action:

* ``("ok",)`` — a well-formed chat/completions answer with ``min(n, max_choices)`` choices;
* ``("status", code, headers)`` — an error answer with that status and headers;
* ``("stall",)`` — send nothing until the server stops (bounded by ``stall_limit`` seconds);
* ``("hold",)`` — send nothing until the CLIENT closes the connection (counted in ``disconnects``), the
  server stops or ``stall_limit`` passes: shows that a cancelled request really was closed;
* ``("reply", code, obj[, headers])`` — answer ``obj`` (any JSON value, or raw ``bytes``) with that status
  and headers (malformed replies, other APIs such as a reward model's ``/pooling``);
* ``("drop",)`` — close the connection without an answer.

``answer(path, body, i)`` builds the well-formed answer; override it for other contents, and
``dispatch(path, body, i)`` (default: ``script(i, body)``) to script by path. ``usage`` keeps
what each ``ok`` answer reported, so a test can sum it.

The server refuses more than ``max_requests`` requests (answers 418) and shuts itself down after
``lifetime`` seconds, so a broken test cannot hang or loop forever. Use it as a context manager.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = tuple
Script = Callable[[int, dict], Action]


def ok_script(i: int, body: dict) -> Action:
    return ("ok",)


class FakeServer:
    def __init__(
        self,
        script: Script = ok_script,
        *,
        max_choices: int | None = None,
        max_requests: int = 200,
        lifetime: float = 60.0,
        stall_limit: float = 30.0,
    ) -> None:
        self.script = script
        self.max_choices = max_choices
        self.max_requests = max_requests
        self.stall_limit = stall_limit
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.active_stalls = 0
        self.active_holds = 0
        self.disconnects = 0
        self.usage: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    i = len(fake.requests)
                    fake.requests.append({"path": self.path, "body": body})
                if i >= fake.max_requests:
                    self._send(418, {"error": "fake server: request limit reached"})
                    return
                action = fake.dispatch(self.path, body, i)
                kind = action[0]
                if kind == "ok":
                    ans = fake.answer(self.path, body, i)
                    with fake.lock:
                        fake.usage.append(ans.get("usage"))
                    self._send(200, ans)
                elif kind == "reply":
                    self._send(action[1], action[2], action[3] if len(action) > 3 else None)
                elif kind == "hold":
                    with fake.lock:
                        fake.active_holds += 1
                    try:
                        closed = self._wait_for_close(fake.stall_limit)
                    finally:
                        with fake.lock:
                            fake.active_holds -= 1
                            fake.disconnects += int(closed)
                    self.close_connection = True
                elif kind == "status":
                    headers = action[2] if len(action) > 2 else {}
                    self._send(action[1], {"error": {"message": f"fake error {action[1]}"}}, headers)
                elif kind == "stall":
                    with fake.lock:
                        fake.active_stalls += 1
                    try:
                        fake.stopping.wait(fake.stall_limit)
                    finally:
                        with fake.lock:
                            fake.active_stalls -= 1
                    self.close_connection = True
                elif kind == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                else:  # pragma: no cover - test bug
                    raise ValueError(f"unknown action {action!r}")

            def _wait_for_close(self, limit: float) -> bool:
                """True once the client closed the connection (EOF), False on server stop / ``limit``."""
                import select
                import time

                end = time.monotonic() + limit
                while not fake.stopping.is_set() and time.monotonic() < end:
                    ready, _, _ = select.select([self.connection], [], [], 0.05)
                    if ready:
                        try:
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                return True
                        except OSError:
                            return True
                return False

            def _send(self, code: int, obj: Any, headers: dict | None = None) -> None:
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, str(v))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # client went away
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def dispatch(self, path: str, body: dict, i: int) -> Action:
        return self.script(i, body)

    def answer(self, path: str, body: dict, i: int) -> dict:
        n = int(body.get("n", 1))
        if self.max_choices is not None:
            n = min(n, self.max_choices)
        chat = path.endswith("/chat/completions")
        choices = []
        for k in range(n):
            words = [f"s{body.get('seed')}", f"r{i}", f"c{k}"]
            text = " ".join(words)
            lps = [-0.5 - 0.1 * j for j in range(len(words))]
            ch: dict[str, Any] = {"index": k, "finish_reason": "stop"}
            if chat:
                ch["message"] = {"role": "assistant", "content": text}
                if body.get("logprobs"):
                    ch["logprobs"] = {
                        "content": [
                            {"token": w, "logprob": lp, "top_logprobs": [{"token": w, "logprob": lp}]}
                            for w, lp in zip(words, lps, strict=True)
                        ]
                    }
            else:
                ch["text"] = text
                if body.get("logprobs"):
                    ch["logprobs"] = {
                        "tokens": words,
                        "token_logprobs": lps,
                        "top_logprobs": [{w: lp} for w, lp in zip(words, lps, strict=True)],
                    }
            choices.append(ch)
        return {
            "id": f"fake-{i}",
            "object": "chat.completion" if chat else "text_completion",
            "model": body.get("model"),
            "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n},
        }

    def start(self) -> FakeServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
