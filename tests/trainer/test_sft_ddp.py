"""2-process DDP on CPU (gloo) matches the single-process loss trajectory at the same global batch.

Both runs go through ``trainer/sft.py`` as a user launches it. Global batch 4: DDP is 2 ranks × 2
records; the single process is 2 records × 2 accumulation steps, so each CB-Stream micro-batch
(whose class weights are per micro-batch, docs/method.md §4) holds the same records in both runs and the
trajectories must agree to float precision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streampro.modeling_streampro.processing_streampro import turn_time

from streampro.video import encode_video

REPO = Path(__file__).resolve().parents[2]
SIZE, TURNS, STEPS = 56, 5, 3  # tiny frames, short streams, three optimizer steps: < 1 min per run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpdata")
    (root / "videos").mkdir()
    rng = np.random.default_rng(2)
    lines = []
    for i in range(4 * STEPS):
        colours = rng.integers(0, 255, size=(TURNS, 3), dtype=np.uint8)
        encode_video(root / f"videos/d{i}.mp4", [np.broadcast_to(colours[j // 2], (SIZE, SIZE, 3)).copy()
                                               for j in range(2 * TURNS)], fps=2)
        turn = 1 + i % 4
        lines.append(json.dumps({
            "id": f"d{i}", "task": "OU", "video": f"videos/d{i}.mp4", "duration": float(TURNS), "fps": 1.0,
            "num_turns": TURNS, "system": None,
            "questions": [{"turn": i % 2, "time": turn_time(i % 2), "text": "Tell me when the screen changes colour."}],
            "responses": [{"turn": turn, "time": turn_time(turn), "text": "it turned red"}],
        }))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run_sft(launcher: list[str], dataset: Path, out: Path, *extra: str) -> list[float]:
    args = [
        "--config", str(REPO / "recipes/sft/tiny_synth_cpu.yaml"), "--train_file", str(dataset / "train.jsonl"),
        "--eval_file", "", "--frames_root", str(dataset), "--output_dir", str(out),
        "--max_steps", str(STEPS), "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", str(STEPS),
        "--train_sampling_strategy", "sequential", "--learning_rate", "1e-3", "--disable_tqdm", "true", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*launcher, str(REPO / "trainer/sft.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(dataset, tmp_path):
    # torchrun, not `accelerate launch --cpu --num_processes 2`: the latter starts a single process
    # on a CPU-only machine (accelerate 1.15), which would make this test compare a run with itself.
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    ddp = run_sft([torchrun, "--nproc_per_node", "2", "--master_port", "29517"],
                  dataset, tmp_path / "ddp", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1")
    single = run_sft([sys.executable], dataset, tmp_path / "single",
                     "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2")
    assert len(ddp) == len(single) == STEPS
    assert ddp == pytest.approx(single, rel=1e-4)
    assert ddp[-1] < ddp[0]  # it trains
    state = json.loads((tmp_path / "ddp" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    tokens = [h["num_tokens"] for h in state["log_history"] if "num_tokens" in h]
    single_state = json.loads((tmp_path / "single" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert tokens == [h["num_tokens"] for h in single_state["log_history"] if "num_tokens" in h]  # 2 ranks really ran
