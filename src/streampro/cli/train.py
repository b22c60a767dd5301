"""``streampro train STAGE ...``: run a training stage script with its own (TRL) argument parser.

    streampro train sft --config recipes/sft/tiny_synth_cpu.yaml [--field value ...]
    streampro train activation --config recipes/activation/tiny_synth_cpu.yaml

Everything after the stage name goes unparsed to the stage's ``main(argv)`` (a ``TrlParser``, see
:mod:`streampro.trainer.script`): ``streampro train sft --help`` lists the StreamPro fields,
``--help-all`` also the inherited TRL / transformers ones. Fields keep the dataclasses'
underscores (``--learning_rate``), as in the recipes. A new stage is one entry in ``STAGES``.
"""

from __future__ import annotations

import argparse
import importlib

# stage -> (module with main(argv) -> int, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "sft": ("streampro.trainer.sft", "Supervised fine-tuning with the CB-Stream loss (docs/method.md §4)."),
    "grpo": ("streampro.trainer.grpo", "GRPO over whole streaming trajectories with multi-grained rewards (docs/method.md §5)."),
    "activation": ("streampro.trainer.activation",
                   "StreamBridge's activation model: a per-frame 'respond now?' score trained with BCE (docs/activation.md)."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, help_text) in STAGES.items():
        # '+' as the only prefix char: every '--field' is left for the stage's own TrlParser.
        sub = stages.add_parser(name, help=help_text, description=help_text, add_help=False, prefix_chars="+")
        sub.add_argument("stage_args", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and --field value overrides (--help, --help-all list the fields)")


def run(args) -> int:
    module = importlib.import_module(STAGES[args.stage][0])
    return int(module.main(args.stage_args) or 0)
