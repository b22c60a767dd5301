"""The ``streampro`` console command: one entry point for the project's main jobs.

Each command lives in ``streampro/cli/<command>.py`` (``convert-backbone`` in
``convert_backbone.py``), which defines ``add_arguments(parser)`` and ``run(args) -> int`` and
holds only argument parsing and glue; the work is done by the library. Modules keep heavy imports
inside ``run()``, so ``streampro --help`` stays fast.

User errors: a command raises :class:`streampro.errors.UserError`; :func:`main` prints
``streampro <command>: error: <what> — <fix>`` to stderr and returns 2, without a traceback
(``streampro --debug <command> ...`` re-raises it to show one).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from streampro import __version__
from streampro.errors import UserError

# name -> (module, one-line help). Add a line here when a command lands.
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": ("streampro.cli.evaluate", "Stream a model over a benchmark (resumable, sharded) and report StreamPro-F1."),
    "train": ("streampro.cli.train", "Train: `streampro train sft|grpo|activation --config RECIPE.yaml` (CB-Stream SFT, GRPO, activation model)."),
    "demo": ("streampro.cli.demo", "Stream a StreamPro-Synth test clip with the embedded model (offline, seconds)."),
    "stream": ("streampro.cli.stream", "Stream a video through a StreamPro model; print responses as they happen."),
    "convert-backbone": ("streampro.cli.convert_backbone", "Turn a base Qwen2.5-VL / Qwen3-VL checkpoint into a StreamPro one."),
    "score": ("streampro.cli.score", "StreamPro-F1 of a predictions file against benchmark references."),
    "data": (
        "streampro.cli.data",
        "Datasets: convert annotations, build SFT/RL/bench files, make StreamPro-Synth, write rubrics.",
    ),
    "reproduce": ("streampro.cli.reproduce", "Reproduce the paper's training story on StreamPro-Synth (tiny CPU model, controls)."),
    "space": ("streampro.cli.space", "Serve the Gradio Space (upload / webcam streaming, scoring) locally."),
    "vllm-server": ("streampro.cli.vllm_server", "Start a vLLM server for a StreamPro checkpoint (its own environment)."),
    "serve": ("streampro.cli.serve", "Serve live streaming sessions over HTTP and WebSocket (PyTorch or vLLM engine)."),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the one error style: a bad option is a user error like any other."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} — run `{self.prog} --help` for the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="streampro",
        description="Proactive streaming video LLMs: stream, score, build data, train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"streampro {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at DEBUG level.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of a user error.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        # _command names the command in error lines; a command with sub-commands overrides it.
        sub.set_defaults(_module=module_name, _command=name)
        # Sub-command arguments are declared by the module itself; importing it here keeps
        # `streampro CMD --help` complete. Modules keep heavy imports inside run().
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def report_user_error(command: str, error: UserError) -> int:
    """Print ``error`` in the one error style and return the exit status 2."""
    print(f"streampro {command}: error: {error.what} — {error.fix}", file=sys.stderr)
    for line in error.details:
        print(f"  {line}", file=sys.stderr)
    return 2


def run_command(command: str, run, args: argparse.Namespace, debug: bool = False) -> int:
    """``run(args)``; a :class:`UserError` becomes one error line and exit 2 (re-raised with ``debug``)."""
    try:
        return int(run(args) or 0)
    except UserError as e:
        if debug:
            raise
        return report_user_error(command, e)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    return run_command(args._command, module.run, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
