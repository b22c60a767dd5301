"""The decision-tree protocol (docs/method.md §3) for plain Qwen2.5-VL / Qwen3-VL checkpoints.

Base checkpoints are transformers' own classes built tiny in-process (``build_tiny_backbone(...,
streampro=False)``) and saved with the tiny tokenizer + PIL image processor; the harness loads them
with ``AutoModelForImageTextToText`` and :class:`BaselineProcessor` (no torchvision).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from streampro.cli import evaluate as cli
from streampro.evaluation.protocols import BaselineProcessor, DecisionTreeProtocol, load_baseline


def save_base_checkpoint(backbone: str, d: Path) -> Path:
    from streampro.backbones import build_tiny_backbone

    tb = build_tiny_backbone(backbone, seed=0, streampro=False)
    tb.model.save_pretrained(d)
    tb.processor.save_pretrained(d)  # tokenizer (with chat template) + image processor settings
    return d


def write_clips(root: Path) -> Path:
    from streampro.video import encode_video

    root.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(2):
        frames = [np.full((32, 32, 3), 60 * (j // 3) + 20 * i, np.uint8) for j in range(8)]  # 4 s at 2 fps
        encode_video(root / f"c{i}.mp4", frames, fps=2)
        refs.append({"id": f"c{i}", "task": "OU", "question": "When does the screen get brighter?",
                     "question_time": 1.5, "video": f"c{i}.mp4", "duration": 4.0,
                     "answers": [{"text": "now", "time": 2.0}]})
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    return root / "bench.jsonl"


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_decision_tree_run_on_a_base_checkpoint(backbone, tmp_path):
    ckpt = save_base_checkpoint(backbone, tmp_path / "base")
    bench = write_clips(tmp_path / "clips")
    out = tmp_path / "run"
    # The random model's p_yes sits near 0.4-0.5: a threshold of 0.3 makes it answer, so the answer
    # path (generate + change detection) runs.
    rc = cli.main([str(a) for a in ["--model", ckpt, "--benchmark", bench, "--video-root", bench.parent, "--out", out,
                                    "--protocol", "decision-tree", "--window-turns", "2", "--max-new-tokens", "3",
                                    "--response-threshold", "0.3", "--no-progress", "--plot-samples", "1"]])
    assert rc == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["c0", "c1"]
    for rec in records:
        assert rec["error"] is None
        assert [e["t"] for e in rec["events"]] == [1.0, 2.0, 3.0, 4.0]
        assert rec["events"][0] == {"t": 1.0, "d": "before_question", "p": None}  # question at 1.5 s: turn 1
        asked = rec["events"][1:]
        assert all(0.0 <= e["p"] <= 1.0 for e in asked)
        assert {e["d"] for e in asked} <= {"wait", "response", "same_answer", "empty_answer"}
        assert any(e["d"] != "wait" for e in asked)  # the threshold made it answer at least once
        assert [p["time"] for p in rec["predictions"]] == [e["t"] for e in rec["events"] if e["d"] == "response"]
        texts = [p["text"] for p in rec["predictions"]]
        assert all(a != b for a, b in itertools.pairwise(texts)) and all(texts)  # only changed, non-empty answers
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["protocol"] == "decision-tree" and report["config"]["window_turns"] == 2
    assert report["results"]["num_samples"] == 2 and "OU_f1" in report["results"]


class ScriptedTree(DecisionTreeProtocol):
    """The tree's control flow with scripted model outputs; the only change is p_yes/answer."""

    def __init__(self, p_yes, answers, **kwargs):
        super().__init__(self.model_stub(), self.processor_stub(), **kwargs)
        self._p, self._a, self.windows = iter(p_yes), iter(answers), []

    @staticmethod
    def model_stub():
        import torch

        return torch.nn.Linear(1, 1)

    @staticmethod
    def processor_stub():
        from streampro.backbones import build_image_processor, build_tiny_tokenizer

        return BaselineProcessor(build_tiny_tokenizer(), build_image_processor("qwen2_5_vl"))

    def p_yes(self, window, question):
        self.windows.append([k for k, _ in window])
        return next(self._p)

    def answer(self, window, question):
        return next(self._a)


def test_decision_tree_waits_answers_and_emits_only_changes():
    frames = [np.zeros((28, 28, 3), np.uint8)] * 6
    tree = ScriptedTree(p_yes=[0.2, 0.9, 0.8, 0.7, 0.9], answers=["a red cube", "a red cube", "", "a blue cube"],
                        window_frames=3)
    out = tree.run(frames, "what is it?", question_time=2.0)  # asked on turn 1 (t = 2 s)
    assert [e["d"] for e in out.events] == ["before_question", "wait", "response", "same_answer", "empty_answer",
                                            "response"]
    assert out.predictions == [{"time": 3.0, "text": "a red cube"}, {"time": 6.0, "text": "a blue cube"}]
    assert tree.windows == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]  # bounded window of recent frames


def test_decision_tree_threshold_and_bad_streams():
    frames = [np.zeros((28, 28, 3), np.uint8)] * 2
    tree = ScriptedTree(p_yes=[0.6, 0.6], answers=[], window_frames=2, response_threshold=0.7)
    assert [e["d"] for e in tree.run(frames, "q", 0.0).events] == ["wait", "wait"]
    with pytest.raises(ValueError, match="beyond the stream"):
        ScriptedTree([], [], window_frames=2).run(frames, "q", question_time=10.0)
    with pytest.raises(ValueError, match="empty"):
        ScriptedTree([], [], window_frames=2).run([], "q", question_time=0.0)


def test_baseline_processor_expands_one_image_pad_per_frame(tmp_path):
    ckpt = save_base_checkpoint("qwen2_5_vl", tmp_path / "base")
    _, processor = load_baseline(ckpt, "cpu")
    frames = [np.zeros((56, 56, 3), np.uint8), np.zeros((112, 56, 3), np.uint8)]
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True)
    enc = processor(text, frames)
    merge = processor.image_processor.merge_size ** 2
    expected = int(enc["image_grid_thw"].prod(-1).sum()) // merge
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == expected
    assert enc["mm_token_type_ids"].sum() == expected
    with pytest.raises(ValueError, match="2 image placeholders for 1 images"):
        processor(text, frames[:1])
