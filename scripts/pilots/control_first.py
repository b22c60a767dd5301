"""Validation-only pilot: train the control task alone first, then the normal SFT budget from there.

    python scripts/pilots/control_first.py OUT SRC_RUN LOSS SEED CONTROL_STEPS
    python scripts/pilots/control_first.py runs/pilot-cf runs/reproduce-seed2 ce 2 200   # docs/reproduce.md

Reuses a finished ``streampro reproduce`` run (its data and init model) and the module's stage
functions; scores the result on the validation split and the control task's validation clips only
(never test), so it may inform the next budget.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import torch

from streampro import reproduce as R


def _link(link: Path, target: Path) -> None:
    if not link.exists():
        os.symlink(target.resolve(), link)


def main(out: Path, src: Path, loss: str, seed: int, control_steps: int) -> None:
    # Stage A: the control clips alone (their SFT records), from the run's init model.
    a = out / "A"
    (a / "data" / "sft").mkdir(parents=True, exist_ok=True)
    (a / "models").mkdir(exist_ok=True)
    for name in ("videos", ".frame_cache"):
        if (src / "data" / name).exists():
            _link(a / "data" / name, src / "data" / name)
    records = [line for line in (src / "data" / "sft" / "train.jsonl").read_text().splitlines() if "synth-CC-" in line]
    if not records:
        raise ValueError(f"{src}/data/sft/train.jsonl has no control clips: build the run with --control")
    (a / "data" / "sft" / "train.jsonl").write_text("\n".join(records) + "\n")
    _link(a / "models" / "init", src / "models" / "init")
    R.train_sft(R.Run(a, dataclasses.replace(R.FULL, sft_steps=control_steps), seed, False), loss)
    # Stage B: the unchanged budget on the full training file, from stage A's model.
    b = out / "B"
    (b / "models").mkdir(parents=True, exist_ok=True)
    _link(b / "data", src / "data")
    _link(b / "models" / "init", a / "models" / f"sft-{loss}")
    run = R.Run(b, R.FULL, seed, False)
    R.train_sft(run, loss)
    for split in ("validation", "control_validation"):
        R.evaluate(run, f"sft-{loss}", split)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    out_dir, src_run, loss_type, seed_arg, steps_arg = sys.argv[1:6]
    main(Path(out_dir), Path(src_run), loss_type, int(seed_arg), int(steps_arg))
