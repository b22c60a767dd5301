"""SFT / RL / bench builders: decision-label placement per task on hand-checked samples, rules, cards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from streampro.dataset_scripts.builders import build, build_sft_record
from streampro.dataset_scripts.converters import convert
from streampro.dataset_scripts.schema import RawFormatError, read_raw, to_reference, validate_raw

ANN = Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"


def _raw(task, answers, duration=20.0, question_time=0.0, **kw):
    return validate_raw({"id": f"x-{task}", "task": task, "video": "v.mp4", "duration": duration,
                         "question": "q?", "question_time": question_time, "answers": answers, **kw})


def _turns(record):
    return [(r["turn"], r["time"], r["text"]) for r in record["responses"]]


@pytest.mark.parametrize(
    ("task", "answers", "expected"),
    [
        # EU/TP: at each span end; 4.2 s is first shown on the turn ending at 5 s (turn 4).
        ("EU", [{"text": "a", "start": 1.0, "end": 4.2}, {"text": "b", "start": 5.0, "end": 9.0}],
         [(4, 5.0, "a"), (8, 9.0, "b")]),
        ("TP", [{"text": "next", "start": 10.0, "end": 13.5}], [(13, 14.0, "next")]),
        # OU at the transition, AA at onset, GP at the previous step's completion, RF at the warning time.
        ("OU", [{"text": "turned blue", "time": 7.0}], [(6, 7.0, "turned blue")]),
        ("AA", [{"text": "fire", "time": 0.4}], [(0, 1.0, "fire")]),
        ("GP", [{"text": "next: b", "time": 6.0}, {"text": "next: c", "time": 11.0}],
         [(5, 6.0, "next: b"), (10, 11.0, "next: c")]),
        ("RF", [{"text": "stop", "time": 12.0}], [(11, 12.0, "stop")]),
        # TG: at the segment end, the text is the canonical segment whatever the raw text says.
        ("TG", [{"text": "whatever", "start": 3.25, "end": 8.0}], [(7, 8.0, "3.2s - 8s")]),
    ],
)
def test_label_placement_per_task(task, answers, expected):
    record = build_sft_record(_raw(task, answers), fps=1.0)
    assert _turns(record) == expected
    assert record["num_turns"] == 20 and record["questions"] == [{"turn": 0, "time": 1.0, "text": "q?"}]


def test_record_fields_and_fps_two():
    record = build_sft_record(_raw("OU", [{"text": "x", "time": 3.2}], duration=10.0, question_time=1.0,
                                   system="custom prompt"), fps=2.0)
    assert set(record) == {"id", "task", "video", "duration", "fps", "num_turns", "system", "questions", "responses",
                           "standby"}
    assert record["num_turns"] == 20 and record["fps"] == 2.0 and record["system"] == "custom prompt"
    assert record["questions"][0]["turn"] == 1  # 1.0 s at 2 fps is the turn ending at 1.0 s
    assert _turns(record) == [(6, 3.5, "x")]


def test_same_turn_responses_are_merged_and_counted():
    stats = Counter()
    record = build_sft_record(_raw("OU", [{"text": "b", "time": 3.7}, {"text": "a", "time": 3.2},
                                          {"text": "c", "time": 5.0}]), stats=stats)
    assert _turns(record) == [(3, 4.0, "a; b"), (4, 5.0, "c")]
    assert stats["merged_same_turn"] == 1 and stats["response_turns"] == 2 and stats["silence_turns"] == 18


def test_response_before_question_is_dropped_and_counted():
    stats = Counter()
    raw = _raw("EU", [{"text": "early", "start": 1.0, "end": 3.0}, {"text": "late", "start": 9.0, "end": 12.0}],
               question_time=6.0)
    record = build_sft_record(raw, stats=stats)
    assert _turns(record) == [(11, 12.0, "late")] and stats["response_before_question"] == 1
    assert stats["silence_turns_from_question"] == 20 - 5 - 1
    only_early = _raw("OU", [{"text": "x", "time": 2.0}], question_time=6.0)
    assert build_sft_record(only_early, stats=stats) is None and stats["no_response_left"] == 1


def test_time_after_last_frame_goes_on_last_turn():
    stats = Counter()
    # Charades-STA line 1: the segment ends at 30.4 s, the last frame (turn 29) is at 30 s.
    record = build_sft_record(_raw("TG", [{"text": "s", "start": 24.3, "end": 30.4}], duration=30.4), stats=stats)
    assert record["num_turns"] == 30 and _turns(record) == [(29, 30.0, "24.3s - 30.4s")]
    assert stats["clamped_to_last_turn"] == 1


def test_hand_checked_real_samples(tmp_path):
    convert("activitynet-captions", ANN / "activitynet_captions_val_1.json", tmp_path / "a.jsonl", progress=False)
    convert("dota", ANN / "dota_metadata_val.json", tmp_path / "d.jsonl", progress=False)
    convert("ovo-bench", ANN / "ovo_bench_new.json", tmp_path / "o.jsonl", progress=False)
    raw = {s["id"]: s for f in ("a", "d", "o") for s in read_raw(tmp_path / f"{f}.jsonl")}
    anet = build_sft_record(raw["activitynet_captions_val_1/EU:v_bXdq2zI1Ms0"])
    assert anet["num_turns"] == 73 and [r["turn"] for r in anet["responses"]] == [10, 39, 72]
    dota = build_sft_record(raw["dota:0RJPQ_97dcs_000387"])  # onset 4.1 s, warning 1.1 s
    assert dota["num_turns"] == 12 and _turns(dota)[0][:2] == (1, 2.0)
    rec = build_sft_record(raw["ovo-bench:1559"])
    assert _turns(rec) == [(4, 5.0, "count: 1"), (12, 13.0, "count: 2"), (17, 18.0, "count: 3")]
    crr = build_sft_record(raw["ovo-bench:1468"])
    assert crr["questions"][0]["turn"] == 296 and [r["turn"] for r in crr["responses"]] == [307]


def test_reference_view_matches_the_metric_format():
    metrics_schema = pytest.importorskip("streampro.metrics.schema")
    for task, answers in [("EU", [{"text": "a", "start": 1.0, "end": 4.0}]), ("TG", [{"text": "1s - 4s", "start": 1.0, "end": 4.0}]),
                          ("RF", [{"text": "stop", "time": 5.0}])]:
        ref = to_reference(_raw(task, answers, meta={"x": 1}, source="s"))
        assert list(ref) == ["id", "task", "question", "question_time", "video", "duration", "answers"]
        metrics_schema.validate_reference(ref)


def test_build_writes_loadable_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    raw = tmp_path / "raw.jsonl"
    convert("ovo-bench", ANN / "ovo_bench_new.json", raw, progress=False)
    out = {}
    for kind in ("sft", "rl", "bench"):
        stats = build(kind, raw, tmp_path / kind, split="test", progress=False)
        assert stats["records"] > 0
        out[kind] = datasets.load_dataset(str(tmp_path / kind), split="test", cache_dir=str(tmp_path / "cache"))
    assert len(out["bench"]) == len(out["rl"]) == 172
    assert len(out["sft"]) == build("sft", raw, tmp_path / "sft", split="test")["records"]
    assert out["rl"][0]["rubric"] is None and out["rl"][0]["question"]
    first = json.loads((tmp_path / "sft" / "test.jsonl").open().readline())
    assert out["sft"][0]["responses"] == first["responses"]
    card = (tmp_path / "sft" / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: default" in card and "path: test-00000-of-00001.parquet" in card
    # A second split in the same folder is added to the card.
    build("bench", raw, tmp_path / "bench", split="validation")
    both = datasets.load_dataset(str(tmp_path / "bench"), cache_dir=str(tmp_path / "cache"))
    assert set(both) == {"test", "validation"}


def test_raw_validation_names_file_line_and_field(tmp_path):
    good = _raw("OU", [{"text": "x", "time": 3.0}])
    bad = dict(good, id="y")
    del bad["question_time"]
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RawFormatError, match=r"raw\.jsonl:2: missing field\(s\) \['question_time'\]"):
        read_raw(path)
    cases = [
        (dict(good, task="XX"), "field 'task'"),
        (dict(good, answers=[{"text": "x", "start": 1.0, "end": 2.0}]), "answers\\[0\\]' needs 'time'"),
        (dict(good, task="EU", answers=[{"text": "x", "start": 3.0, "end": 3.0}]), "end 3.0 <= start"),
        (dict(good, answers=[{"text": "x", "time": 25.0}]), "after the video end"),
        (dict(good, duration=float("nan")), "field 'duration'"),
        (dict(good, extra=1), "unknown field"),
    ]
    for sample, message in cases:
        path.write_text(json.dumps(sample) + "\n")
        with pytest.raises(RawFormatError, match=rf"raw\.jsonl:1: .*{message}"):
            read_raw(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(RawFormatError, match=r"raw\.jsonl:2: field 'id' .* repeats line 1"):
        read_raw(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"raw\.jsonl:1: invalid JSON \(.* at column 2\)"):
        read_raw(path)
    with pytest.raises(ValueError, match="unknown build kind"):
        build("nope", path, tmp_path / "o")


def test_cli_build_prints_summary(tmp_path, capsys):
    import argparse

    from streampro.cli import data as cli

    raw = tmp_path / "raw.jsonl"
    convert("dota", ANN / "dota_metadata_val.json", raw, progress=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["build", "sft", str(raw), "--out", str(tmp_path / "sft"), "--split", "validation",
                              "--no-progress"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "records: 1402" in out and "response_turns: 1402" in out
    assert (tmp_path / "sft" / "validation.jsonl").is_file() and (tmp_path / "sft" / "README.md").is_file()
