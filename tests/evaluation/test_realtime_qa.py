"""Real-time question answering: a question asked at time t about the stream so far, answered then.

The protocols' ``answer_at`` is checked against its definition: StreamPro answers equal those of
a fresh stream that asks only that question (the response forced on its turn), for every question
of a single pass, window evictions included; the pass reads frames only up to the last question;
the decision tree answers from its window at the question's frame. The harness then answers
multiple-choice and open questions from converted-style records, one pass per video.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streampro.evaluation.protocols import DecisionTreeProtocol, StreamProProtocol, timed_user_text
from streampro.evaluation.realtime import question_prompt
from streampro.testing.media import random_frames

# Answers of at most 4 tokens keep the random tiny model fast.
MAX_NEW = 4


@pytest.fixture(scope="module")
def tiny_streampro():
    from streampro.backbones import build_tiny_backbone

    return build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)


class Counting:
    """A frame iterator that counts how many frames were taken from it."""

    def __init__(self, frames):
        self.frames, self.taken = frames, 0

    def __iter__(self):
        for frame in self.frames:
            self.taken += 1
            yield frame


def forced_answer(tb, frames, question: str, t: float, window: int):
    """The answer of a fresh stream that asks only ``question`` at ``t`` and must respond on its turn."""
    events = tb.model.generate_stream(frames, question, processor=tb.processor, question_time=t,
                                      max_new_tokens=MAX_NEW, response_threshold=0.0, window_turns=window)
    return next(ev for ev in events if ev.question is not None)


@pytest.mark.parametrize("window", [200, 3])  # 3 turns: the pass evicts turns (and rebuilds the cache) mid-way
def test_streampro_answers_equal_separate_forced_streams(tiny_streampro, window):
    tb = tiny_streampro
    frames = random_frames(8, size=32, seed=1)
    protocol = StreamProProtocol(tb.model, tb.processor, max_new_tokens=MAX_NEW, window_turns=window)
    questions = [(2.0, "What is red?"), (5.0, "What now?"), (4.5, "Same turn, other question?"), (8.0, "Last?")]
    counted = Counting(frames)
    out = protocol.answer_at(counted, questions)
    assert out.frames == counted.taken == 8
    for (t, q), answer in zip(questions, out.answers):
        ev = forced_answer(tb, frames, q, t, window)
        assert answer == {"time": ev.time, "text": ev.text, "p": round(ev.p_response, 6)}
        assert ev.decision == "response"


def test_one_pass_reads_frames_only_up_to_the_last_question(tiny_streampro):
    tb = tiny_streampro
    protocol = StreamProProtocol(tb.model, tb.processor, max_new_tokens=MAX_NEW)
    counted = Counting(random_frames(10, size=32, seed=2))
    out = protocol.answer_at(counted, [(1.0, "a?"), (3.0, "b?"), (3.0, "c?")])
    assert counted.taken == out.frames == 3  # turn 2 (t = 3 s) is the last one needed
    assert [a["time"] for a in out.answers] == [1.0, 3.0, 3.0]


def test_a_question_beyond_the_stream_gets_no_answer(tiny_streampro):
    tb = tiny_streampro
    protocol = StreamProProtocol(tb.model, tb.processor, max_new_tokens=MAX_NEW)
    out = protocol.answer_at(random_frames(3, size=32), [(2.0, "in time?"), (9.0, "too late?")])
    assert out.answers[0] is not None and out.answers[1] is None and out.frames == 3
    with pytest.raises(ValueError, match="empty"):
        protocol.answer_at([], [(1.0, "q?")])


def test_decision_tree_answers_from_its_window_at_the_question(tmp_path):
    from streampro.backbones import build_tiny_backbone
    from streampro.evaluation.protocols import load_baseline

    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=False)  # a plain Qwen2.5-VL, saved and reloaded
    tb.model.save_pretrained(tmp_path / "base")
    tb.processor.save_pretrained(tmp_path / "base")
    model, processor = load_baseline(tmp_path / "base", "cpu")
    protocol = DecisionTreeProtocol(model, processor, window_frames=2, max_new_tokens=MAX_NEW)
    frames = random_frames(6, size=32, seed=3)
    counted = Counting(frames)
    out = protocol.answer_at(counted, [(2.0, "first?"), (4.0, "second?")])
    assert counted.taken == out.frames == 4
    # Each answer is the model's reply to the question after the 2 most recent frames.
    assert out.answers[0] == {"time": 2.0, "text": protocol.reply([(0, frames[0]), (1, frames[1])], "first?"), "p": None}
    assert out.answers[1]["text"] == protocol.reply([(2, frames[2]), (3, frames[3])], "second?")


def test_timed_user_turns_keep_the_question_first():
    turns = [{"time": 0.3, "content": "Subtitle: b"}, {"time": 0.2, "content": "Subtitle: a"},
             {"time": 5.5, "content": "Subtitle: c"}]
    assert timed_user_text("Where?", 0.0, turns, fps=1.0) == [(0.0, "Where?\nSubtitle: a\nSubtitle: b"),
                                                             (5.5, "Subtitle: c")]


def test_prompts_follow_each_benchmark():
    mc = {"kind": "multiple_choice", "benchmark": "ovo-bench", "task": "EPM", "question": "Who?",
          "options": ["x", "y"], "context": ""}
    assert "Options:\nA. x; B. y;" in question_prompt(mc) and "letter" in question_prompt(mc)
    sb = {**mc, "benchmark": "streamingbench", "task": "SQA", "context": "At 00:00:10, Q: ...; Answer: B;"}
    text = question_prompt(sb)
    assert text.index("At 00:00:10") < text.index("Question: Who?") < text.index("A. x\nB. y")
    assert text.endswith("The best option is:")
    rec = {"kind": "open", "benchmark": "ovo-bench", "task": "REC", "question": "How many times did they jump?",
           "options": None, "context": ""}
    assert "How many times did they jump?" in question_prompt(rec) and "single number" in question_prompt(rec)


# --------------------------------------------------------------------------------------------
# Through the harness: records of the converted format, one pass per video
# --------------------------------------------------------------------------------------------


def write_qa_clips(root: Path, seconds: int = 6) -> list[dict]:
    """Two 1-fps clips and real-time QA records on them (format of /tmp/plan/benchmark_format.md)."""
    from streampro.video import encode_video

    root.mkdir(parents=True, exist_ok=True)
    for v in range(2):
        encode_video(root / f"v{v}.mp4", [np.full((32, 32, 3), 30 * j + 10 * v, np.uint8) for j in range(seconds)],
                     fps=1)
    base = {"benchmark": "streamingbench", "duration": float(seconds), "context": "", "source": "streamingbench",
            "meta": {}}
    refs = []
    for v in range(2):
        for j, t in enumerate((2.0, 4.0, 5.0)):
            refs.append({**base, "id": f"sb:v{v}:{j}", "task": "CS", "kind": "multiple_choice", "video": f"v{v}.mp4",
                         "question": f"What is on screen ({j})?", "question_time": t,
                         "options": ["red", "green", "blue", "grey"], "answer": "B", "group": None,
                         "group_index": 0})
    return refs


def test_harness_answers_every_question_of_a_video_in_one_pass(tiny_streampro, tmp_path, monkeypatch):
    import streampro.video
    from streampro.evaluation.harness import evaluate_unit, plan_units

    tb = tiny_streampro
    refs = write_qa_clips(tmp_path)
    refs.append({**refs[0], "id": "sb:open", "kind": "open", "options": None, "answer": "Yes", "task": "CS",
                 "question": "Is the screen bright?", "question_time": 3.0})
    units = plan_units(refs)
    assert [[r["id"] for r in u] for u in units] == [["sb:v0:0", "sb:v0:1", "sb:v0:2", "sb:open"],
                                                     ["sb:v1:0", "sb:v1:1", "sb:v1:2"]]
    opened = []
    real = streampro.video.iter_video_frames
    monkeypatch.setattr(streampro.video, "iter_video_frames", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    protocol = StreamProProtocol(tb.model, tb.processor, max_new_tokens=MAX_NEW)
    records = evaluate_unit(protocol, units[0], tmp_path, 1.0, None)
    assert len(opened) == 1  # four questions, one pass over v0
    assert [r["id"] for r in records] == ["sb:v0:0", "sb:v0:1", "sb:v0:2", "sb:open"]
    assert [r["time"] for r in records] == [2.0, 4.0, 5.0, 3.0]
    assert all(r["error"] is None and isinstance(r["answer"], str) and 0 <= r["p"] <= 1 for r in records)
    # The same answers as each question on its own pass.
    for ref, record in zip(units[0], records):
        assert evaluate_unit(protocol, [ref], tmp_path, 1.0, None) == [record]


def test_reference_checks_mark_samples_invalid_without_stopping(tiny_streampro, tmp_path):
    from streampro.evaluation.harness import SampleError, evaluate_unit

    tb = tiny_streampro
    good = write_qa_clips(tmp_path)[0]
    late = {**good, "id": "late", "question_time": 60.0}  # after the 6 s duration
    short = {**good, "id": "short", "duration": 60.0, "question_time": 30.0}  # the clip is shorter than it says
    protocol = StreamProProtocol(tb.model, tb.processor, max_new_tokens=MAX_NEW)
    good_rec, late_err, short_err = evaluate_unit(protocol, [good, late, short], tmp_path, 1.0, None)
    assert good_rec["error"] is None
    assert isinstance(late_err, SampleError) and late_err.kind == "invalid_reference"
    assert "60" in late_err.message
    assert isinstance(short_err, SampleError) and short_err.kind == "stream_error"
    assert "beyond the stream" in short_err.message

    # A proactive sample whose answer comes before its question, or after the video's end.
    proactive = {"id": "p", "task": "OU", "question": "Tell me when it changes.", "question_time": 4.0,
                 "video": "v0.mp4", "duration": 6.0, "answers": [{"text": "now", "time": 2.0}]}
    after = {**proactive, "id": "p2", "question_time": 1.0, "answers": [{"text": "now", "time": 9.0}]}
    for ref in (proactive, after):
        [err] = evaluate_unit(protocol, [ref], tmp_path, 1.0, None)
        assert isinstance(err, SampleError) and err.kind == "invalid_reference", ref["id"]


def test_sequential_questions_carry_their_context(tmp_path):
    refs = write_qa_clips(tmp_path)
    sqa = [{**r, "task": "SQA", "group": "sb:sqa:v0", "group_index": i,
            "context": "" if i == 0 else f"At {i}, question {i - 1} was answered B."} for i, r in enumerate(refs[:3])]
    prompts = [question_prompt(r) for r in sqa]
    assert "was answered" not in prompts[0] and "question 0 was answered B" in prompts[1]
    assert json.dumps(prompts)  # plain strings
