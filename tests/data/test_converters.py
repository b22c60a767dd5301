"""Converters on the real shared annotation files: counts, hand-checked samples, degenerate rules, bad input, resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from streampro.dataset_scripts.converters import MissingVideoError, convert
from streampro.dataset_scripts.schema import RawFormatError, read_raw, to_reference

ANN = Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"


def _convert(tmp_path, fmt, name, **kw):
    out = tmp_path / f"{fmt}-{kw.get('task')}.jsonl"
    stats = convert(fmt, ANN / name, out, progress=False, **kw)
    return stats, {s["id"]: s for s in read_raw(out)}


def test_charades_every_query_is_one_tg_sample(tmp_path):
    stats, samples = _convert(tmp_path, "charades-sta", "charades_sta_test.txt")
    n_lines = sum(1 for line in (ANN / "charades_sta_test.txt").open() if line.strip())
    assert n_lines == 3720
    assert stats["written"] == len(samples) == n_lines
    assert stats["duration_estimated"] == n_lines  # the file has no durations and no video was probed
    s = samples["charades-sta:charades_sta_test:L1"]
    assert s["task"] == "TG" and s["video"] == "3MSZA.mp4" and s["question_time"] == 0.0
    assert s["answers"] == [{"text": "24.3s - 30.4s", "start": 24.3, "end": 30.4}]
    assert "person turn a light on" in s["question"]
    # AMT7R's duration lower bound is the latest end among all its queries.
    amt = [x for x in samples.values() if x["video"] == "AMT7R.mp4"]
    assert {x["duration"] for x in amt} == {max(x["answers"][0]["end"] for x in amt)}
    assert all(x["meta"]["duration_estimated"] for x in amt)


def test_qvhighlights_one_sample_per_query_one_answer_per_window(tmp_path):
    stats, samples = _convert(tmp_path, "qvhighlights", "qvhighlights_val.jsonl")
    assert stats["written"] == 1550
    assert sum(len(s["answers"]) for s in samples.values()) == 2803
    s = samples["qvhighlights:2579"]
    assert s["duration"] == 150 and s["answers"] == [{"text": "82s - 150s", "start": 82.0, "end": 150.0}]


def test_activitynet_eu_clamps_spans_past_the_end(tmp_path):
    stats, samples = _convert(tmp_path, "activitynet-captions", "activitynet_captions_val_1.json", task="EU")
    assert stats["written"] == 4917
    assert stats["clamped_to_duration"] == 134  # counted, not dropped
    s = samples["activitynet_captions_val_1/EU:v_bXdq2zI1Ms0"]
    assert [(a["start"], a["end"]) for a in s["answers"]] == [(0, 10.23), (10.6, 39.84), (38.01, 73.1)]
    assert s["answers"][0]["text"].startswith("A man is seen speaking")
    assert all(a["end"] <= x["duration"] for x in samples.values() for a in x["answers"])


def test_uca_aa_skips_normal_videos_and_alerts_at_onsets(tmp_path):
    stats, samples = _convert(tmp_path, "activitynet-captions", "uca_ucfcrime_test.json", task="AA")
    data = json.loads((ANN / "uca_ucfcrime_test.json").read_text())
    normal = sum(k.startswith("Normal") for k in data)
    assert stats["skipped_normal_video"] == normal == 104
    assert stats["written"] == len(data) - normal
    s = samples["uca_ucfcrime_test/AA:Abuse038_x264"]
    assert [a["time"] for a in s["answers"]] == [0.3, 11.5, 14.5, 17.2, 20.6]  # sorted by t*


def test_youcook2_gp_next_step_after_each_completion(tmp_path):
    stats, samples = _convert(tmp_path, "activitynet-captions", "youcook2_val.json", task="GP")
    assert stats["written"] == 457
    s = samples["youcook2_val/GP:v_xHr8X2Wpmno"]
    assert [a["time"] for a in s["answers"]] == [60, 89, 98, 137, 162]
    assert s["answers"][0]["text"] == "next: combine lemon juice sumac garlic salt and oil in a bowl"


def test_dota_warning_three_seconds_before_onset(tmp_path):
    stats, samples = _convert(tmp_path, "dota", "dota_metadata_val.json")
    assert stats["written"] == 1402
    assert stats["warning_clamped_to_start"] == 462  # onset < 3 s: warned at 0 s, counted
    s = samples["dota:0RJPQ_97dcs_000387"]
    assert s["duration"] == 12.0 and s["meta"]["hazard_onset"] == 4.1
    assert s["answers"][0]["time"] == pytest.approx(1.1)
    assert "turning" not in s["answers"][0]["text"] and "moving ahead or waiting" in s["answers"][0]["text"]
    assert samples["dota:0RJPQ_97dcs_002109"]["answers"][0]["time"] == 0.0


def test_ovo_bench_forward_tasks_mapping(tmp_path):
    stats, samples = _convert(tmp_path, "ovo-bench", "ovo_bench_new.json")
    items = json.loads((ANN / "ovo_bench_new.json").read_text())
    kinds = Counter(x["task"] for x in items)
    # read_raw gives the proactive samples; the other tasks are QA records (tests/data/test_benchmarks.py).
    assert len(samples) == kinds["REC"] + kinds["SSR"] + kinds["CRR"] == 172
    # REC repetitions with start == end are widened to one second (OVO-Bench counts them).
    assert stats["rec_zero_length_widened"] == 11
    rec = samples["ovo-bench:1559"]
    assert rec["task"] == "EU" and rec["duration"] == 20.0  # latest test_info checkpoint
    assert [(a["text"], a["start"], a["end"]) for a in rec["answers"]] == [
        ("count: 1", 0, 5), ("count: 2", 6, 13), ("count: 3", 15, 18)]
    crr = samples["ovo-bench:1468"]
    assert crr["task"] == "OU" and crr["question_time"] == 297 and crr["answers"] == [
        {"text": "She walks past the car.", "time": 308.0}]
    ssr = samples["ovo-bench:1516"]
    assert ssr["answers"][1] == {"text": "put on the hair extensions", "start": 31.0, "end": 49.0}
    assert "put on hair extensions" in ssr["question"]


def test_streamo_format(tmp_path):
    ann = tmp_path / "streamo.json"
    ann.write_text(json.dumps([
        {"video_name": "a.mp4", "video_path": "clips/a.mp4", "task_type": "QA", "source": "x",
         "question": [{"content": "What does the dog do?", "time": "4"}, {"content": "And then?", "time": "9"}],
         "response": [{"content": "It jumps.", "st_time": 5.0, "end_time": 8.0, "time": ""},
                      {"content": "It sits.", "time": "12"}]},
    ]))
    stats = convert("streamo", ann, tmp_path / "o.jsonl", task="EU", progress=False)
    (s,) = read_raw(tmp_path / "o.jsonl")
    assert stats["extra_question_ignored"] == 1 and stats["duration_estimated"] == 1
    assert s["question_time"] == 4.0 and s["video"] == "clips/a.mp4" and s["duration"] == 12.0
    assert s["answers"] == [{"text": "It jumps.", "start": 5.0, "end": 8.0},
                            {"text": "It sits.", "start": 11.0, "end": 12.0}]
    convert("streamo", ann, tmp_path / "ou.jsonl", task="OU", progress=False)
    # A timestamp task keeps Streamo's span start (Standby labels); the instant answer has none.
    assert read_raw(tmp_path / "ou.jsonl")[0]["answers"] == [{"text": "It jumps.", "time": 8.0, "start": 5.0},
                                                            {"text": "It sits.", "time": 12.0}]
    assert to_reference(read_raw(tmp_path / "ou.jsonl")[0])["answers"][0] == {"text": "It jumps.", "time": 8.0}


def test_streamo_reversed_span_keeps_no_start(tmp_path):
    ann = tmp_path / "streamo.json"
    ann.write_text(json.dumps([
        {"video_path": "a.mp4", "question": [{"content": "Tell me when it falls.", "time": "0"}],
         "response": [{"content": "It fell.", "st_time": "9", "end_time": "6"}]},
    ]))
    stats = convert("streamo", ann, tmp_path / "o.jsonl", task="AA", progress=False)
    assert stats["streamo_span_start_dropped"] == 1
    assert read_raw(tmp_path / "o.jsonl")[0]["answers"] == [{"text": "It fell.", "time": 6.0}]


def test_proactivevideoqa_format(tmp_path):
    ann = tmp_path / "anno.json"
    ann.write_text(json.dumps([
        {"video": "v1.mp4", "question_id": "q7", "duration": 40.0,
         "conversation": [{"role": "user", "content": "Tell me when the cat eats.", "time": 2.0}],
         "answer": [{"content": "NO REPLY", "related_timespan": [0, 5], "reply_timespan": [0, 5]},
                    {"content": "The cat eats.", "related_timespan": [10.0, 14.0], "reply_timespan": [14.0, 20.0]}]},
    ]))
    stats = convert("proactivevideoqa", ann, tmp_path / "o.jsonl", task="EU", progress=False)
    (s,) = read_raw(tmp_path / "o.jsonl")
    assert stats["no_reply_answer_skipped"] == 1
    assert s["id"] == "proactivevideoqa:anno:q7" and s["question_time"] == 2.0 and s["duration"] == 40.0
    assert s["answers"] == [{"text": "The cat eats.", "start": 10.0, "end": 14.0}]
    convert("proactivevideoqa", ann, tmp_path / "aa.jsonl", task="AA", progress=False)
    assert read_raw(tmp_path / "aa.jsonl")[0]["answers"] == [{"text": "The cat eats.", "time": 14.0}]


def test_degenerate_rows_are_counted(tmp_path):
    ann = tmp_path / "anet.json"
    ann.write_text(json.dumps({
        "v1": {"duration": 20.0, "timestamps": [[2, 2], [5, 3], [4, 8], [4, 8], [19, 25], [21, 22]],
               "sentences": ["zero", "reversed", "ok", "ok", "clamped", "after end"]},
        "v2": {"duration": 10.0, "timestamps": [[3, 3]], "sentences": ["only zero"]},
    }))
    stats = convert("activitynet-captions", ann, tmp_path / "o.jsonl", task="EU", progress=False)
    assert stats["span_zero_length"] == 2 and stats["span_reversed"] == 1
    assert stats["duplicate_answer"] == 1 and stats["clamped_to_duration"] == 1
    assert stats["answer_after_duration"] == 1 and stats["no_answers_left"] == 1
    samples = read_raw(tmp_path / "o.jsonl")
    assert [s["id"] for s in samples] == ["anet/EU:v1"]
    assert samples[0]["answers"] == [{"text": "ok", "start": 4.0, "end": 8.0},
                                     {"text": "clamped", "start": 19.0, "end": 20.0}]


def test_duplicate_lines_are_counted(tmp_path):
    ann = tmp_path / "c.txt"
    ann.write_text("AAA 1 4##a person opens a door.\nAAA 1 4##a person opens a door.\nAAA 2 5##a person sits.\n")
    stats = convert("charades-sta", ann, tmp_path / "o.jsonl", progress=False)
    assert stats["duplicate_sample"] == 1 and stats["written"] == 2
    assert [s["id"] for s in read_raw(tmp_path / "o.jsonl")] == ["charades-sta:c:L1", "charades-sta:c:L3"]


def test_resume_after_interruption_has_no_duplicates(tmp_path):
    out = tmp_path / "c.jsonl"
    convert("charades-sta", ANN / "charades_sta_test.txt", out, progress=False)
    full = out.read_text().splitlines(keepends=True)
    out.write_text("".join(full[:100]) + full[100][:37])  # 100 lines and a half-written one
    stats = convert("charades-sta", ANN / "charades_sta_test.txt", out, progress=False)
    assert stats["already_done"] == 100 and stats["written"] == 3720 - 100
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 3720
    assert out.read_text() == "".join(full)  # same content, same order


def _tiny_video(path: Path, seconds: int = 3) -> None:
    from streampro.video import encode_video

    encode_video(path, [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(seconds * 2 + 1)], fps=2)


def test_video_root_missing_video_and_probed_duration(tmp_path):
    ann = tmp_path / "c.txt"
    ann.write_text("AAA 0.5 2.0##a person opens a door.\nBBB 1 2##a person sits.\n")
    root = tmp_path / "videos"
    root.mkdir()
    _tiny_video(root / "AAA.mp4")
    with pytest.raises(MissingVideoError, match=r"BBB\.mp4.*--allow-missing-videos"):
        convert("charades-sta", ann, tmp_path / "o.jsonl", video_root=root, progress=False)
    stats = convert("charades-sta", ann, tmp_path / "o2.jsonl", video_root=root, allow_missing_videos=True,
                    progress=False)
    assert stats["missing_video"] == 1 and stats["duration_probed"] == 1 and stats["written"] == 2
    a, b = read_raw(tmp_path / "o2.jsonl")
    assert a["video"] == str((root / "AAA.mp4").resolve()) and a["duration"] == pytest.approx(3.5)
    assert b["meta"]["video_missing"] and b["meta"]["duration_estimated"]


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'nope'.*charades-sta"):
        convert("nope", ANN / "charades_sta_test.txt", tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match=r"converts to task\(s\) \[.EU., .AA., .GP.\], not .TG."):
        convert("activitynet-captions", ANN / "youcook2_val.json", tmp_path / "o.jsonl", task="TG")
    bad = tmp_path / "bad.txt"
    bad.write_text("3MSZA 24.3 30.4##person turn a light on.\nthis line is corrupt\n")
    with pytest.raises(RawFormatError, match=r"bad\.txt:2: expected 'VIDEO START END##sentence'"):
        convert("charades-sta", bad, tmp_path / "o.jsonl")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text((ANN / "qvhighlights_val.jsonl").open().readline() + '{"qid": 1, "query": \n')
    # The column is the one where line 2 breaks off (the 20 characters before it are read).
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON \(Expecting value at column 21\)"):
        convert("qvhighlights", bad_jsonl, tmp_path / "o.jsonl")
    missing_field = tmp_path / "mf.jsonl"
    missing_field.write_text('{"qid": 1, "query": "x", "duration": 10, "vid": "v"}\n')
    with pytest.raises(RawFormatError, match=r"mf\.jsonl:1: missing field\(s\) \['relevant_windows'\]"):
        convert("qvhighlights", missing_field, tmp_path / "o.jsonl")
    truncated = tmp_path / "t.json"
    truncated.write_text((ANN / "dota_metadata_val.json").read_text()[:500])
    with pytest.raises(RawFormatError, match=r"t\.json:\d+: not valid JSON"):
        convert("dota", truncated, tmp_path / "o.jsonl")
    with pytest.raises(FileNotFoundError, match="no such annotation file"):
        convert("dota", tmp_path / "absent.json", tmp_path / "o.jsonl")


def test_cli_convert_prints_summary(tmp_path, capsys):
    import argparse

    from streampro.cli import data as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["convert", "dota", str(ANN / "dota_metadata_val.json"), "--out", str(tmp_path / "o.jsonl"),
                              "--no-progress"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "written: 1402" in out and "warning_clamped_to_start: 462" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "not-a-format", "a", "--out", "b"])


def test_fixed_task_formats_refuse_task(tmp_path):
    with pytest.raises(ValueError, match="fixes the task itself"):
        convert("ovo-bench", ANN / "ovo_bench_new.json", tmp_path / "o.jsonl", task="OU")
