"""`streampro stream`: responses printed with their times, one JSON event per frame."""

import json

import numpy as np

from streampro.backbones import build_tiny_backbone
from streampro.cli import main
from streampro.video import encode_video


def test_stream_cli_prints_timed_responses_and_writes_events(tmp_path, capsys):
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True)
    model_dir = tmp_path / "model"
    tb.model.save_pretrained(model_dir)
    tb.processor.save_pretrained(model_dir)
    video = encode_video(tmp_path / "clip.mp4", [np.full((56, 56, 3), 5 * i, np.uint8) for i in range(45)], fps=10)
    out = tmp_path / "events.jsonl"
    code = main(["stream", str(video), "--question", "What happens next?", "--question-time", "1.5",
                 "--model", str(model_dir), "--out", str(out), "--response-threshold", "0.0",
                 "--max-new-tokens", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["time"] for e in events] == [1.0, 2.0, 3.0, 4.0]  # 4.5 s at 1 fps
    assert [e["decision"] for e in events] == ["silence", "response", "response", "response"]
    assert "[    2.0s] question: What happens next?" in printed
    assert "(silent 1-1s)\n[    2.0s] question" in printed and "[    4.0s]" in printed
    assert printed.strip().endswith("4 frames, 3 responses")
