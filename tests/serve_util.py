"""Run an ``optscale serve`` app under uvicorn in a background thread on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app: Any, *, startup_timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1; yields the API root (``http://127.0.0.1:PORT/v1``)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=3, lifespan="on"))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as e:  # pragma: no cover - surfaced below
            errors.append(e)

    thread = threading.Thread(target=run, name="optscale-serve-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"optscale serve did not start: {errors[0] if errors else 'thread exited'}")
        if time.monotonic() > deadline:
            raise RuntimeError("optscale serve did not start in time")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(15)
