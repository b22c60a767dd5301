"""Start and stop a vLLM server for a StreamPro checkpoint, in vLLM's own environment.

vLLM pins its own transformers range, so it lives in a second virtual environment
(``bash scripts/setup_vllm.sh`` makes ``.venv-vllm``; on a GPU machine any environment with a vLLM
that has ``/inference/v1/generate``). StreamPro only talks to it over HTTP. :class:`VLLMServer`
writes the served view (:mod:`~streampro.serving.vllm_view`), starts vLLM's OpenAI-compatible
server on it with the options the streaming sessions need, waits until it answers, and stops it by
its process group.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from streampro.errors import UserError
from streampro.serving.vllm_session import VLLMClient, VLLMEngineError
from streampro.serving.vllm_view import make_vllm_view

logger = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "STREAMPRO_VLLM_PYTHON"
DEFAULT_VENV = Path(".venv-vllm")
# What the sessions rely on: the tokens endpoint, prefix caching, and decision log-probs renormalised
# over the two allowed tokens (docs/vllm.md).
REQUIRED_ARGS = ("--enable-scale-out", "--enable-prefix-caching", "--logprobs-mode", "processed_logprobs")


def find_vllm_python(explicit: str | os.PathLike | None = None) -> str:
    """The Python of the vLLM environment: ``explicit``, ``$STREAMPRO_VLLM_PYTHON``, or ``./.venv-vllm``."""
    candidate = explicit or os.environ.get(VLLM_PYTHON_ENV) or DEFAULT_VENV / "bin" / "python"
    path = Path(candidate)
    if not path.is_file():
        raise UserError(f"no vLLM environment at {path}",
                        f"run `bash scripts/setup_vllm.sh` (makes .venv-vllm), or pass --vllm-python PATH / set "
                        f"{VLLM_PYTHON_ENV} to the python of an environment with vLLM")
    return os.path.abspath(path)  # absolute, not resolved: a venv's python is a link that must stay one


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VLLMServer:
    """``with VLLMServer(checkpoint) as url: ...``: a vLLM server on the served view of ``checkpoint``.

    ``max_frames`` bounds the frames in one request (the kept window's turns plus pinned ones);
    ``extra_args`` go to vLLM unchanged (``--enforce-eager``, ``--max-model-len 32768``,
    ``--tensor-parallel-size 2`` ...). The server's output goes to ``log_path`` (default: a file in
    the server's temporary folder, named in errors).
    """

    def __init__(self, checkpoint: str | os.PathLike, *, python: str | os.PathLike | None = None,
                 host: str = "127.0.0.1", port: int | None = None, max_frames: int = 256,
                 extra_args: tuple[str, ...] | list[str] = (), log_path: str | os.PathLike | None = None,
                 startup_timeout: float = 900.0, show_output: bool = False):
        self.checkpoint = Path(checkpoint)
        self.python = find_vllm_python(python)
        self.host, self.port = host, port
        self.max_frames, self.extra_args = max_frames, list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.show_output = show_output  # vLLM's output on this terminal instead of a log file
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self, view: Path) -> list[str]:
        args = [
            self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(view),
            "--served-model-name", self.checkpoint.name, "--host", self.host, "--port", str(self.port),
            *REQUIRED_ARGS, "--limit-mm-per-prompt", json.dumps({"image": self.max_frames}),
        ]
        if not any(a == "--dtype" or a.startswith("--dtype=") for a in self.extra_args):
            # The checkpoint's own dtype (vLLM's CPU build would otherwise run a float32 checkpoint in bfloat16).
            dtype = json.loads((view / "config.json").read_text()).get("dtype") or "auto"
            args += ["--dtype", dtype]
        return args + self.extra_args

    def start(self) -> str:
        """Start the server and wait until ``/health`` answers; return its URL.

        If it does not come up, it is stopped and its log (named in the error) is kept.
        """
        self.workdir = Path(tempfile.mkdtemp(prefix="streampro-vllm-"))
        log_path = self.log_path or self.workdir / "vllm.log"
        client = None
        try:
            view = make_vllm_view(self.checkpoint, self.workdir / "view")
            self.port = self.port or free_port(self.host)
            env = dict(os.environ)
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on a CPU build (ignored on GPUs)
            logger.info("starting vLLM on %s (log: %s)", self.url, "this terminal" if self.show_output else log_path)
            with open(log_path, "ab") as log:
                output = {} if self.show_output else {"stdout": log, "stderr": subprocess.STDOUT}
                # Its own process group: stop() ends the engine core and workers with it.
                self.process = subprocess.Popen(self.command(view), env=env, start_new_session=True,
                                                cwd=self.workdir, **output)
            client = VLLMClient(self.url, timeout=10.0, retries=0)
            deadline = time.monotonic() + self.startup_timeout
            while not client.health():
                if self.process.poll() is not None:
                    raise VLLMEngineError(f"vLLM exited with code {self.process.returncode} while starting; "
                                          f"its log: {log_path}\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise VLLMEngineError(f"vLLM did not answer on {self.url} within {self.startup_timeout:.0f} s; "
                                          f"its log: {log_path}\n{_tail(log_path)}")
                time.sleep(1.0)
        except BaseException:
            self.stop(keep_log=self.process is not None and not self.show_output)
            raise
        finally:
            if client is not None:
                client.close()
        logger.info("vLLM is up on %s", self.url)
        return self.url

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 30 s); remove its folder."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass
        self.process = None
        if self.workdir is not None and not keep_log:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
