"""The ``streampro`` console command: one entry point for the project's main jobs.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``streampro
--help`` stays fast and heavy libraries (torch, gradio) load only when needed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from streampro import __version__

# name -> (module, one-line help). Add a line here when a command lands.
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": ("streampro.cli.evaluate", "Stream a model over a benchmark (resumable, sharded) and report StreamPro-F1."),
    "train": ("streampro.cli.train", "Train: `streampro train sft|grpo --config RECIPE.yaml` (CB-Stream SFT, GRPO)."),
    "demo": ("streampro.cli.demo", "Stream a StreamPro-Synth test clip with the embedded model (offline, seconds)."),
    "stream": ("streampro.cli.stream", "Stream a video through a StreamPro model; print responses as they happen."),
    "convert-backbone": ("streampro.cli.convert_backbone", "Turn a base Qwen2.5-VL / Qwen3-VL checkpoint into a StreamPro one."),
    "score": ("streampro.cli.score", "StreamPro-F1 of a predictions file against benchmark references."),
    "data": (
        "streampro.cli.data",
        "Datasets: convert annotations, build SFT/RL/bench files, make StreamPro-Synth.",
    ),
    "reproduce": ("streampro.reproduce", "Reproduce the paper's training story on StreamPro-Synth (tiny CPU model, controls)."),
    "space": ("streampro.cli.space", "Serve the Gradio Space (upload / webcam streaming, scoring) locally."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streampro",
        description="Proactive streaming video LLMs: stream, score, build data, train and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"streampro {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at DEBUG level.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        # Sub-command arguments are declared by the module itself; importing it here keeps
        # `streampro CMD --help` complete. Modules keep heavy imports inside run().
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
