"""``data synth --silence-factor K``: the same events and answers in longer streams, and ``data stats``.

K = 1 writes today's files byte for byte; K > 1 keeps every question, question time and answer text,
moves every later time by the seconds held before it, multiplies the silent turns from the question on
by about K and leaves the response turns as they are (docs/data.md §5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streampro.dataset_scripts import load_record_frames
from streampro.dataset_scripts.synth import TASKS, _busy_spans, generate, make_clip
from streampro.modeling_streampro.time_streampro import turn_index_for_time

from streampro.cli import main
from streampro.jsonl import read_jsonl

N, SEED, SIZE, K = 21, 5, 32, 3.0  # one train / validation / test clip per task; 32-px frames: seconds to build


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    generate(out, n=N, seed=SEED, size=SIZE, progress=False, control=3)
    return out


@pytest.fixture(scope="module")
def stretched(tmp_path_factory):
    out = tmp_path_factory.mktemp("stretched")
    generate(out, n=N, seed=SEED, size=SIZE, progress=False, control=3, silence_factor=K)
    return out


def test_factor_one_writes_todays_files_byte_for_byte(plain, tmp_path):
    generate(tmp_path / "k1", n=N, seed=SEED, size=SIZE, progress=False, control=3, silence_factor=1.0)
    assert _files(tmp_path / "k1") == _files(plain)  # videos, JSONL, Parquet, card and manifest


def _silent_from_question(record: dict) -> int:
    return record["num_turns"] - record["questions"][0]["turn"] - len(record["responses"])


def test_same_questions_and_answers_times_shifted_by_the_held_seconds(plain, stretched):
    for split in ("train", "validation", "test", "control_train", "control_test"):
        before = {s["id"]: s for s in read_jsonl(plain / "raw" / f"{split}.jsonl")}
        after = {s["id"]: s for s in read_jsonl(stretched / "raw" / f"{split}.jsonl")}
        assert list(after) == list(before) and before
        for sid, new in after.items():
            old, holds = before[sid], new["meta"]["holds"]
            assert (new["question"], new["question_time"], new["task"]) == (old["question"], old["question_time"],
                                                                            old["task"])
            assert [a.get("text") for a in new["answers"]] == [a.get("text") for a in old["answers"]]
            assert new["duration"] == old["duration"] + sum(h for _, h in holds) > old["duration"]
            assert all(p >= old["question_time"] for p, _ in holds)  # silence after the question: supervised

            def shift(t):
                return t + sum(h for p, h in holds if p < t)

            for a, b in zip(old["answers"], new["answers"]):
                assert {k: shift(v) for k, v in a.items() if k in ("time", "start", "end")} == \
                       {k: v for k, v in b.items() if k in ("time", "start", "end")}, sid
            # No stretch inside a labelled motion: spans keep their length, RF its constant-speed walk.
            clip = make_clip(old["task"] if "CC" not in sid else "CC", old["meta"]["index"], SEED, SIZE)
            for s, e in _busy_spans(clip):
                assert not any(s <= p < e for p, _ in holds), sid
            if old["task"] == "RF":
                m, n = old["meta"], new["meta"]
                assert n["impact_time"] - n["start_time"] == m["impact_time"] - m["start_time"]
                assert n["impact_time"] - new["answers"][0]["time"] == 3


def test_silent_turns_scale_by_the_factor_and_responses_stay(plain, stretched):
    totals = {"plain": 0, "stretched": 0}
    for split in ("train", "validation", "test"):
        before = {r["id"]: r for r in read_jsonl(plain / "sft" / f"{split}.jsonl")}
        for new in read_jsonl(stretched / "sft" / f"{split}.jsonl"):
            old = before[new["id"]]
            assert [r["text"] for r in new["responses"]] == [r["text"] for r in old["responses"]]
            assert new["questions"] == old["questions"]
            s0, s1 = _silent_from_question(old), _silent_from_question(new)
            assert abs(s1 - K * s0) <= 0.5, new["id"]  # round((K - 1) * S) more silent turns
            totals["plain"] += s0
            totals["stretched"] += s1
    assert totals["stretched"] == pytest.approx(K * totals["plain"], rel=0.02)
    card = (stretched / "README.md").read_text()
    assert f"--silence-factor {K:g}" in card and "## Longer streams" in card


def test_stretched_frames_are_the_clip_held_at_the_chosen_seconds(stretched):
    """Decoded frames: turn k shows the original scene at the original time of k + 1; the response turns
    show what the unstretched clip shows on its response turns."""
    records = {r["id"]: r for r in read_jsonl(stretched / "sft" / "train.jsonl")}
    for sample in read_jsonl(stretched / "raw" / "train.jsonl"):
        task, meta = sample["task"], sample["meta"]
        original = make_clip(task, meta["index"], SEED, SIZE)
        clip = make_clip(task, meta["index"], SEED, SIZE, silence_factor=K)
        assert clip.meta["holds"] == meta["holds"] and clip.answers == sample["answers"]
        frames = load_record_frames(records[sample["id"]], stretched)
        for k, frame in enumerate(frames):
            # Closest to the scene of its own time, not of the turn before or after (32-px H.264: ~7 levels off).
            diff = [np.abs(np.asarray(frame, np.int32) - clip.render(k + t).astype(np.int32)).mean()
                    for t in (0.0, 1.0, 2.0)]
            assert diff[1] < 10 and diff[1] <= min(diff), (sample["id"], k, diff)
        for old, new in zip(original.answers, clip.answers):
            t_old = old.get("time", old.get("end"))
            t_new = new.get("time", new.get("end"))
            assert np.array_equal(original.render(float(t_old)), clip.render(float(t_new)))
            assert np.array_equal(original.render(float(t_old) - 1), clip.render(float(t_new) - 1))
        p, h = meta["holds"][0]
        shown = p + sum(hh for pp, hh in meta["holds"] if pp < p)  # the held second on the new timeline
        for t in range(shown, shown + h + 1):
            assert np.array_equal(clip.render(float(t)), original.render(float(p)))
        assert turn_index_for_time(sample["answers"][-1].get("time", sample["answers"][-1].get("end"))) \
            < records[sample["id"]]["num_turns"]


def test_bad_factor_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="--silence-factor"):
        generate(tmp_path / "bad", n=7, silence_factor=0.5)
    assert main(["data", "synth", "--out", str(tmp_path / "bad2"), "--n", "7", "--silence-factor", "60"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streampro data synth: error: --silence-factor must be in [1, 50]")
    assert not (tmp_path / "bad2").exists()


def test_stats_prints_the_ratio_per_task(plain, stretched, capsys):
    assert main(["data", "stats", str(plain / "sft" / "train.jsonl"), str(stretched / "sft" / "train.jsonl")]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(Path(cells[0]).parts[-3], cells[1])] = cells
    assert {task for _, task in rows} == {*TASKS, "all"}
    old, new = rows[(plain.name, "all")], rows[(stretched.name, "all")]
    assert old[4] == new[4]  # the same response turns
    records = read_jsonl(plain / "sft" / "train.jsonl")
    assert int(old[6]) == sum(_silent_from_question(r) for r in records)
    assert float(new[7]) == pytest.approx(K * float(old[7]), rel=0.05)  # silent per response, from the question
    bench = plain / "bench" / "test.jsonl"
    assert main(["data", "stats", str(bench)]) == 2
    err = capsys.readouterr().err
    assert "not an SFT record" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "stats", str(plain / "nowhere.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_stats_of_one_record():
    from streampro.dataset_scripts.builders import turn_balance

    record = {"task": "OU", "num_turns": 10, "questions": [{"turn": 2}], "responses": [{"turn": 5}]}
    assert turn_balance([record]) == {"OU": {"records": 1, "turns": 10, "response_turns": 1, "silence_turns": 9,
                                             "silence_turns_from_question": 7}}
    assert json.dumps(turn_balance([record, {**record, "task": "AA"}])["all"]) == json.dumps(
        {"records": 2, "turns": 20, "response_turns": 2, "silence_turns": 18, "silence_turns_from_question": 14})
