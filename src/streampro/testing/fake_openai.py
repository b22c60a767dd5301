"""Test utilities: a loopback OpenAI-compatible chat server for judge, reward and rubric tests.

It is a real HTTP server (stdlib ``ThreadingHTTPServer`` on 127.0.0.1, OpenAI chat-completions
shape), so the project's real HTTP client, retries, timeouts and concurrency limits are exercised;
each test scripts the replies. Used by the tests and by ``benchmarks/score_speed.py``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(content: str) -> dict:
    """A chat-completions response body whose single choice says ``content``."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class FakeOpenAI:
    """A loopback OpenAI-compatible server. ``script(n, body)`` returns ``(status, payload, delay)``
    for the n-th request (0-based); the server records bodies, headers and peak concurrency.

    Use as a context manager; ``base_url`` ends in ``/v1`` like a real endpoint.
    """

    def __init__(self, script):
        self.script = script
        self.bodies, self.headers = [], []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    n = len(fake.bodies)
                    fake.bodies.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, payload, delay = fake.script(n, body)
                    time.sleep(delay)
                finally:
                    # Answered: counted out before the reply is written, since the client may send its
                    # next request as soon as it reads the reply (counting out after it raced that).
                    with fake._lock:
                        fake.in_flight -= 1
                try:
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64  # listen() backlog: the default 5 drops bursts of connections

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        return len(self.bodies)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
