"""Official benchmark scores against hand-computed cases, and `streampro score --benchmark` / reference checks."""

from __future__ import annotations

import json

import pytest
from streampro.metrics.official import parse_choice, pauc, pauc_answer, score_benchmark
from streampro.metrics.schema import FormatError

from streampro.cli import main


def _mc(id_, task, answer, bench="ovo-bench", **kw):
    return {"id": id_, "benchmark": bench, "task": task, "kind": "multiple_choice", "video": "v.mp4",
            "duration": 30.0, "question": "Which?", "question_time": 10.0, "options": ["a", "b", "c", "d"],
            "answer": answer, "group": None, "group_index": 0, "context": "", **kw}


def _open(id_, task, answer):
    return {**_mc(id_, task, "A"), "kind": "open", "options": None, "answer": answer}


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(b)", "B"), ("B. a red car", "B"), ("B) red", "B"), ("The answer is (B).", "B"),
    ("Answer: c", "C"), ("I think (D) is right", "D"), ("A man is running", None), ("A or B", None),
    ("E", None), ("", None), (None, None), ("no idea", None),
])
def test_parse_choice(text, letter):
    assert parse_choice(text, 4) == letter


def test_ovo_bench_hand_computed():
    refs = [_mc("e1", "EPM", "A"), _mc("e2", "EPM", "B"), _mc("a1", "ASI", "C"),
            _open("r1", "REC", "3"), _open("r2", "REC", "3"), _open("s1", "SSR", "Yes"), _open("c1", "CRR", "No")]
    preds = [{"id": "e1", "answer": "The answer is (A)."}, {"id": "e2", "answer": "I don't know"},
             {"id": "a1", "answer": "C"}, {"id": "r1", "answer": "I count 3 times"},
             {"id": "r2", "answer": "3 or 4"},  # digits joined: "34" != "3" (OVO-Bench's rule)
             {"id": "s1", "answer": "Y"}, {"id": "c1", "answer": "no"}]  # "No" not in "no": case as written
    r = score_benchmark("ovo-bench", preds, refs)
    res = r["results"]
    assert res["EPM"] == 50.0 and res["ASI"] == 100.0 and res["Backward Avg"] == 75.0
    assert res["REC"] == 50.0 and res["SSR"] == 100.0 and res["CRR"] == 0.0 and res["Forward Avg"] == 50.0
    assert res["Overall"] == 62.5  # mean of the two categories present
    assert r["counts"]["EPM"]["unparseable"] == 1
    assert "EPM" in r["table"] and "Backward Avg" in r["table"]


def test_empty_prediction_file_scores_zero_with_everything_missing():
    refs = [_mc("e1", "EPM", "A"), _open("r1", "REC", "3")]
    r = score_benchmark("ovo-bench", [], refs)
    assert r["results"]["EPM"] == 0.0 and r["results"]["REC"] == 0.0
    assert sum(c["missing"] for c in r["counts"].values()) == 2
    assert sum(c["unparseable"] for c in r["counts"].values()) == 0


def _po(id_, q_time, gt_time, output="3"):
    return {"id": id_, "task": "OU", "video": "v.mp4", "duration": 60.0, "question": "Output 3 when ...",
            "question_time": q_time, "answers": [{"text": output, "time": gt_time}], "source": "streamingbench",
            "system": None, "meta": {"benchmark": "streamingbench", "benchmark_task": "PO",
                                     "ground_truth_output": output}}


def test_streamingbench_hand_computed():
    refs = [_mc("op1", "OP", "A", "streamingbench"), _mc("op2", "OP", "B", "streamingbench"),
            _mc("ct1", "CT", "D", "streamingbench"),
            _po("p1", 20, 29), _po("p2", 20, 29), _po("p3", 20, 29), _po("p4", 20, 29)]
    preds = [{"id": "op1", "answer": "A. the cat"}, {"id": "op2", "answer": "C"}, {"id": "ct1", "answer": "D"},
             {"id": "p1", "predictions": [{"time": 30, "text": "the score is 3"}]},  # 1 s late, contains "3"
             {"id": "p2", "predictions": [{"time": 32, "text": "3"}]},  # 3 s late: wrong
             # a response before the question is not the model's answer; the first one after is
             {"id": "p3", "predictions": [{"time": 15, "text": "x"}, {"time": 28, "text": "3"}]},
             # a tie at one time: the first given counts (on time, wrong text)
             {"id": "p4", "predictions": [{"time": 29, "text": "four"}, {"time": 29, "text": "3"}]}]
    res = score_benchmark("streamingbench", preds, refs, streampro_f1=False)["results"]
    assert res["OP"] == 50.0 and res["CT"] == 100.0 and res["Real-Time All"] == pytest.approx(200 / 3)
    assert res["PO"] == 50.0 and res["PO time"] == 75.0 and res["Contextual All"] == 50.0
    assert res["Overall"] == pytest.approx(100 * 4 / 7)


SAME = lambda p, r: float(p == r)  # noqa: E731  (exact text)
HAS = lambda p, r: float(r in p.split())  # noqa: E731  (the reference word among the joined replies)
CAT = {"text": "cat", "reply_timespan": [0, 10], "related_timespan": [0, 10]}


def test_pauc_one_reply_and_the_omega_weighting():
    # "cat" at 5 s of [0, 10]: the curve is 0.25 until x = 5·(1 − ω), then 1.
    one = [{"time": 5, "text": "cat"}]
    assert pauc(one, [CAT], SAME, omega=0) == 0.625  # (0.25·5 + 1·5) / 10
    assert pauc(one, [CAT], SAME, omega=0.5) == 0.8125  # (0.25·2.5 + 1·7.5) / 10
    assert pauc(one, [CAT], SAME) == 0.8125  # ω = 0.5 by default
    assert pauc(one, [CAT], SAME, omega=1) == 1.0  # the last score alone
    assert pauc([{"time": 0, "text": "cat"}], [CAT], SAME, omega=0) == 1.0  # right at s: 1 for every ω


def test_pauc_no_reply_and_reply_outside_the_span_score_the_start_level():
    later = {"text": "dog", "reply_timespan": [10, 20], "related_timespan": [10, 18]}
    for omega in (0, 0.5, 1):
        assert pauc([], [CAT], SAME, omega=omega) == 0.25
        # a reply before the span (at 5 s) or after it (at 25 s) is not this answer's
        assert pauc([{"time": 5, "text": "dog"}, {"time": 25, "text": "dog"}], [later], SAME, omega=omega) == 0.25
    # one answer answered at its start, one never: mean 0.625
    assert pauc([{"time": 0, "text": "cat"}], [CAT, later], SAME) == 0.625


def test_pauc_several_replies_are_judged_joined():
    two = [{"time": 2, "text": "cow"}, {"time": 6, "text": "cat"}]
    # the judge sees "cow", then "cow cat": 0 from 2 s, 1 from 6 s
    assert pauc(two, [CAT], HAS, omega=0) == 0.45  # (0.25·2 + 0·4 + 1·4) / 10
    assert pauc(two, [CAT], HAS, omega=0.5) == 0.725  # (0.25·1 + 0·2 + 1·7) / 10
    assert pauc(two, [CAT], HAS, omega=1) == 1.0
    # an exact-text judge never sees "cat" alone: "cow cat" != "cat"
    assert pauc(two, [CAT], SAME, omega=0) == pytest.approx(0.05)  # 0.25·2 / 10
    # two replies at one time: the later (joined) one is the point
    assert pauc([{"time": 0, "text": "cow"}, {"time": 0, "text": "cat"}], [CAT], HAS, omega=0) == 1.0


def test_pauc_repeated_reply_is_judged_once():
    calls = []

    def judge(p, r):
        calls.append(p)
        return SAME(p, r)

    assert pauc([{"time": 0, "text": "cat"}, {"time": 4, "text": "cat"}], [CAT], judge, omega=0) == 1.0
    assert calls == ["cat"]


def test_pauc_drops_a_lower_reply_after_the_related_span():
    ans = {"text": "cat", "reply_timespan": [0, 10], "related_timespan": [0, 6]}
    # "cat dog" scores 0 at 8 s, after the related span and below "cat": dropped
    assert pauc([{"time": 0, "text": "cat"}, {"time": 8, "text": "dog"}], [ans], SAME, omega=0) == 1.0
    # the same at 4 s, inside the related span: kept, the curve falls to 0
    assert pauc([{"time": 0, "text": "cat"}, {"time": 4, "text": "dog"}], [ans], SAME, omega=0) == 0.4


def test_pauc_answer_edges():
    assert pauc_answer([], (5.0, 5.0)) == 0.25
    assert pauc_answer([(5.0, 1.0)], (5.0, 5.0)) == 1.0  # zero-length span: the last score
    assert pauc_answer([(0.0, 0.5), (10.0, 1.0)], (0.0, 10.0), omega=0) == 0.5  # the point at e adds nothing
    assert pauc([], [], SAME) == 0.0


def _pvqa(id_, subset, answers, question="What?"):
    return {"id": id_, "task": "EU", "video": "v.mp4", "duration": 40.0, "question": question, "question_time": 0.0,
            "answers": [{"text": a["text"], "start": a["related_timespan"][0], "end": a["related_timespan"][1]}
                        for a in answers], "source": "proactivevideoqa", "system": None,
            "meta": {"benchmark": "proactivevideoqa", "benchmark_task": subset, "pvqa_answers": answers}}


def test_proactivevideoqa_pauc_is_the_mean_over_answers():
    dog = {"text": "dog", "reply_timespan": [20, 30], "related_timespan": [20, 29]}
    refs = [_pvqa("w1", "WEB", [CAT, dog]), _pvqa("w2", "WEB", [CAT]), _pvqa("t", "TV", [CAT])]
    preds = [{"id": "w1", "predictions": [{"time": 0, "text": "cat"}]},  # answers 1.0 and 0.25
             {"id": "w2", "predictions": []}]  # 0.25; "t" has no line (missing): 0.25
    r = score_benchmark("proactivevideoqa", preds, refs, judge="exact", streampro_f1=False)
    # WEB: (1 + 0.25 + 0.25) / 3 answers, not the mean of the samples (0.625 + 0.25) / 2
    assert r["results"] == {"WEB": 50.0, "TV": 25.0, "Avg": 37.5}
    assert r["pauc_omega"] == 0.5 and r["pauc"][1.0] == {"WEB": 50.0, "TV": 25.0}
    assert [s["pauc"] for s in r["per_sample"]] == [62.5, 25.0, 25.0]
    assert r["counts"]["TV"]["missing"] == 1
    late = [{"id": "t", "predictions": [{"time": 5, "text": "cat"}]}]
    for omega, value in ((0, 62.5), (0.5, 81.25), (1, 100.0)):
        res = score_benchmark("proactivevideoqa", late, refs[2:], judge="exact", streampro_f1=False, pauc_omega=omega)
        assert res["results"]["TV"] == value
    assert "PAUC (omega=1)" in res["table"]


def test_proactivevideoqa_judge_gets_the_question_and_the_joined_replies():
    seen = []

    class Recorder:
        def score_batch(self, requests):
            seen.extend((r.question, r.prediction, r.reference) for r in requests)
            return [1.0 for _ in requests]

    refs = [_pvqa("w", "WEB", [CAT], question="Which animal?")]
    preds = [{"id": "w", "predictions": [{"time": 1, "text": "a cow"}, {"time": 2, "text": "a cat"}]}]
    score_benchmark("proactivevideoqa", preds, refs, judge=Recorder(), streampro_f1=False)
    assert seen == [("Which animal?", "a cow", "cat"), ("Which animal?", "a cow a cat", "cat")]


def test_wrong_benchmark_and_unknown_ids_are_errors():
    with pytest.raises(FormatError, match="belongs to 'ovo-bench'"):
        score_benchmark("streamingbench", [], [_mc("e1", "EPM", "A")])
    with pytest.raises(FormatError, match="not in the references"):
        score_benchmark("ovo-bench", [{"id": "zz", "answer": "A"}], [_mc("e1", "EPM", "A")])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_score_cli_benchmark_table_and_report(tmp_path, capsys):
    refs = _write(tmp_path / "r.jsonl", [_mc("e1", "EPM", "A"), _mc("o1", "OCR", "B")])
    preds = _write(tmp_path / "p.jsonl", [{"id": "e1", "answer": "A"}, {"id": "o1", "answer": "A"}])
    rc = main(["score", "--benchmark", "ovo-bench", "--predictions", preds, "--references", refs,
               "--out", str(tmp_path / "rep.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "EPM" in out and "OCR" in out
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["results"]["EPM"] == 100.0 and report["results"]["OCR"] == 0.0
    assert report["results"]["Overall"] == 50.0


def test_score_reference_time_errors_name_file_and_line(tmp_path, capsys):
    """A question at 40 s in a 30 s video, answered at 10 s, is an error, never scored."""
    ok = {"id": "b", "task": "OU", "question": "q", "question_time": 1.0, "video": "v.mp4", "duration": 30.0,
          "answers": [{"text": "x", "time": 5.0}]}
    bad = {**ok, "id": "a", "question_time": 40.0, "answers": [{"text": "x", "time": 10.0}]}
    late = {**ok, "id": "c", "answers": [{"text": "x", "time": 31.0}]}
    refs = _write(tmp_path / "r.jsonl", [ok, bad, late])
    preds = _write(tmp_path / "p.jsonl", [{"id": i, "predictions": [{"time": 10.0, "text": "x"}]} for i in "abc"])
    assert main(["score", "--predictions", preds, "--references", refs]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 timing errors" in err
    assert f"{refs}:2: field 'question_time' 40 s is after the end of the video (30 s)" in err
    assert f"{refs}:2: field 'answers[0].time' 10 s is before the question (40 s)" in err
    assert f"{refs}:3: field 'answers[0].time' 31 s is after the end of the video (30 s)" in err
    qa = _write(tmp_path / "q.jsonl", [_mc("e1", "EPM", "A", question_time=31.0)])
    qp = _write(tmp_path / "qp.jsonl", [{"id": "e1", "answer": "A"}])
    assert main(["score", "--benchmark", "ovo-bench", "--predictions", qp, "--references", qa]) == 2
    assert f"{qa}:1: field 'question_time' 31 s is after the end of the video" in capsys.readouterr().err
