"""``streampro data``: build StreamPro datasets (sub-commands convert, build, synth).

Run ``streampro data --help``. Each sub-command lives in its own module, which defines
``add_arguments(parser)`` and ``run(args) -> int``; add a sub-command by adding one line to
``SUBCOMMANDS`` (the same pattern as the top-level ``streampro`` CLI).
"""

from __future__ import annotations

import importlib

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("streampro.dataset_scripts.converters", "Convert a public annotation file to raw JSONL."),
    "build": ("streampro.dataset_scripts.builders", "Build SFT / RL / benchmark files from raw JSONL."),
    "synth": ("streampro.dataset_scripts.synth", "Generate StreamPro-Synth: procedural videos with exact labels."),
    "rubrics": ("streampro.dataset_scripts.rubrics", "Write GRPO trajectory rubrics for RL samples with an LLM endpoint."),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_data_module=module_name)
        importlib.import_module(module_name).add_arguments(p)


def run(args) -> int:
    return int(importlib.import_module(args._data_module).run(args) or 0)
