"""A loopback TCP server that hands each connection to ``_answer``, for replies no HTTP server sends.

Tests of the judge client use it to trickle bytes, send garbage or echo headers. Use as a context
manager; ``base_url`` ends in ``/v1`` like an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import socket
import threading


class RawSocketServer:
    """Subclasses define ``_answer(conn)``; ``stop`` is set when the server closes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by __exit__
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sock.close()
