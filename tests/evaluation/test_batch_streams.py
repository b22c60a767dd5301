"""``streampro evaluate --batch-streams N``: proactive samples streamed together give the one-by-one records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streampro.cli import evaluate as cli

FAST = ["--max-new-tokens", "3", "--no-progress", "--plot-samples", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from streampro.testing.media import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Five clips of different lengths, one reference with a missing video, one question beyond its clip."""
    from streampro.video import encode_video

    root = tmp_path_factory.mktemp("bench")
    refs = []
    for i in range(5):
        seconds = 3 + i
        frames = []
        for j in range(seconds * 2):  # 2 fps
            frame = np.zeros((32, 32, 3), np.uint8)
            frame[8:24, 8:24] = (200, 40, 40) if j < 4 else (40, 40, 200)
            frame[0, i] = 255  # every clip differs
            frames.append(frame)
        encode_video(root / f"clip{i}.mp4", frames, fps=2)
        refs.append({"id": f"clip-{i}", "task": "OU", "question": "Tell me when the square changes colour.",
                     "question_time": float(i % 2), "video": f"clip{i}.mp4", "duration": float(seconds),
                     "answers": [{"text": "the square turned blue", "time": 2.0}]})
    refs.insert(2, {**refs[0], "id": "missing", "video": "nowhere.mp4"})
    refs.insert(4, {**refs[1], "id": "too-late", "question_time": 30.0, "answers": [{"text": "x", "time": 31.0}]})
    path = root / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in refs))
    return path


def records(out: Path) -> dict:
    return {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


def test_batched_evaluation_writes_the_one_by_one_records(checkpoint, bench, tmp_path):
    runs = {}
    for n in (1, 3):
        out = tmp_path / f"run{n}"
        argv = ["--model", checkpoint, "--benchmark", bench, "--video-root", bench.parent, "--out", out,
                "--batch-streams", n, *FAST]
        assert cli.main([str(a) for a in argv]) == 0
        runs[n] = records(out)
    assert runs[1].keys() == runs[3].keys() and len(runs[1]) == 7
    assert runs[3]["missing"]["error"]["kind"] == "missing_video"
    assert runs[3]["too-late"]["error"] == runs[1]["too-late"]["error"] and runs[3]["too-late"]["error"]
    for key, one in runs[1].items():
        batched = runs[3][key]
        assert batched["predictions"] == one["predictions"]
        assert [(e["t"], e["d"]) for e in batched["events"]] == [(e["t"], e["d"]) for e in one["events"]]
        for a, b in zip(one["events"], batched["events"]):
            assert (a["p"] is None) == (b["p"] is None)
            if a["p"] is not None:
                assert b["p"] == pytest.approx(a["p"], abs=2e-6)  # p is stored to 6 decimals


def test_batch_streams_needs_the_streampro_protocol(checkpoint, bench, tmp_path, capsys):
    argv = ["--model", checkpoint, "--benchmark", bench, "--video-root", bench.parent, "--out", tmp_path / "r",
            "--protocol", "decision-tree", "--batch-streams", "2", *FAST]
    assert cli.main([str(a) for a in argv]) == 2
    assert "--batch-streams 2" in capsys.readouterr().err
