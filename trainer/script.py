"""What the two stage scripts (``trainer/sft.py``, ``trainer/grpo.py``) share: parse, train, save.

``streampro train STAGE --config RECIPE.yaml [--field value ...]`` hands its arguments to
:func:`run_stage`. Fields are dataclass fields spelled as declared (``--learning_rate``, with
underscores: TRL's ``TrlParser`` accepts only those) and a recipe's keys are exactly these
fields. ``--help`` lists the project's own options (the stage's script arguments and the fields
its config declares or re-defaults); ``--help-all`` also lists every field inherited from TRL
and transformers (``SFTConfig`` / ``GRPOConfig``, ``TrainingArguments``, ``ModelConfig``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

logger = logging.getLogger(__name__)


def usage(stage: str) -> str:
    return f"streampro train {stage} --config RECIPE.yaml [--field value ...]"


def own_fields(cls) -> list[dataclasses.Field]:
    """The fields ``cls`` declares itself (new or re-defaulted), not those it inherits."""
    declared = vars(cls).get("__annotations__", {})
    return [f for f in dataclasses.fields(cls) if f.name in declared]


def short_help(stage: str, script_args_cls, config_cls) -> str:
    """``--help``: usage, then the StreamPro fields, then where the inherited ones are."""
    parser = argparse.ArgumentParser(
        prog=f"streampro train {stage}", usage=usage(stage), add_help=False,
        description="Fields are spelled with underscores, as in the recipe YAML (TRL's parser accepts only "
                    "those); a command-line field overrides the recipe's value.",
    )
    parser.add_argument("--config", metavar="RECIPE.yaml", help="Recipe: a YAML file of field: value (recipes/).")
    for cls in (script_args_cls, config_cls):
        group = parser.add_argument_group(f"StreamPro options ({cls.__name__})")
        for f in own_fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            group.add_argument(f"--{f.name}", metavar="VALUE", help=f"{f.metadata.get('help', '')} (default: {default})")
    bases = ", ".join(b.__name__ for b in config_cls.__mro__[1:]
                      if dataclasses.is_dataclass(b) and not b.__name__.startswith("_"))
    return (parser.format_help() + f"\nInherited fields ({bases}, and TRL's ModelConfig: dtype, LoRA): "
            f"`streampro train {stage} --help-all` lists them all.\n")


def run_stage(stage: str, dataclass_types: tuple, build_trainer, argv: list[str] | None) -> int:
    """Parse ``argv`` (``--config`` recipe + overrides), train, and save the final model."""
    import sys

    from streampro.trainer.sft import save_final
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(short_help(stage, dataclass_types[0], dataclass_types[1]), end="")
        return 0
    parser = TrlParser(dataclass_types, prog=f"streampro train {stage}", usage=usage(stage))
    if "--help-all" in argv:
        parser.print_help()
        return 0
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_final(trainer, training_args.output_dir)
    logger.info("saved the final model and processor to %s", training_args.output_dir)
    return 0
