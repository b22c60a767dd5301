"""Training windows (``data build sft --window-turns``): each window is the engine's context after a slide."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from streampro.dataset_scripts.builders import build, build_sft_record, engine_windows, window_records
from streampro.dataset_scripts.collator import RecordError, StreamingSFTCollator
from streampro.dataset_scripts.schema import validate_raw
from streampro.dataset_scripts.synth import make_clip
from streampro.modeling_streampro.modeling_streampro import StreamEvent

W, S = 8, 2  # a window of 8 turns sliding 2 at a time: Synth clips of 13-24 s slide several times at 1 fps


def synth_case(task: str, index: int):
    """A StreamPro-Synth clip (56 px: 4 image tokens per frame), its SFT record and its 1-fps frames."""
    clip = make_clip(task, index, 7, size=56)
    raw = validate_raw({"id": f"{task}-{index}", "task": task, "source": "streampro-synth", "video": "v.mp4",
                        "duration": float(clip.duration), "question": clip.question,
                        "question_time": clip.question_time, "answers": clip.answers, "system": None})
    record = build_sft_record(raw)
    frames = [clip.render(k + 1.0) for k in range(record["num_turns"])]
    return record, frames


CASES = [("EU", 2), ("OU", 2)]  # EU: question on turn 2, two answers; OU: question on turn 13 (late)


def teacher_forced_session(model, processor, responses: dict[int, str]):
    """A window session whose decisions and answers are the ground truth (the windows' labels)."""
    session = model.stream_session(processor, memory="window", window_turns=W, evict_turns=S)

    def decide(turn, logits):
        ids = processor.encode_assistant(responses.get(turn.index))
        turn.assistant_ids, session.pending_ids = ids, list(ids)
        decision = "silence" if turn.index not in responses else "response"
        return StreamEvent(float(turn.index + 1), turn.index, decision, responses.get(turn.index, ""), None)
        yield  # a generator, like the session's own step

    session._decide_and_answer = decide
    return session


def context_ids(session) -> list[int]:
    """The ids the session holds in its context: system prompt, then every kept turn in order."""
    image = session.processor.image_token_id
    ids = list(session.system_ids)
    for t in session.turns:
        ids += t.head_ids + [image] * t.num_image_tokens + t.tail_ids + t.assistant_ids
    return ids


@pytest.mark.parametrize("task, index", CASES)
def test_each_window_is_the_engines_context_at_the_same_frame(tiny, task, index):
    """Token ids, kept turns and decision logits of every window equal the engine's at every frame it labels."""
    model, processor = tiny.model, tiny.processor
    record, frames = synth_case(task, index)
    stats = Counter()
    windows = window_records(record, W, S, stats)
    assert len(windows) >= 3 and all("window" in w for w in windows)
    question = record["questions"][0]
    responses = {r["turn"]: r["text"] for r in record["responses"]}
    collator = StreamingSFTCollator(processor)
    by_turn = {}  # frame k -> the window that labels it
    for w in windows:
        starts = w["window"]["label_from"]
        end = max(w["window"]["turns"]) + 1
        by_turn.update({k: w for k in range(starts, end)})
    encoded = {w["id"]: collator.encode(w, frames) for w in windows}
    session = teacher_forced_session(model, processor, responses)
    decision_logits, full = {}, {}
    with torch.no_grad():
        for w in windows:
            enc = encoded[w["id"]]
            out = model(input_ids=enc["input_ids"][None], pixel_values=enc["pixel_values"],
                        image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=enc["mm_token_type_ids"][None],
                        use_cache=False)
            full[w["id"]] = out.logits[0]
        for k, frame in enumerate(frames):
            if k == question["turn"]:
                session.ask(question["text"])
            session.step(frame)
            ids = context_ids(session)
            assert session.context_tokens + len(session.pending_ids) == len(ids)  # the cache holds these turns
            if k not in by_turn:  # before the first window that supervises anything (a late question)
                assert k < question["turn"]
                continue
            w = by_turn[k]
            window_ids = encoded[w["id"]]["input_ids"].tolist()
            assert [t.index for t in session.turns] == [t for t in w["window"]["turns"] if t <= k]
            assert window_ids[: len(ids)] == ids, (w["id"], k)
            if k == max(w["window"]["turns"]):
                assert window_ids == ids  # the whole window is the context at its last frame
            if k >= question["turn"]:
                decision_logits[k] = (w["id"], len(ids), session.last_decision_logits)
    # Training's forward over a window scores each supervised decision with the logits the engine decided with.
    checked = 0
    for w in windows:
        enc = encoded[w["id"]]
        labelled = [k for k in w["window"]["turns"] if k >= max(w["window"]["label_from"], question["turn"])]
        assert len(labelled) == len(enc["decision_positions"])
        for k, pos in zip(labelled, enc["decision_positions"].tolist()):
            wid, _, engine = decision_logits[k]
            assert wid == w["id"]
            torch.testing.assert_close(full[w["id"]][pos - 1], engine, rtol=0, atol=1e-4)
            checked += 1
    assert checked == record["num_turns"] - question["turn"]  # every decision from the question on, once


def test_windows_label_every_decision_once_and_drop_windows_before_the_question():
    record, _ = synth_case("OU", 2)  # 20 turns, question on turn 13
    stats = Counter()
    windows = window_records(record, W, S, stats)
    q = record["questions"][0]["turn"]
    labelled = []
    for w in windows:
        turns, start = w["window"]["turns"], w["window"]["label_from"]
        assert q in turns and turns == sorted(set(turns))
        unpinned = [t for t in turns if t != q]
        assert len(unpinned) <= W
        labelled += [t for t in turns if t >= max(start, q)]
        assert {r["turn"] for r in w["responses"]} <= set(turns)
    assert labelled == list(range(q, record["num_turns"]))
    assert stats["windows_before_question"] >= 1 and stats["windows"] == len(windows)
    assert [w["id"] for w in windows] == [f"OU-2#w{j}" for j in range(stats["windows_before_question"],
                                                                         stats["windows_before_question"] + len(windows))]
    # A stream within the window is left whole (no window field).
    assert window_records(record, record["num_turns"], 1) == [record]


def test_engine_windows_replay_the_slides():
    # 10 turns, window 4, stride 2, turn 1 pinned: slides before turns 5 and 7 and 9.
    assert engine_windows(10, {1}, 4, 2) == [
        ([], 0, 5), ([1, 3, 4], 5, 7), ([1, 5, 6], 7, 9), ([1, 7, 8], 9, 10)]
    assert engine_windows(3, set(), 4, 1) == [([], 0, 3)]
    with pytest.raises(ValueError, match="window stride"):
        engine_windows(10, set(), 4, 5)


def test_window_labels_only_the_turns_after_the_slide(tiny):
    processor = tiny.processor
    record, frames = synth_case("EU", 2)
    window = window_records(record, W, S)[2]
    turns, start = window["window"]["turns"], window["window"]["label_from"]
    enc = StreamingSFTCollator(processor).encode(window, frames)
    ids, labels = enc["input_ids"], enc["labels"]
    decisions = (ids == processor.silence_token_id) | (ids == processor.response_token_id)
    system = len(processor.encode_system()["input_ids"])
    decisions[:system] = False  # the system prompt names the decision tokens too
    assert int(decisions.sum()) == len(turns)  # every turn of the window has its assistant turn in context
    assert int((labels[decisions] != -100).sum()) == sum(t >= start for t in turns)
    answers = {r["turn"]: r["text"] for r in window["responses"]}
    expected = "".join(f"</Response>{answers[k]}<|im_end|>" if k in answers else "</Silence>"
                       for k in turns if k >= start)
    assert processor.tokenizer.decode(labels[labels != -100], skip_special_tokens=False) == expected
    assert enc["image_grid_thw"].shape[0] == len(turns)
    text = processor.tokenizer.decode(ids, skip_special_tokens=False)
    assert f"<{turns[0]}s-{turns[0] + 1}s>" in text and f"<{turns[-1]}s-{turns[-1] + 1}s>" in text
    with pytest.raises(RecordError, match="window"):
        StreamingSFTCollator(processor).encode({**window, "window": {"turns": 3}}, frames)


def test_build_writes_windows_and_records_them_in_the_manifest(tmp_path, capsys):
    from streampro.cli import main

    record, _ = synth_case("EU", 2)
    raw = tmp_path / "raw.jsonl"
    clip = make_clip("EU", 2, 7, size=56)
    sample = {"id": "EU-2", "task": "EU", "source": "streampro-synth", "video": "v.mp4", "duration": float(clip.duration),
              "question": clip.question, "question_time": clip.question_time, "answers": clip.answers, "system": None}
    raw.write_text(json.dumps(sample) + "\n")
    out = tmp_path / "sft"
    assert main(["data", "build", "sft", str(raw), "--out", str(out), "--window-turns", str(W), "--window-stride",
                 str(S), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert rows == window_records(record, W, S) and f"windows: {len(rows)}" in capsys.readouterr().out
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings == {"kind": "sft", "fps": 1.0, "window_turns": W, "window_stride": S}
    import pyarrow.parquet as pq

    shard = pq.read_table(out / "train-00000-of-00001.parquet").to_pylist()
    assert [r["window"] for r in shard] == [r["window"] for r in rows]
    # The default is the engine's window: this 19-turn clip stays whole.
    assert main(["data", "build", "sft", str(raw), "--out", str(tmp_path / "whole"), "--no-progress"]) == 0
    assert [json.loads(line) for line in (tmp_path / "whole" / "train.jsonl").read_text().splitlines()] == [record]
    # Windows apply to sft only; the stride lies within the window.
    assert main(["data", "build", "rl", str(raw), "--out", str(tmp_path / "rl"), "--window-turns", "8"]) == 2
    assert "apply to `data build sft`" in capsys.readouterr().err
    with pytest.raises(ValueError, match="window stride"):
        build("sft", raw, tmp_path / "other", window_turns=W, window_stride=W + 1, progress=False)
