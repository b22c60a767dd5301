"""``streampro vllm-server``: a vLLM server for a StreamPro checkpoint, for `evaluate` and `serve` to share.

    streampro vllm-server ckpt/ --port 8000                       # then: --engine vllm --vllm-url http://127.0.0.1:8000
    streampro vllm-server ckpt/ --vllm-arg=--tensor-parallel-size=2

vLLM runs in its own environment (``bash scripts/setup_vllm.sh``; docs/vllm.md) on the served view of
the checkpoint, with prefix caching, the tokens endpoint and renormalised decision log-probs. The
server runs until Ctrl-C (or SIGTERM), then stops with its workers.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", type=Path, help="StreamPro checkpoint directory (default: the embedded model).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000).")
    parser.add_argument("--max-frames", type=int, default=256,
                        help="Most frames in one request: the kept window plus pinned turns (default 256).")
    parser.add_argument("--vllm-python", metavar="PATH",
                        help="The python of vLLM's environment (default $STREAMPRO_VLLM_PYTHON, else .venv-vllm/bin/python).")
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                        help="One more argument for vLLM, e.g. --vllm-arg=--enforce-eager (repeat it).")


def run(args) -> int:
    import signal
    import threading

    from streampro.errors import UserError
    from streampro.loading import default_model_dir
    from streampro.serving.vllm_server import VLLMServer
    from streampro.serving.vllm_session import VLLMEngineError

    model = args.model if args.model is not None else default_model_dir()
    if not (Path(model) / "config.json").is_file():
        raise UserError(f"{model}: not a checkpoint directory (no config.json)", "pass a StreamPro checkpoint directory")
    if args.max_frames < 1:
        raise UserError(f"--max-frames {args.max_frames}: must be >= 1", "pass at least --window-turns + 1")
    server = VLLMServer(model, python=args.vllm_python, host=args.host, port=args.port, max_frames=args.max_frames,
                        extra_args=args.vllm_arg, show_output=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = server.start()
    except VLLMEngineError as e:
        first, *rest = str(e).splitlines()
        raise UserError(first, "read the vLLM log above, fix the checkpoint or the --vllm-arg options and start "
                               "again", details=rest) from e
    print(f"vLLM serves {model} on {url}; use: --engine vllm --vllm-url {url}   (Ctrl-C stops it)", flush=True)
    try:
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise UserError(f"the vLLM server on {url} exited", "read its log above and start it again")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
