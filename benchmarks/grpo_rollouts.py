"""GRPO step time with the G rollouts of a group batched vs one by one (``batch_rollouts``), G = 4.

Runs the tiny recipe (``recipes/grpo/tiny_synth_cpu.yaml``: G = 4, 2 samples x 4 rollouts per step,
temperature 1.0, window 32 turns, 24 answer tokens) through the real trainer loop in this process:
the model is the embedded tiny StreamPro-Synth checkpoint (``--model DIR`` for another), the data a
few StreamPro-Synth clips written to a temporary directory, and the train file holds two of their RL
samples, so every step rolls out the same two samples. A step is a whole optimizer step (rollouts,
rewards, loss, backward, update). After one warm-up step per mode, the modes alternate (B S, S B, ...)
so a busy machine slows both alike; the figure is the median step time of each mode. Both modes give
the same rollouts for one seed (tests/trainer/test_grpo_trainer.py), so the ratio is pure speed.
The last line is one JSON object.

    python benchmarks/grpo_rollouts.py --quick        # 56 px clips, 2 timed steps per mode
    python benchmarks/grpo_rollouts.py                # 112 px clips, 5 timed steps per mode
    python benchmarks/grpo_rollouts.py --device cuda  # on a GPU (benchmarks/gpu_report.py runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "grpo" / "tiny_synth_cpu.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="56 px clips, 2 timed steps per mode")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 5; --quick 2)")
    parser.add_argument("--size", type=int, default=None, help="clip side in px (default 112; --quick 56)")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded tiny model)")
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--device", default="cpu", help="cpu (the recipe's use_cpu) or cuda")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 5)
    size = args.size or (56 if args.quick else 112)

    import torch
    from streampro.dataset_scripts.synth import generate
    from streampro.trainer.grpo import build_trainer
    from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig
    from transformers import TrainerCallback
    from trl import ModelConfig, TrlParser

    from streampro.loading import default_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="grpo_rollouts_"))
    generate(tmp / "synth", n=14, seed=0, size=size, progress=False)
    rows = [json.loads(line) for line in (tmp / "synth" / "rl" / "train.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if r["task"] != "RF"][:2]  # the recipe's RL tasks exclude RF
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    modes = ["batched", "sequential"] + [m for k in range(steps)
                                         for m in (("batched", "sequential") if k % 2 == 0
                                                   else ("sequential", "batched"))]
    argv = ["--config", args.recipe, "--model", str(args.model or default_model_dir()),
            "--train_file", str(tmp / "train.jsonl"), "--frames_root", str(tmp / "synth"),
            "--frame_cache_dir", str(tmp / "cache"), "--output_dir", str(tmp / "out"),
            "--max_steps", str(len(modes)), "--save_strategy", "no", "--logging_steps", "1000",
            "--disable_tqdm", "true", "--use_cpu", str(not args.device.startswith("cuda")).lower()]
    script_args, training_args, model_args = TrlParser(
        (GRPOScriptArguments, StreamProGRPOConfig, ModelConfig)).parse_args_and_config(args=argv)
    trainer = build_trainer(script_args, training_args, model_args)
    attn = trainer.model.config.get_text_config()._attn_implementation
    groups = {"n": 0}
    rollout_group = trainer.rollout_group

    def counting_rollout_group(*a, **kw):
        groups["n"] += 1
        return rollout_group(*a, **kw)

    trainer.rollout_group = counting_rollout_group
    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    batched_groups: dict[str, int] = {"batched": 0, "sequential": 0}

    class Timer(TrainerCallback):
        def on_step_begin(self, _args, state, _control, **_kw):
            trainer.args.batch_rollouts = modes[state.global_step] == "batched"
            groups["n"] = 0
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, _control, **_kw):
            elapsed = time.perf_counter() - self.start
            mode = modes[state.global_step - 1]
            batched_groups[mode] += groups["n"]
            if state.global_step > 2:  # the first step of each mode is the warm-up
                times[mode].append(elapsed)

    trainer.add_callback(Timer())
    trainer.train()
    if batched_groups["sequential"] or not batched_groups["batched"]:
        raise SystemExit(f"the modes did not run as intended (attention {attn!r}, batched groups {batched_groups})")

    batched_s = statistics.median(times["batched"])
    sequential_s = statistics.median(times["sequential"])
    frames = [int(r["duration"]) for r in rows]
    load = os.getloadavg()[0]
    print(f"GRPO step, G = {training_args.num_generations}, {len(rows)} samples x {training_args.num_generations} "
          f"rollouts ({frames} frames, {size} px), {steps} timed steps per mode, attention {attn}, "
          f"torch threads {torch.get_num_threads()}, load average {load:.2f}")
    print(f"{'rollouts':<12}{'median s/step':>15}{'all steps (s)':>40}")
    for mode in ("batched", "sequential"):
        print(f"{mode:<12}{statistics.median(times[mode]):>15.3f}{', '.join(f'{t:.2f}' for t in times[mode]):>40}")
    print(f"speedup (sequential / batched): {sequential_s / batched_s:.2f}")
    print(json.dumps({
        "benchmark": "grpo_rollouts",
        "generations": training_args.num_generations,
        "samples_per_step": len(rows),
        "frames_per_sample": frames,
        "size_px": size,
        "timed_steps_per_mode": steps,
        "step_time_batched_s": round(batched_s, 4),
        "step_time_sequential_s": round(sequential_s, 4),
        "speedup": round(sequential_s / batched_s, 3),
        "attention": attn,
        "load_average_1m": round(load, 2),
    }))


if __name__ == "__main__":
    main()
