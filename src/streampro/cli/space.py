"""``streampro space``: serve the Gradio Space locally, or write a folder to upload as a Hub Space.

    streampro space --model DIR [--host 127.0.0.1] [--port 7860]
    streampro space --export --out DIR    # then: hf upload OWNER/NAME DIR . --repo-type space

Without ``--model`` the app reads $STREAMPRO_MODEL, then falls back to the embedded tiny model.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None,
                        help="StreamPro checkpoint: a directory or a Hub repo id (default: $STREAMPRO_MODEL, "
                             "else the embedded tiny model).")
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
    if args.export:
        from streampro.space.export import export_space

        out = export_space(args.out)
        print(f"Space folder written to {out}; upload it with: hf upload OWNER/NAME {out} . --repo-type space")
        return 0
    from streampro.space.app import launch

    launch(args.model, host=args.host, port=args.port)
    return 0
