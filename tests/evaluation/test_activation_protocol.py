"""The activation protocol (docs/activation.md): activation scores decide when, a plain answerer answers.

Tiny random models throughout: a tiny activation model saved to disk, transformers' own tiny
Qwen-VL as the plain answerer, and the embedded StreamPro model as an answerer in the end-to-end run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streampro.trainer.activation import load_activation_model

from streampro.cli import evaluate as cli
from streampro.evaluation.activation import (
    ANSWER_NOW,
    ActivationProtocol,
    ActivationScorer,
    RoundDecayAnswerer,
)
from streampro.evaluation.protocols import BaselineProcessor


@pytest.fixture(scope="module")
def activation():
    model, processor = load_activation_model("tiny:qwen2_5_vl")
    return model.eval(), processor


@pytest.fixture(scope="module")
def activation_dir(activation, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("activation")
    activation[0].save_pretrained(d)
    activation[1].save_pretrained(d)
    return d


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def base(request):
    from streampro.backbones import build_tiny_backbone

    tb = build_tiny_backbone(request.param, seed=0, streampro=False)
    return tb.model, BaselineProcessor(tb.processor.tokenizer, tb.processor.image_processor)


def frames(n: int, size: int = 56) -> list[np.ndarray]:
    return [np.random.RandomState(i).randint(0, 255, (size, size, 3), dtype=np.uint8) for i in range(n)]


class ScriptedScorer:
    """Stands in for the activation model: fixed scores, one per scored frame."""

    fps = 1.0

    def __init__(self, scores):
        self.scores = list(scores)

    def reset(self):
        self.calls = []

    def score(self, k, image, question):
        self.calls.append(k)
        return self.scores[len(self.calls) - 1]


def test_answers_when_the_score_crosses_the_threshold(base):
    model, processor = base
    answerer = RoundDecayAnswerer(model, processor, max_new_tokens=3)
    scorer = ScriptedScorer([0.1, 0.7, 0.8, 0.2, 0.6, 0.5])
    out = ActivationProtocol(scorer, answerer, threshold=0.5).run(frames(7), "When does it change?", 2.0)
    assert scorer.calls == [1, 2, 3, 4, 5, 6]  # scored from the question's turn (t = 2 s is turn 1) on
    decisions = [e["d"] for e in out.events]
    said = [e["d"] in ("response", "empty_answer") for e in out.events]
    assert decisions[0] == "before_question" and out.events[0]["p"] is None
    assert [e["p"] for e in out.events[1:]] == [0.1, 0.7, 0.8, 0.2, 0.6, 0.5]
    # Crossings at 0.7 (turn 2) and 0.6 (turn 5); 0.8 and 0.5 stay at or above the threshold.
    assert said == [False, False, True, False, False, True, False]
    assert decisions[1] == "wait" and decisions[3] == "active" and decisions[4] == "wait" and decisions[6] == "active"
    assert [p["time"] for p in out.predictions] == [e["t"] for e in out.events if e["d"] == "response"]
    # Each answer joins the buffer as an assistant turn (StreamBridge's MB <- R).
    assert [text for _, role, text in answerer.texts if role == "assistant"] == [p["text"] for p in out.predictions]


def test_an_answer_from_pre_encoded_frames_equals_plain_generate(base):
    """Below the budget the buffer is the frames as they are: the answer is generate() on the rendered prompt."""
    model, processor = base
    answerer = RoundDecayAnswerer(model, processor, max_new_tokens=5)
    for k, image in enumerate(frames(3)):
        answerer.add_frame(k, image)
    answerer.add_text(1, "user", "Question: what moved?")
    text = answerer._render(ANSWER_NOW)
    assert text.index("<1s-2s>") < text.index("Question: what moved?") < text.index("<2s-3s>")
    inputs = processor(text, frames(3))
    eot = processor.end_of_turn_id
    seq = model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=eot, pad_token_id=eot)
    expected = processor.tokenizer.decode(seq[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answerer.answer() == expected


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_round_decay_pools_the_oldest_frames_first(backbone):
    from streampro.backbones import build_tiny_backbone

    tb = build_tiny_backbone(backbone, seed=0, max_pixels=224 * 224)  # 49-64 image tokens per frame
    processor = BaselineProcessor(tb.processor.tokenizer, tb.processor.image_processor)
    answerer = RoundDecayAnswerer(tb.model, processor, token_budget=10**6, max_new_tokens=2)
    for k, image in enumerate(frames(5, size=224)):
        answerer.add_frame(k, image)
    full = answerer.context_tokens()
    grids = [f.turn.grid for f in answerer.frames]
    # Just over budget: the buffer must shrink to 3/4 of it, which pooling alone achieves here.
    answerer.token_budget = full - 1
    answerer._maybe_compress()
    after = [f.turn.grid for f in answerer.frames]
    assert len(after) == 5 and answerer.dropped_frames == 0 and answerer.num_compressions == 1
    assert answerer.context_tokens() <= int(answerer.token_budget * 0.75)
    assert after[-1] == grids[-1]  # the newest frame is never pooled
    sizes = [h * w for h, w in after]
    assert sizes[0] < grids[0][0] * grids[0][1] and sizes == sorted(sizes)  # oldest first
    assert answerer.answer() is not None  # pooled features still feed generate()
    # A budget too small for any frame: pooled to one token each, then the oldest frames go; the newest stays.
    answerer.token_budget = 5
    answerer._maybe_compress()
    assert [f.index for f in answerer.frames] == [4] and answerer.dropped_frames == 4


def test_scores_from_cached_frames_equal_a_full_window_forward(activation):
    model, processor = activation
    scorer = ActivationScorer(model, processor, window_frames=3)
    scorer.reset()
    images = frames(5, size=32)
    scores = [scorer.score(k, image, "When?") for k, image in enumerate(images)]
    for k in range(5):
        turns = list(range(max(0, k - 2), k + 1))  # the sliding window of 3 frames
        full = model.act_scores(**processor("When?", [images[t] for t in turns], turns=turns))[0]
        assert abs(scores[k] - float(full[-1])) < 1e-5


def test_real_time_questions_are_answered_at_their_turn(activation, base):
    model, processor = base
    protocol = ActivationProtocol(ActivationScorer(*activation), RoundDecayAnswerer(model, processor, max_new_tokens=2))
    out = protocol.answer_at(frames(6, size=32), [(2.0, "What colour?"), (4.0, "How many?")])
    assert out.frames == 4 and [a["time"] for a in out.answers] == [2.0, 4.0]
    assert all(a["p"] is None and isinstance(a["text"], str) for a in out.answers)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from streampro.dataset_scripts.synth import generate

    d = tmp_path_factory.mktemp("synth")
    generate(d, n=7, seed=0, size=32, progress=False)  # one clip per task, all in the train split
    return d


def test_evaluate_activation_on_a_synth_clip(synth, activation_dir, tmp_path):
    """End to end: `streampro evaluate --protocol activation`, the embedded StreamPro model answering."""
    out = tmp_path / "run"
    args = ["--protocol", "activation", "--activation-model", activation_dir, "--benchmark",
            synth / "bench" / "train.jsonl", "--video-root", synth, "--out", out, "--limit", "1",
            "--response-threshold", "0", "--token-budget", "300", "--max-new-tokens", "4", "--window-turns", "4",
            "--no-progress", "--plot-samples", "1"]
    assert cli.main([str(a) for a in args]) == 0
    config = json.loads((out / "run_config.json").read_text())
    assert config["protocol"] == "activation" and config["activation_model"] == str(activation_dir.resolve())
    assert config["token_budget"] == 300 and config["window_turns"] == 4
    (record,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    ref = json.loads((synth / "bench" / "train.jsonl").read_text().splitlines()[0])
    assert record["id"] == ref["id"] and record["error"] is None
    events = record["events"]
    assert [e["t"] for e in events] == [float(k + 1) for k in range(int(ref["duration"]))]
    asked = [e for e in events if e["t"] >= ref["question_time"]]
    assert all(e["d"] == "before_question" for e in events if e["t"] < ref["question_time"])
    # Threshold 0: every score is at or above it, so the one crossing is the question's own frame.
    assert asked[0]["d"] in ("response", "empty_answer") and all(e["d"] == "active" for e in asked[1:])
    assert all(0 <= e["p"] <= 1 for e in asked)
    assert [p["time"] for p in record["predictions"]] == [e["t"] for e in asked if e["d"] == "response"]
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["num_samples"] == 1


@pytest.mark.parametrize(("extra", "match"), [
    (["--protocol", "activation"], "needs --activation-model"),
    (["--activation-model", "."], "options of --protocol activation"),
    (["--token-budget", "100"], "options of --protocol activation"),
])
def test_activation_options_are_checked(extra, match, tmp_path, capsys):
    bench = tmp_path / "b.jsonl"
    bench.write_text("")
    rc = cli.main(["--benchmark", str(bench), "--video-root", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    assert rc == 2 and match in capsys.readouterr().err
