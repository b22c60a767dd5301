"""Stage two of StreamPro training: GRPO over whole streaming trajectories with multi-grained rewards.

Run (tiny CPU recipe on StreamPro-Synth; make the data first with ``streampro data synth --out data/synth``)::

    streampro train grpo --config recipes/grpo/tiny_synth_cpu.yaml
    # same thing without the console command, any field overridable on the command line:
    python trainer/grpo.py --config recipes/grpo/tiny_synth_cpu.yaml --num_generations 4

Paper setup (GPU; an SFT checkpoint, rubrics written with `streampro data rubrics`, an
OpenAI-compatible judge for the turn and rubric rewards; see docs/grpo.md)::

    accelerate launch --num_processes 8 trainer/grpo.py --config recipes/grpo/qwen2_5_vl_3b.yaml

Fields come from :class:`~streampro.trainer.grpo_config.GRPOScriptArguments` (model and data),
:class:`~streampro.trainer.grpo_config.StreamProGRPOConfig` (rollouts, rewards, optimisation) and
TRL's ``ModelConfig`` (``dtype``, LoRA options). The final model is saved to ``output_dir`` with
its processor and remote code.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def load_rl_samples(
    path: str,
    *,
    limit: int | None = None,
    tasks: list[str] | None = None,
    fps: float = 1.0,
    max_frames: int | None = None,
):
    """RL samples JSONL → a ``datasets.Dataset`` (validated as references; long samples dropped with a log line)."""
    from pathlib import Path

    from datasets import Dataset
    from streampro.dataset_scripts.rubrics import validate_rubric
    from streampro.metrics import FormatError, validate_reference
    from streampro.modeling_streampro.processing_streampro import num_turns

    from streampro.jsonl import iter_jsonl

    if not Path(path).is_file():
        raise FileNotFoundError(
            f"RL samples file {path} does not exist (make one with `streampro data build rl`)"
        )
    rows, too_long = [], 0
    for lineno, row in iter_jsonl(path):
        try:
            validate_reference(row)
        except FormatError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        if "rubric" not in row:
            raise ValueError(f"{path}:{lineno}: RL sample has no 'rubric' field (null when none is written)")
        if row.get("fps") is not None and float(row["fps"]) != fps:
            raise ValueError(
                f"{path}:{lineno}: sample built at {row['fps']:g} fps but the config streams at fps={fps:g}; "
                "rebuild the RL samples or set --fps to match"
            )
        if row["rubric"] is not None:
            validate_rubric(row["rubric"], f"{path}:{lineno}: rubric")
        if tasks and row["task"] not in tasks:
            continue
        if max_frames is not None and num_turns(float(row["duration"]), fps) > max_frames:
            too_long += 1
            continue
        rows.append({**row, "system": row.get("system")})
    if too_long:
        logger.warning(
            "dropped %d RL samples longer than max_frames_per_rollout=%s frames", too_long, max_frames
        )
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise ValueError(
            f"RL samples file {path} holds no usable sample (tasks={tasks}, max_frames={max_frames})"
        )
    return Dataset.from_list(rows)


def build_trainer(script_args, training_args, model_args):
    """Model, data and :class:`StreamProGRPOTrainer` from parsed arguments."""
    from streampro.trainer.grpo_trainer import StreamProGRPOTrainer
    from streampro.trainer.sft import load_model, lora_config

    model, processor = load_model(script_args.model, script_args.tiny_seed, model_args.dtype)
    train = load_rl_samples(
        script_args.train_file,
        limit=script_args.max_train_samples,
        tasks=script_args.tasks,
        fps=training_args.fps,
        max_frames=training_args.max_frames_per_rollout,
    )
    return StreamProGRPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        processing_class=processor,
        peft_config=lora_config(model_args, processor) if model_args.use_peft else None,
    )


def main(argv: list[str] | None = None) -> int:
    """``streampro train grpo --config RECIPE.yaml [--field value ...]`` (``--help``: the StreamPro fields)."""
    from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig
    from streampro.trainer.script import run_stage
    from trl import ModelConfig

    return run_stage("grpo", (GRPOScriptArguments, StreamProGRPOConfig, ModelConfig), build_trainer, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
