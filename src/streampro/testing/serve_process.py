"""``streampro serve`` as a subprocess on a free loopback port, for tests that need the real server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_serve(model_dir: str | Path, log: Path, *args: str, timeout: float = 120.0) -> Iterator[str]:
    """Start ``streampro serve MODEL_DIR --host 127.0.0.1`` (plus ``args``), wait for ``/health``, yield its URL.

    The server's output goes to ``log``; it is stopped by its pid on exit (terminate, then kill), and a
    server that dies or does not answer within ``timeout`` seconds fails with its log.
    """
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streampro.cli", "serve", str(model_dir), "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu", *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streampro serve exited with {proc.returncode}:\n{Path(log).read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no /health within {timeout:g} s:\n{Path(log).read_text()}")
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
