"""Standby labels of SFT records (Streamo's third state, docs/data.md §3): hand-checked turns.

Turn k shows the frame at ``(k + 1) / fps``; it is Standby when an answer's span [start, t*] has
``start <= turn_time(k) < t*``, k is at or after the question's turn and k is no response turn.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from streampro.dataset_scripts.builders import build, build_sft_record, window_records
from streampro.dataset_scripts.schema import RawFormatError, to_reference, validate_raw


def _raw(task, answers, duration=20.0, question_time=0.0):
    return validate_raw({"id": f"x-{task}", "task": task, "video": "v.mp4", "duration": duration,
                         "question": "q?", "question_time": question_time, "answers": answers})


def _labels(record):
    return [r["turn"] for r in record["responses"]], record["standby"]


@pytest.mark.parametrize(
    ("task", "answers", "question_time", "responses", "standby"),
    [
        # EU span [2, 5]: turns ending at 2, 3, 4 s show the event under way; 5 s is the response (turn 4).
        ("EU", [{"text": "a", "start": 2.0, "end": 5.0}], 0.0, [4], [1, 2, 3]),
        # TG [3.25, 8]: the turn ending at 3 s is before the segment; the one ending at 4 s is inside it.
        ("TG", [{"text": "t", "start": 3.25, "end": 8.0}], 0.0, [7], [3, 4, 5, 6]),
        # A timestamp answer without start has no Standby turn (two-state labels exactly).
        ("OU", [{"text": "blue", "time": 7.0}], 0.0, [6], []),
        # ... with start 4.5: the turns ending at 5 and 6 s.
        ("OU", [{"text": "blue", "time": 7.0, "start": 4.5}], 0.0, [6], [4, 5]),
        # start == time: nothing between them.
        ("AA", [{"text": "fire", "time": 5.0, "start": 5.0}], 0.0, [4], []),
        # The question (3.5 s, turn 3) comes after the span's start (1 s): Standby only from the question on.
        ("EU", [{"text": "a", "start": 1.0, "end": 6.0}], 3.5, [5], [3, 4]),
        # Two answers: the second event is under way while the first is answered (turn 4 stays a response).
        ("EU", [{"text": "a", "start": 1.0, "end": 4.2}, {"text": "b", "start": 3.0, "end": 9.0}], 0.0,
         [4, 8], [0, 1, 2, 3, 5, 6, 7]),
    ],
)
def test_standby_turns_hand_checked(task, answers, question_time, responses, standby):
    record = build_sft_record(_raw(task, answers, question_time=question_time), fps=1.0)
    assert _labels(record) == (responses, standby)


def test_standby_at_two_fps_and_clamped_last_turn():
    # 2 fps: turn k ends at (k + 1) / 2 s; question at 1 s (turn 1), span [1, 3.2], t* on turn 6 (3.5 s).
    record = build_sft_record(_raw("GP", [{"text": "next", "time": 3.2, "start": 1.0}], duration=10.0,
                                   question_time=1.0), fps=2.0)
    assert _labels(record) == ([6], [1, 2, 3, 4, 5])
    # TG ending at the video's end (30.4 s, 30 turns): t* goes on the last turn (29), which stays a response.
    stats = Counter()
    record = build_sft_record(_raw("TG", [{"text": "s", "start": 24.3, "end": 30.4}], duration=30.4), stats=stats)
    assert _labels(record) == ([29], [24, 25, 26, 27, 28])
    assert stats["standby_turns"] == 5 and stats["silence_turns"] == 29  # Standby turns are counted among the silent


def test_start_is_optional_checked_and_not_in_the_reference():
    sample = _raw("RF", [{"text": "stop", "time": 12.0, "start": 9.0}])
    assert to_reference(sample)["answers"] == [{"text": "stop", "time": 12.0}]
    for start, message in [(13.0, r"answers\[0\]\.start' 13.0 must be in \[0, time = 12.0\]"),
                           (-1.0, r"answers\[0\]\.start' must be a finite number >= 0"),
                           ("9", r"answers\[0\]\.start' must be a number")]:
        with pytest.raises(RawFormatError, match=message):
            _raw("RF", [{"text": "stop", "time": 12.0, "start": start}])
    with pytest.raises(RawFormatError, match="needs 'time' \\(an optional 'start', no 'end'\\)"):
        _raw("OU", [{"text": "x", "time": 3.0, "start": 1.0, "end": 3.0}])


def test_windows_keep_their_standby_turns():
    # EU span [2, 12] in a 20-turn stream: response on turn 11, Standby 1-10. Windows of 8 turns sliding
    # 2 (question turn 0 pinned): w0 = turns 0-8; w1 = 0, 3-8 kept + 9-10; w2 = 0, 5-10 kept + 11-12; ...
    record = build_sft_record(_raw("EU", [{"text": "a", "start": 2.0, "end": 12.0}]))
    assert _labels(record) == ([11], list(range(1, 11)))
    windows = window_records(record, 8, 2)
    assert [w["window"] for w in windows[:3]] == [
        {"turns": list(range(9)), "label_from": 0},
        {"turns": [0, 3, 4, 5, 6, 7, 8, 9, 10], "label_from": 9},
        {"turns": [0, 5, 6, 7, 8, 9, 10, 11, 12], "label_from": 11},
    ]
    assert [w["standby"] for w in windows[:3]] == [list(range(1, 9)), [3, 4, 5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10]]
    # Every Standby turn is supervised in exactly one window (at or after its label_from).
    supervised = sorted(k for w in windows for k in w["standby"] if k >= w["window"]["label_from"])
    assert supervised == record["standby"]


def test_built_folder_carries_standby_in_jsonl_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps(_raw("EU", [{"text": "a", "start": 2.0, "end": 5.0}])) + "\n"
                   + json.dumps(dict(_raw("OU", [{"text": "b", "time": 7.0}]), id="y")) + "\n")
    stats = build("sft", raw, tmp_path / "sft", split="train", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "sft" / "train.jsonl").read_text().splitlines()]
    assert [r["standby"] for r in rows] == [[1, 2, 3], []] and stats["standby_turns"] == 3
    table = pq.read_table(tmp_path / "sft" / "train-00000-of-00001.parquet")
    assert table.column("standby").to_pylist() == [[1, 2, 3], []]
