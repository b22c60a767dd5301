"""Data-parallel ``streampro evaluate``: 2 CPU processes give exactly the 1-process report.

``--num-processes 2`` re-launches the command with ``accelerate launch`` (torchrun underneath,
gloo on CPU); each rank writes ``predictions.rank{r}.jsonl`` and rank 0 merges in benchmark order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def write_bench(root: Path, n: int = 5) -> Path:
    from streampro.video import encode_video

    root.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(n):
        frames = [np.full((32, 32, 3), (40 * i + 60 * (j >= 4)) % 256, np.uint8) for j in range(8)]  # 4 s at 2 fps
        encode_video(root / f"v{i}.mp4", frames, fps=2)
        refs.append({"id": f"s{i}", "task": "OU", "question": "Tell me when the screen changes.",
                     "question_time": 0.0, "video": f"v{i}.mp4", "duration": 4.0,
                     "answers": [{"text": "the screen got brighter", "time": 2.0}]})
    refs.append({"id": "broken", "task": "OU", "question": "q", "question_time": 0.0, "video": "absent.mp4",
                 "duration": 4.0, "answers": [{"text": "x", "time": 1.0}]})
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    return root / "bench.jsonl"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streampro.cli.evaluate", *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_give_the_one_process_report(tmp_path):
    from streampro.backbones import build_tiny_backbone

    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    ckpt = tmp_path / "ckpt"
    tb.model.save_pretrained(ckpt)
    tb.processor.save_pretrained(ckpt)
    bench = write_bench(tmp_path / "clips")
    common = ["--model", ckpt, "--benchmark", bench, "--video-root", bench.parent, "--max-new-tokens", "2",
              "--no-progress", "--plot-samples", "1"]

    one = run_cli(*common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_cli(*common, "--out", tmp_path / "two", "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1/2" in two.stderr and "rank 0/2" in two.stderr  # really two ranks

    report_one = json.loads((tmp_path / "one" / "report.json").read_text())
    report_two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report_two == report_one
    assert report_one["results"]["num_samples"] == 5 and report_one["errors"]["by_kind"] == {"missing_video": 1}
    preds_one = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    preds_two = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in preds_two] == ["s0", "s1", "s2", "s3", "s4", "broken"]  # benchmark order
    assert [json.loads(x)["predictions"] for x in preds_two] == [json.loads(x)["predictions"] for x in preds_one]
    assert not list((tmp_path / "two").glob("predictions.rank*"))  # merged and removed
