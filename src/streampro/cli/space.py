"""``streampro space``: serve the Gradio Space locally, or write a folder to upload as a Hub Space.

    streampro space --model DIR [--host 127.0.0.1] [--port 7860]
    streampro space --server http://127.0.0.1:8000    # stream through a running `streampro serve`
    streampro space --export --out DIR    # then: hf upload OWNER/NAME DIR . --repo-type space

Without ``--model`` or ``--server`` the app reads $STREAMPRO_SERVER_URL, then $STREAMPRO_MODEL, then
falls back to the embedded tiny model (docs/space.md).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="StreamPro checkpoint: a directory or a Hub repo id (default: $STREAMPRO_MODEL, "
                             "else the embedded tiny model).")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="Stream through a running `streampro serve` at URL instead of loading a model in "
                             "this process (default: $STREAMPRO_SERVER_URL; docs/serve.md).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    parser.add_argument("--export", action="store_true",
                        help="Do not serve: write app.py, README.md, requirements.txt and the streampro "
                             "packages into --out, ready to upload as a Space.")
    parser.add_argument("--out", metavar="DIR", default=None, help="Folder that --export writes.")


def run(args) -> int:
    from streampro.errors import UserError

    if args.export != bool(args.out):
        raise UserError("--export and --out go together", "pass both to write a Space folder, or neither to serve")
    server = args.server
    if server is not None and args.model is not None:
        raise UserError("--model and --server exclude each other",
                        "pass --model to load a checkpoint here, or --server to stream through `streampro serve`")
    if server is not None and args.export:
        raise UserError("--server does not go into an exported Space",
                        "set the Space variable STREAMPRO_SERVER_URL to the server's address instead")
    if args.export:
        from streampro.space.export import export_space

        out = export_space(args.out)
        print(f"Space folder written to {out}; upload it with: hf upload OWNER/NAME {out} . --repo-type space")
        return 0
    from streampro.space.app import launch

    if server is None:
        launch(args.model, host=args.host, port=args.port)
        return 0
    from streampro.space.backend import check_server_url

    try:
        server = check_server_url(server)
    except ValueError as exc:
        raise UserError(f"--server {server}: {str(exc).split('; ')[0]}", "give it as http://HOST:PORT") from None
    launch(None, host=args.host, port=args.port, server_url=server)
    return 0
