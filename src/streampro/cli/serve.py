"""``streampro serve MODEL``: live streaming sessions over HTTP and WebSocket (docs/serve.md).

Example::

    streampro serve runs/sft-3b --port 8000
    streampro serve runs/sft-3b --engine vllm --vllm-url http://127.0.0.1:8001

The folder and the options are checked before the model loads. The server binds 127.0.0.1
unless ``--host`` says otherwise; the app and its limits are :mod:`streampro.serving.live`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
from pathlib import Path

from streampro.errors import UserError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from streampro.serving.live import Limits

    defaults = Limits()
    parser.add_argument("model", type=Path, metavar="MODEL", help="StreamPro checkpoint directory")
    parser.add_argument("--engine", choices=["pytorch", "vllm"], default="pytorch",
                        help="pytorch: the model in this process, one session step at a time (default); "
                             "vllm: sessions on a running vLLM server (--vllm-url), stepped concurrently")
    parser.add_argument("--vllm-url", default=None, help="base URL of the vLLM server for --engine vllm")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--device", default=None, help="--engine pytorch: cpu / cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="--engine pytorch: weights dtype (default auto: the checkpoint's own)")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions,
                        help=f"sessions open at once; more are refused with 503 (default {defaults.max_sessions})")
    parser.add_argument("--max-frame-bytes", type=int, default=defaults.max_frame_bytes,
                        help=f"largest encoded frame accepted; larger get 413 (default {defaults.max_frame_bytes:,})")
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout,
                        help=f"seconds without a request after which a session is closed "
                             f"(default {defaults.idle_timeout:g})")


def check_options(args: argparse.Namespace) -> None:
    """Raise :class:`UserError` for a bad flag or a missing model folder, before anything loads."""
    for flag, value in (("--max-sessions", args.max_sessions), ("--max-frame-bytes", args.max_frame_bytes)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be >= 1", f"pass a positive {flag} or leave it out")
    if not (math.isfinite(args.idle_timeout) and args.idle_timeout > 0):
        raise UserError(f"--idle-timeout {args.idle_timeout:g}: must be a number of seconds > 0",
                        "pass e.g. --idle-timeout 300")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: not a TCP port", "pass a port in 1..65535, e.g. --port 8000")
    if args.engine == "vllm" and not args.vllm_url:
        raise UserError("--engine vllm needs the URL of a vLLM server",
                        "pass --vllm-url URL, or start one with `streampro vllm-server`")
    if args.engine != "vllm" and args.vllm_url:
        raise UserError("--vllm-url is only used by --engine vllm", "add --engine vllm or drop --vllm-url")
    if not args.model.is_dir():
        raise UserError(f"{args.model}: no such model folder", "pass a StreamPro checkpoint directory")
    if not (args.model / "config.json").is_file():
        raise UserError(f"{args.model}: not a model folder (no config.json)", "pass a StreamPro checkpoint directory")
    for module in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"`streampro serve` needs {module}, which is not installed",
                            "pip install 'streampro[space]' (or pip install fastapi uvicorn)")


def build_engine(args: argparse.Namespace):
    from streampro.serving.live import pytorch_engine, vllm_engine

    if args.engine == "vllm":
        try:
            return vllm_engine(args.vllm_url, args.model)
        except ImportError as e:
            raise UserError(f"the vLLM engine could not be loaded ({e})", "use --engine pytorch") from e
    from streampro.loading import load_model_and_processor

    try:
        model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    except FileNotFoundError as e:
        raise UserError.from_exception(e, "pass a StreamPro checkpoint directory") from e
    return pytorch_engine(model, processor)


def run(args: argparse.Namespace) -> int:
    check_options(args)
    import uvicorn

    from streampro.serving.live import Limits, create_app

    limits = Limits(max_sessions=args.max_sessions, max_frame_bytes=args.max_frame_bytes,
                    idle_timeout=args.idle_timeout)
    app = create_app(build_engine(args), limits)
    if importlib.util.find_spec("websockets") is None and importlib.util.find_spec("wsproto") is None:
        logger.warning("no WebSocket library is installed: /v1/sessions/{id}/ws is refused, HTTP works; "
                       "pip install websockets to enable it")
    logger.info("serving %s (%s engine) on http://%s:%d", args.model, args.engine, args.host, args.port)
    # log_config=None: uvicorn logs through the command's own logging setup; no access log, so a
    # frame a second does not write a line a second (sessions log their open and close).
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False,
                ws_max_size=args.max_frame_bytes + 65536)
    return 0
