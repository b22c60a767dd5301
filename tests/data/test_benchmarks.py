"""Benchmark converters on the real shared files: counts per task, changed items, ids, the oracle invariant."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from streampro.dataset_scripts.converters import convert
from streampro.dataset_scripts.schema import RawFormatError, validate_raw
from streampro.metrics.f1 import compute_streampro_f1
from streampro.metrics.official import score_benchmark
from streampro.metrics.schema import is_qa_record, validate_qa_reference

ANN = Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"
SB = ANN / "streamingbench"
PVQA = ANN / "proactivevideoqa"


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _task(rec):
    return rec["task"] if is_qa_record(rec) else rec["meta"]["benchmark_task"]


def _oracle(rec):
    """Predictions equal to the ground truth: the answer itself, each timed answer at its t*."""
    if is_qa_record(rec):
        return {"id": rec["id"], "answer": rec["answer"]}
    return {"id": rec["id"], "predictions": [{"time": a.get("time", a.get("end")), "text": a["text"]}
                                              for a in rec["answers"]]}


@pytest.fixture(scope="module")
def ovo(tmp_path_factory):
    out = tmp_path_factory.mktemp("ovo") / "ovo.jsonl"
    stats = convert("ovo-bench", ANN / "ovo_bench_new.json", out, progress=False)
    return stats, _lines(out)


@pytest.fixture(scope="module")
def streamingbench(tmp_path_factory):
    out = tmp_path_factory.mktemp("sb") / "sb.jsonl"
    stats = {f: convert("streamingbench", SB / f"questions_{f}.json", out, progress=False)
             for f in ("real", "omni", "sqa", "proactive")}
    return stats, _lines(out)


@pytest.fixture(scope="module")
def pvqa(tmp_path_factory):
    out = tmp_path_factory.mktemp("pvqa") / "pvqa.jsonl"
    stats = {s: convert("proactivevideoqa", PVQA / f"{s}_anno.json", out, progress=False)
             for s in ("WEB", "EGO", "TV", "VAD")}
    return stats, _lines(out)


def test_ovo_bench_counts_per_task(ovo):
    stats, recs = ovo
    kinds = Counter((r.get("kind", "proactive"), _task(r)) for r in recs)
    mc = {"EPM": 297, "ASI": 148, "HLD": 186, "OCR": 149, "ACR": 109, "ATR": 116, "STU": 178, "FPD": 101, "OJR": 184}
    assert {t: kinds[("multiple_choice", t)] for t in mc} == mc  # every backward / real-time question
    # every test_info checkpoint of the forward tasks (repeated checkpoints kept, as OVO-Bench scores them)
    assert {t: kinds[("open", t)] for t in ("REC", "SSR", "CRR")} == {"REC": 698, "SSR": 629, "CRR": 240}
    assert {t: kinds[("proactive", t)] for t in ("REC", "SSR", "CRR")} == {"REC": 82, "SSR": 42, "CRR": 48}
    assert stats["written"] == len(recs) == 3207 and stats["read"] == 3207
    assert stats["rec_zero_length_widened"] == 11 and stats["rec_close_repetitions_merged"] == 64
    assert stats["span_zero_length"] == 1  # one SSR step with start == end
    epm = next(r for r in recs if r["id"] == "ovo-bench:0")
    assert epm["answer"] == "C" and epm["question_time"] == 215 and len(epm["options"]) == 4
    for r in recs:
        (validate_qa_reference if is_qa_record(r) else validate_raw)(r)


def test_ovo_rec_zero_length_repetitions_are_counted(ovo):
    _, recs = ovo
    rec = next(r for r in recs if r["id"] == "ovo-bench:1629")
    counts = [int(a["text"].split()[-1]) for a in rec["answers"]]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == len(rec["answers"])  # no skipped number


def test_ovo_checkpoints_are_ordered_groups(ovo):
    _, recs = ovo
    group = [r for r in recs if r.get("group") == "ovo-bench:1558"]
    assert [(r["question_time"], r["answer"], r["group_index"]) for r in group] == [(17, "1", 0), (19, "1", 1),
                                                                                   (32.0, "1", 2)]
    assert group[0]["question"] == "How many times did they breaking something?"
    crr = [r for r in recs if r.get("group") == "ovo-bench:1468"]
    assert [r["answer"] for r in crr] == ["No", "No", "Yes", "Yes", "Yes"]


def test_streamingbench_counts_per_task(streamingbench):
    stats, recs = streamingbench
    per_task = Counter(_task(r) for r in recs)
    assert per_task == {"OP": 367, "CR": 128, "CS": 316, "ATP": 306, "EU": 161, "TR": 321, "PR": 108, "SU": 246,
                        "ACP": 353, "CT": 193, "ER": 250, "SCU": 249, "SD": 250, "MA": 250, "ACU": 250, "MCU": 250,
                        "SQA": 247, "PO": 250}
    assert stats["real"]["time_stamp_malformed"] == 1  # "00:12450"
    assert stats["omni"]["options_malformed"] == 1 and stats["sqa"]["options_malformed"] == 3
    assert stats["omni"]["option_fragment_joined"] == 8 and stats["omni"]["option_extra_dropped"] == 9
    sqa = [r for r in recs if r.get("group") == "streamingbench:questions_sqa:sample_17_sqa"]
    assert [r["group_index"] for r in sqa] == [0, 1, 2, 3, 4] and sqa[0]["context"] == ""
    assert "Question: Who is preparing to serve the ball now?" in sqa[1]["context"]
    assert "Answer: A;" in sqa[1]["context"]
    po = next(r for r in recs if _task(r) == "PO")
    assert po["task"] == "OU" and po["question_time"] == 20 and po["answers"] == [{"text": "3", "time": 29.0}]


def test_proactivevideoqa_full_format(pvqa):
    stats, recs = pvqa
    assert Counter(_task(r) for r in recs) == {"WEB": 2, "EGO": 2, "TV": 2, "VAD": 2}
    assert stats["TV"]["subtitle_turns_kept"] == 7
    tv = next(r for r in recs if r["id"] == "proactivevideoqa:TV:house_frames=house_s05e24_seg02_clip_25.mp4%Q1")
    assert tv["meta"]["user_turns"][0] == {
        "time": 0.352, "content": "Subtitle: (Amber:)So, this is the story you made up about who you are. It's a nice one."}
    assert [t["time"] for t in tv["meta"]["user_turns"]] == [0.352, 10.195, 22.307, 25.143]
    assert tv["meta"]["pvqa_answers"][0]["reply_timespan"] == [0.0, 7.49]


def test_ego_without_videos_is_an_error_line_not_a_traceback(tmp_path, capsys):
    from streampro.cli import main

    (tmp_path / "videos").mkdir()
    rc = main(["data", "convert", "proactivevideoqa", str(PVQA / "EGO_anno.json"), "--out", str(tmp_path / "o.jsonl"),
               "--video-root", str(tmp_path / "videos"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "--allow-missing-videos" in err


def test_two_files_into_one_output_never_collide(tmp_path):
    out = tmp_path / "all.jsonl"
    assert convert("proactivevideoqa", PVQA / "EGO_anno.json", out, progress=False)["written"] == 2
    assert convert("proactivevideoqa", PVQA / "VAD_anno.json", out, progress=False)["written"] == 2
    assert convert("streamingbench", SB / "questions_proactive.json", out, progress=False)["written"] == 250
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("AAA 1 4##a person opens a door.\n")
    b.write_text("BBB 2 5##a person sits.\n")
    assert convert("charades-sta", a, out, progress=False)["written"] == 1
    assert convert("charades-sta", b, out, progress=False)["written"] == 1
    ids = [r["id"] for r in _lines(out)]
    assert len(ids) == len(set(ids)) == 256
    assert {"charades-sta:a:L1", "charades-sta:b:L1"} <= set(ids)


def test_data_build_refuses_qa_records_by_name():
    rec = {"kind": "multiple_choice", "id": "x"}
    with pytest.raises(RawFormatError, match="real-time QA record"):
        validate_raw(rec, "f.jsonl:3")


@pytest.mark.parametrize("name", ["ovo-bench", "streamingbench", "proactivevideoqa"])
def test_oracle_gets_100_everywhere(name, ovo, streamingbench, pvqa):
    """Predictions equal to the ground truth get 100: official score and StreamPro-F1 (docs/data.md)."""
    recs = {"ovo-bench": ovo, "streamingbench": streamingbench, "proactivevideoqa": pvqa}[name][1]
    report = score_benchmark(name, [_oracle(r) for r in recs], recs, judge="exact")
    if name == "proactivevideoqa":  # PAUC's ground truth: each answer at the start of its reply span
        preds = [{"id": r["id"], "predictions": [{"time": a["reply_timespan"][0], "text": a["text"]}
                                                 for a in r["meta"]["pvqa_answers"]]} for r in recs]
        # PAUC judges the span's replies joined (the next answer's may fall inside the span), so
        # it needs a coverage judge, as the official one is: "contains", not "exact".
        report = {**score_benchmark(name, preds, recs, judge="contains"), "streampro_f1": report["streampro_f1"]}
    assert set(report["results"].values()) == {100.0}, report["table"]
    assert report["streampro_f1"]["w_avg_f1"] == 100.0


def test_rec_oracle_f1_is_100_per_sample(ovo):
    """Issue 23: back-to-back repetitions no longer absorb the later correct answers."""
    _, recs = ovo
    rec = [r for r in recs if not is_qa_record(r) and _task(r) == "REC"]
    result = compute_streampro_f1([_oracle(r)["predictions"] for r in rec], rec, judge="exact",
                                  return_per_sample=True)
    assert len(rec) == 82 and all(s["f1"] == 1.0 for s in result["per_sample"])  # per-sample F1 in [0, 1]
