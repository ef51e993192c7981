"""LabelStudioClient under transient faults: a loopback HTTP server answering 503s, or too slowly."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightning_al.label_studio import LabelStudioClient, LabelStudioError

TOKEN = "c" * 40


class Flaky(BaseHTTPRequestHandler):
    """Answers ``failures`` 503s, then 200 with ``{"ok": true}``; sleeps ``delay`` seconds first."""

    failures, delay, seen = 0, 0.0, []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        time.sleep(self.delay)
        if len(self.seen) <= self.failures:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up waiting
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    servers = []

    def start(failures: int = 0, delay: float = 0.0) -> tuple[str, type]:
        handler = type("Handler", (Flaky,), {"failures": failures, "delay": delay, "seen": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, handler))
        return f"http://127.0.0.1:{server.server_address[1]}", handler

    yield start
    for server, _ in servers:
        server.shutdown()
        server.server_close()


def test_transient_503s_are_retried_with_backoff(serve):
    url, handler = serve(failures=2)
    client = LabelStudioClient(url, TOKEN, retries=3, backoff=0.01)
    assert client.request("GET", "/api/projects/") == {"ok": True}
    assert handler.seen == [f"Token {TOKEN}"] * 3  # two 503s, then the answer


def test_a_server_that_keeps_failing_is_named_after_the_retries(serve):
    url, handler = serve(failures=100)
    client = LabelStudioClient(url, TOKEN, retries=2, backoff=0.01)
    with pytest.raises(LabelStudioError, match=rf"Label Studio at {url} answered 503 to GET /api/projects/") as error:
        client.request("GET", "/api/projects/")
    assert TOKEN not in str(error.value) and TOKEN not in repr(client)
    assert len(handler.seen) == 3  # the first try and two retries, then no more


def test_a_slow_server_times_out_with_a_clear_error(serve):
    url, _ = serve(delay=1.0)
    client = LabelStudioClient(url, TOKEN, timeout=0.2, retries=1, backoff=0.01)
    started = time.perf_counter()
    with pytest.raises(LabelStudioError, match=rf"Label Studio at {url} did not answer GET /api/tasks/ within 0.2 s"):
        client.request("GET", "/api/tasks/")
    assert time.perf_counter() - started < 5


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="`url`"):
        LabelStudioClient("localhost:8080", TOKEN)
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        LabelStudioClient("http://127.0.0.1:8080", " ")
