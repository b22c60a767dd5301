"""Padding and SFT step time with batches grouped by length against random batches, on a Synth train file.

Run (after ``streampro reproduce`` has built a run folder, or any ``streampro data synth`` output)::

    python benchmarks/sft_length_grouping.py --data runs/reproduce/data --model runs/reproduce/models/init
    python benchmarks/sft_length_grouping.py --data runs/reproduce/data --model runs/reproduce/models/init \\
        --train-file runs/reproduce/data/sft/caption_stage_train.jsonl --batch-size 16

Two measurements, both in this process:

1. **Padding** (exact, no timing noise): one epoch of each sampler's batches (Trainer's random sampler
   and its ``group_by_length`` sampler on the records' ``num_turns``, the same seed), counting the
   tokens of every record and the padded tokens of every batch (``batch size × longest record``).
2. **Step time**: ``--steps`` real training steps of ``StreamProSFTTrainer`` from the same model with
   each sampler, alternated ``--repeats`` times (random, grouped, random, ...), one torch thread; the
   ratio of the median wall times per step. Each sampler's block sees the same records every time (one
   seed), and a warm-up block of each fills the frame cache first, so video decoding is out.

The last line is one JSON object (``grouped_over_random_step_time``, ``padded_tokens_ratio``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("sft_length_grouping")


def record_lengths(records: list[dict], processor, size: int) -> list[int]:
    """Tokens of each record as the collator encodes it (black frames: the token count ignores pixels)."""
    import numpy as np
    from streampro.dataset_scripts.collator import StreamingSFTCollator

    collator = StreamingSFTCollator(processor)
    lengths = []
    for record in records:
        frames = [np.zeros((size, size, 3), np.uint8)] * int(record["num_turns"])
        lengths.append(len(collator.encode(record, frames=frames)["input_ids"]))
    return lengths


def padded_tokens(order: list[int], lengths: list[int], batch_size: int) -> int:
    """Tokens computed for one epoch in ``order``: each batch is padded to its longest record."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Synth folder (the records' frames root)")
    parser.add_argument("--model", type=Path, required=True, help="StreamPro checkpoint to train from")
    parser.add_argument("--train-file", type=Path, help="SFT records (default: DATA/sft/train.jsonl)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50,
                        help="training steps per timed block (50 = one of the grouped sampler's mega-batches, "
                             "which it orders longest first: fewer steps would time its longest batches only)")
    parser.add_argument("--repeats", type=int, default=2, help="timed blocks per sampler, alternated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    from streampro.trainer.sft import build_trainer, load_model
    from streampro.trainer.sft_config import SFTScriptArguments, StreamProSFTConfig
    from transformers.trainer_pt_utils import get_length_grouped_indices
    from trl import ModelConfig, TrlParser

    from streampro.cpu_speedups import apply_cpu_speedups

    torch.set_num_threads(1)
    train_file = args.train_file or args.data / "sft" / "train.jsonl"
    records = [json.loads(line) for line in train_file.read_text().splitlines() if line.strip()]
    _, processor = load_model(str(args.model))
    side = int(processor.image_processor.size["longest_edge"] ** 0.5)
    lengths = record_lengths(records, processor, side)
    generator = torch.Generator().manual_seed(args.seed)
    random_order = torch.randperm(len(records), generator=generator).tolist()
    grouped_order = get_length_grouped_indices([r["num_turns"] for r in records], args.batch_size,
                                               generator=torch.Generator().manual_seed(args.seed))
    real = sum(lengths)
    padded = {name: padded_tokens(order, lengths, args.batch_size)
              for name, order in (("random", random_order), ("grouped", grouped_order))}

    def trainer_for(strategy: str, out: str):
        argv = ["--model", str(args.model), "--train_file", str(train_file), "--eval_file", "",
                "--frames_root", str(args.data), "--frame_cache_dir", str(args.data / ".frame_cache"),
                "--loss_type", "ce", "--freeze_vision", "true", "--freeze_projector", "true",
                "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", "1e-3",
                "--max_steps", str(args.steps), "--output_dir", out, "--use_cpu", "true", "--bf16", "false",
                "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps",
                str(args.steps), "--seed", str(args.seed), "--dataloader_num_workers", "0",
                "--train_sampling_strategy", strategy, "--length_column_name", "num_turns"]
        parsed = TrlParser((SFTScriptArguments, StreamProSFTConfig, ModelConfig)).parse_args_and_config(args=argv)
        trainer = build_trainer(*parsed)
        apply_cpu_speedups(trainer.model)
        return trainer

    times: dict[str, list[float]] = {"random": [], "grouped": []}
    with tempfile.TemporaryDirectory() as out:
        for strategy in ("random", "group_by_length"):  # warm-up: the frame cache holds every timed record
            trainer_for(strategy, out).train()
        for r in range(args.repeats):
            for name, strategy in (("random", "random"), ("grouped", "group_by_length")):
                trainer = trainer_for(strategy, out)
                start = time.perf_counter()
                trainer.train()
                times[name].append((time.perf_counter() - start) / args.steps)
                logger.info("repeat %d/%d %s: %.3f s/step", r + 1, args.repeats, name, times[name][-1])
    random_s, grouped_s = statistics.median(times["random"]), statistics.median(times["grouped"])
    print(json.dumps({
        "train_file": str(train_file),
        "records": len(records),
        "batch_size": args.batch_size,
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_overhead": {k: round(v / real - 1, 4) for k, v in padded.items()},
        "padded_tokens_ratio": round(padded["grouped"] / padded["random"], 4),
        "step_s": {"random": round(random_s, 4), "grouped": round(grouped_s, 4)},
        "grouped_over_random_step_time": round(grouped_s / random_s, 4),
        "steps_per_block": args.steps,
        "repeats": args.repeats,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
