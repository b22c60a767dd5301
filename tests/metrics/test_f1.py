"""StreamPro-F1 (docs/method.md §3) and the turn-level reward (docs/method.md §5) on hand-computed cases.

Accuracy is fixed per prediction by :class:`TableJudge` (the prediction text *is* its S_acc),
so every expected number below is worked out from the windows and τ of docs/method.md §2 alone.
"""

from __future__ import annotations

import math

import pytest
from streampro.metrics import (
    FormatError,
    Judge,
    JudgeError,
    JudgeFailure,
    compute_streampro_f1,
    parse_segment,
    streampro_f1_sample,
    temporal_iou,
    turn_level_reward,
    turn_level_rewards,
    validate_reference,
)


class TableJudge(Judge):
    """S_acc = float(prediction text); the text "FAIL" is a judge failure. Records its calls."""

    name = "table"

    def __init__(self):
        self.requests = []

    def score_batch(self, requests):
        self.requests.extend(requests)
        return [
            JudgeFailure("scripted failure") if r.prediction == "FAIL" else float(r.prediction)
            for r in requests
        ]


def ref(task, *answers, sample_id="s"):
    """A reference; an answer is a number (t*) or a (start, end) pair."""
    items = []
    for i, a in enumerate(answers):
        if isinstance(a, tuple):
            items.append({"text": f"gt{i}", "start": a[0], "end": a[1]})
        else:
            items.append({"text": f"gt{i}", "time": a})
    return {
        "id": sample_id,
        "task": task,
        "question": "q?",
        "question_time": 0.0,
        "video": "v.mp4",
        "duration": 120.0,
        "answers": items,
    }


def preds(*pairs):
    """Predictions from (time, S_acc) pairs."""
    return [{"time": t, "text": str(acc)} for t, acc in pairs]


def f1_of(p, r):
    return 2 * p * r / (p + r) if p + r else 0.0


def one(task, gt, time, acc=1.0):
    return streampro_f1_sample(preds((time, acc)), ref(task, gt), TableJudge())


# --- timestamp tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, t_pred, s_time",
    [
        ("OU", 10.0, 1.0),  # on time
        ("OU", 12.0, 0.5),  # 1 - 2/4
        ("OU", 7.0, 0.25),  # window opens at t - 3 (inclusive): 1 - 3/4
        ("OU", 13.0, 0.25),  # window closes at t + 3 (inclusive)
        ("OU", 13.5, 0.0),  # outside [7, 13]
        ("AA", 15.0, 1 - 5 / 6),  # window [t, t + 5], tau 6
        ("AA", 9.9, 0.0),  # AA window starts at the onset
        ("GP", 8.0, 0.5),  # window [t - 3, t]: 1 - 2/4
        ("GP", 10.5, 0.0),  # GP: nothing after t
        ("RF", 9.0, 0.5),  # early: tau 2 -> 1 - 1/2
        ("RF", 11.0, 0.75),  # late: tau 4 -> 1 - 1/4
        ("RF", 13.0, 0.25),  # window closes at t + 3
        ("RF", 8.9, 0.0),  # window opens at t - 1
    ],
)
def test_timestamp_tasks_single_prediction(task, t_pred, s_time):
    score = one(task, 10.0, t_pred)
    # One prediction, one item: P = R = F1 = S = S_time (S_acc = 1).
    assert score.precision == pytest.approx(s_time)
    assert score.recall == pytest.approx(s_time)
    assert score.f1 == pytest.approx(s_time)
    assert score.item_time == [pytest.approx(s_time)]


def test_rf_early_and_late_differ_at_the_same_distance():
    assert one("RF", 10.0, 9.0).f1 == pytest.approx(0.5)  # 1 s early: tau = 2
    assert one("RF", 10.0, 11.0).f1 == pytest.approx(0.75)  # 1 s late: tau = 4


# --- interval tasks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, t_pred, s_time",
    [
        ("EU", 7.0, 1.0),  # inside [5, 10]: dt = 0
        ("EU", 5.0, 1.0),  # at the start
        ("TP", 10.0, 1.0),  # at the end
        ("EU", 12.0, 0.5),  # after: dt = 2 to the nearer end
        ("TP", 13.0, 0.25),  # window closes at e + 3
        ("EU", 4.0, 0.0),  # before the span: outside the window [s, e + 3]
        ("TP", 13.5, 0.0),
    ],
)
def test_interval_tasks(task, t_pred, s_time):
    assert one(task, (5.0, 10.0), t_pred).f1 == pytest.approx(s_time)


def test_tg_iou_and_end_as_best_time():
    judge = TableJudge()
    r = ref("TG", (12.0, 18.0))
    # t* = 18; 1 s late -> S_time 0.75; "13 to 18" vs [12, 18] -> IoU 5/6.
    score = streampro_f1_sample([{"time": 19.0, "text": "from 13 to 18 seconds"}], r, judge)
    assert score.f1 == pytest.approx(0.75 * 5 / 6)
    assert score.item_acc == [pytest.approx(5 / 6)]
    assert judge.requests == []  # TG never asks the judge
    # Window [15, 21]: 14.9 is outside although inside the GT segment.
    assert streampro_f1_sample([{"time": 14.9, "text": "12s-18s"}], r, judge).f1 == 0.0


def test_tg_unparseable_answer_scores_zero_and_is_counted():
    score = streampro_f1_sample([{"time": 18.0, "text": "the man jumps"}], ref("TG", (12.0, 18.0)), "lexical")
    assert score.f1 == 0.0
    assert score.parse_failures == 1


# --- matching ---------------------------------------------------------------------------------


def test_prediction_in_two_overlapping_windows_goes_to_the_first_item_only():
    # OU items at t* = 10 (window [7, 13]) and 12 (window [9, 15]); answers listed out of order
    # to check that items are ordered by t*.
    r = ref("OU", 12.0, 10.0)
    score = streampro_f1_sample(preds((11.0, 1.0)), r, TableJudge())
    # Matched to t* = 10 only: S = 1 - 1/4 = 0.75; P = 0.75 / 1, R = 0.75 / 2.
    assert score.precision == pytest.approx(0.75)
    assert score.recall == pytest.approx(0.375)
    assert score.f1 == pytest.approx(f1_of(0.75, 0.375))
    assert score.kept == [0, None]


def test_item_keeps_its_best_prediction():
    # t* = 10: S = 0.75*0.4 = 0.3, 1*0.5 = 0.5, 0.75*1 = 0.75 -> keeps the third.
    score = streampro_f1_sample(preds((9.0, 0.4), (10.0, 0.5), (11.0, 1.0)), ref("OU", 10.0), TableJudge())
    assert score.kept == [2]
    assert score.precision == pytest.approx(0.75 / 3)  # every prediction counts in N_pred
    assert score.recall == pytest.approx(0.75)
    assert score.f1 == pytest.approx(f1_of(0.25, 0.75))
    assert (score.item_time, score.item_acc) == ([0.75], [1.0])


def test_ties_go_to_the_earliest_prediction():
    score = streampro_f1_sample(preds((11.0, 1.0), (9.0, 1.0)), ref("OU", 10.0), TableJudge())
    assert score.kept == [0]  # index into the time-sorted predictions: the one at 9 s
    assert score.f1 == pytest.approx(f1_of(0.75 / 2, 0.75))


def test_predictions_outside_all_windows_count_in_n_pred():
    score = streampro_f1_sample(preds((30.0, 1.0), (40.0, 1.0)), ref("OU", 10.0), TableJudge())
    assert (score.precision, score.recall, score.f1) == (0.0, 0.0, 0.0)
    assert score.matched == [None, None]
    # ... and they dilute the precision of a good prediction.
    score = streampro_f1_sample(preds((10.0, 1.0), (40.0, 1.0)), ref("OU", 10.0), TableJudge())
    assert (score.precision, score.recall) == (0.5, 1.0)


def test_no_predictions():
    score = streampro_f1_sample([], ref("EU", (5.0, 10.0)), TableJudge())
    assert (score.precision, score.recall, score.f1) == (0.0, 0.0, 0.0)


def test_only_matched_pairs_are_judged():
    judge = TableJudge()
    streampro_f1_sample(preds((10.0, 1.0), (50.0, 0.5)), ref("OU", 10.0), judge)
    assert [r.prediction for r in judge.requests] == ["1.0"]


def test_judge_failure_is_an_error_not_a_zero():
    with pytest.raises(JudgeError, match="scripted failure"):
        streampro_f1_sample([{"time": 10.0, "text": "FAIL"}], ref("OU", 10.0), TableJudge())


# --- aggregation --------------------------------------------------------------------------------


def test_aggregation_avg_vs_w_avg():
    references = [
        ref("OU", 10.0, sample_id="s1"),  # F1 1
        ref("OU", 10.0, 30.0, sample_id="s2"),  # S 0.5 on one of two items: P 0.5, R 0.25
        ref("EU", (5.0, 10.0), sample_id="s3"),  # F1 1
        ref("TP", (5.0, 10.0), sample_id="s4"),  # no predictions: F1 0
        ref("GP", 10.0, sample_id="s5"),  # 2 s early: F1 0.5
    ]
    predictions = [preds((10.0, 1.0)), preds((12.0, 1.0)), preds((7.0, 1.0)), [], preds((8.0, 1.0))]
    out = compute_streampro_f1(predictions, references, judge=TableJudge(), return_per_sample=True)
    f1_s2 = f1_of(0.5, 0.25)
    assert out["OU_f1"] == pytest.approx(100 * (1 + f1_s2) / 2)
    assert out["OU_precision"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert out["OU_recall"] == pytest.approx(100 * (1 + 0.25) / 2)
    # Time / Acc are means over the three OU items (1, 0.5, unmatched 0), not over samples.
    assert out["OU_time"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert out["OU_acc"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    # Dimensions are sample-weighted: PU = mean of the three PU samples, not of OU_f1 and EU_f1.
    pu = 100 * (1 + f1_s2 + 1) / 3
    assert out["PU_f1"] == pytest.approx(pu)
    assert out["PU_f1"] != pytest.approx((out["OU_f1"] + out["EU_f1"]) / 2)
    assert out["TR_f1"] == 0.0
    assert out["PA_f1"] == pytest.approx(50.0)
    assert out["avg_f1"] == pytest.approx((pu + 0 + 50) / 3)
    assert out["w_avg_f1"] == pytest.approx(100 * (1 + f1_s2 + 1 + 0 + 0.5) / 5)
    assert out["num_samples"] == 5
    assert "AA_f1" not in out and "TG_f1" not in out  # only tasks present
    assert [s["id"] for s in out["per_sample"]] == ["s1", "s2", "s3", "s4", "s5"]
    assert out["per_sample"][1]["f1"] == pytest.approx(f1_s2)


def test_avg_is_the_mean_of_the_dimensions_present():
    out = compute_streampro_f1(
        [preds((10.0, 1.0)), []], [ref("OU", 10.0), ref("GP", 10.0)], judge=TableJudge()
    )
    assert "TR_f1" not in out
    assert out["avg_f1"] == pytest.approx((100 + 0) / 2)


def test_judge_failure_excludes_the_sample_or_stops():
    references = [ref("OU", 10.0, sample_id="ok"), ref("OU", 10.0, sample_id="bad")]
    predictions = [preds((10.0, 1.0)), [{"time": 10.0, "text": "FAIL"}]]
    out = compute_streampro_f1(predictions, references, judge=TableJudge(), return_per_sample=True)
    assert out["w_avg_f1"] == 100.0  # the failed sample is not averaged in as 0
    assert (out["num_samples"], out["excluded_samples"], out["judge_failures"]) == (1, 1, 1)
    assert out["per_sample"][1] == {"id": "bad", "task": "OU", "excluded": "scripted failure"}
    with pytest.raises(JudgeError, match="bad"):
        compute_streampro_f1(predictions, references, judge=TableJudge(), on_judge_failure="stop")
    # Nothing scored: no number at all rather than a 0.
    out = compute_streampro_f1(predictions[1:], references[1:], judge=TableJudge())
    assert (out["num_samples"], out["avg_f1"], out["w_avg_f1"]) == (0, None, None)


def test_compute_batches_the_judge_once_and_counts_parse_failures():
    calls = []

    class CountingJudge(TableJudge):
        def score_batch(self, requests):
            calls.append(len(requests))
            return super().score_batch(requests)

    references = [ref("OU", 10.0), ref("EU", (1.0, 2.0)), ref("TG", (3.0, 6.0))]
    predictions = [preds((10.0, 1.0)), preds((2.0, 0.5)), [{"time": 6.0, "text": "no segment here"}]]
    out = compute_streampro_f1(predictions, references, judge=CountingJudge())
    assert calls == [2]
    assert out["parse_failures"] == 1


def test_lexical_judge_by_name():
    r = ref("OU", 10.0)
    r["answers"][0]["text"] = "The door is open."
    out = compute_streampro_f1([[{"time": 10.0, "text": "the door is open"}]], [r], judge="lexical")
    assert out["OU_f1"] == pytest.approx(100.0)


# --- turn-level reward ----------------------------------------------------------------------------


def test_turn_reward_additive_with_tau_8():
    # S' = (1 - 2/8) + 1 = 1.75; R = 2 * 1.75 / (1 + 1).
    assert turn_level_reward(preds((12.0, 1.0)), ref("OU", 10.0), TableJudge()) == pytest.approx(1.75)
    # Additive: a wrong answer on time still earns S_time.
    assert turn_level_reward(preds((10.0, 0.0)), ref("OU", 10.0), TableJudge()) == pytest.approx(1.0)
    # Window [t - 8, t + 8]; 18.5 is outside; the unmatched prediction still counts in N_pred.
    assert turn_level_reward(preds((18.5, 1.0)), ref("OU", 10.0), TableJudge()) == 0.0


def test_turn_reward_proactive_window_ignores_later_predictions():
    assert turn_level_reward(preds((11.0, 1.0)), ref("GP", 10.0), TableJudge()) == 0.0
    assert turn_level_reward(preds((4.0, 1.0)), ref("GP", 10.0), TableJudge()) == pytest.approx(1.25)
    # RF: same window, one tau = 8 on both sides (no asymmetry): 1 - 4/8 + 1 = 1.5.
    assert turn_level_reward(preds((6.0, 1.0)), ref("RF", 10.0), TableJudge()) == pytest.approx(1.5)
    assert turn_level_reward(preds((10.5, 1.0)), ref("RF", 10.0), TableJudge()) == 0.0


def test_turn_reward_ground_truth_first_takes_the_best_unmatched_prediction():
    r = ref("OU", 10.0, 12.0)
    # Item 10: candidates 10 s (S' = 1 + 0.2) and 13 s (S' = 0.625 + 1) -> takes 13 s.
    # Item 12: only 10 s is left: S' = (1 - 2/8) + 0.2 = 0.95.
    reward = turn_level_reward(preds((10.0, 0.2), (13.0, 1.0)), r, TableJudge())
    assert reward == pytest.approx(2 * (1.625 + 0.95) / 4)
    # The F1 metric on the same data is prediction-first: both predictions go to item 10.
    score = streampro_f1_sample(preds((10.0, 0.2), (13.0, 1.0)), r, TableJudge())
    assert score.matched == [0, 0]


def test_turn_reward_interval_window_and_delta():
    r = ref("EU", (20.0, 30.0))  # window [12, 38]
    assert turn_level_reward(preds((25.0, 1.0)), r, TableJudge()) == pytest.approx(2.0)
    assert turn_level_reward(preds((12.0, 1.0)), r, TableJudge()) == pytest.approx(1.0)  # dt 8 -> S_time 0
    assert turn_level_reward(preds((34.0, 0.5)), r, TableJudge()) == pytest.approx(0.5 + 0.5)
    assert turn_level_reward(preds((11.0, 1.0)), r, TableJudge()) == 0.0


def test_turn_reward_tau_and_failures():
    assert turn_level_reward(preds((12.0, 1.0)), ref("OU", 10.0), TableJudge(), tau=3) == pytest.approx(
        1 + 1 / 3
    )
    with pytest.raises(JudgeError):
        turn_level_reward([{"time": 10.0, "text": "FAIL"}], ref("OU", 10.0), TableJudge())


def test_turn_rewards_batched_with_one_judge_call():
    calls = []

    class CountingJudge(TableJudge):
        def score_batch(self, requests):
            calls.append(len(requests))
            return super().score_batch(requests)

    trajectories = [preds((12.0, 1.0)), [{"time": 10.0, "text": "FAIL"}], [], preds((4.0, 1.0))]
    references = [ref("OU", 10.0), ref("OU", 10.0), ref("OU", 10.0), ref("GP", 10.0)]
    rewards = turn_level_rewards(trajectories, references, CountingJudge())
    assert rewards[0] == pytest.approx(1.75)
    assert rewards[1] is None  # judge failed: not applicable, not 0
    assert rewards[2] == 0.0  # silent trajectory: 2 * 0 / (0 + 1)
    assert rewards[3] == pytest.approx(1.25)
    assert calls == [2]  # one batch; the identical requests of trajectories 0 and 3 sent once
    # Same numbers as the one-at-a-time function.
    assert rewards[3] == turn_level_reward(trajectories[3], references[3], TableJudge())


def test_turn_reward_tg_uses_iou():
    reward = turn_level_reward([{"time": 18.0, "text": "<12.0s-15.0s>"}], ref("TG", (12.0, 18.0)), "exact")
    assert reward == pytest.approx(1 + 0.5)


# --- TG parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, segment",
    [
        ("12.5s - 18s", (12.5, 18.0)),
        ("from 12 to 18 seconds", (12.0, 18.0)),
        ("00:12-00:18", (12.0, 18.0)),
        ("<12.0s-18.0s>", (12.0, 18.0)),
        ("The event happens between 1:02 and 1:10.", (62.0, 70.0)),
        ("start: 12, end: 18", (12.0, 18.0)),
        ("[12.0, 18.0]", (12.0, 18.0)),
        ("It spans 12.0–18.0 seconds.", (12.0, 18.0)),
        ("2 people enter at 12s and leave at 18s", (12.0, 18.0)),
        ("from 18s to 12s", (12.0, 18.0)),
        ("01:00:05 - 01:00:09.5", (3605.0, 3609.5)),
        ("The man jumps at 5 seconds", None),
        ("2 people walk in", None),
        ("no idea", None),
    ],
)
def test_parse_segment(text, segment):
    assert parse_segment(text) == segment


def test_temporal_iou():
    assert temporal_iou((12.0, 18.0), (12.0, 18.0)) == 1.0
    assert temporal_iou((0.0, 2.0), (1.0, 3.0)) == pytest.approx(1 / 3)
    assert temporal_iou((0.0, 1.0), (2.0, 3.0)) == 0.0
    assert temporal_iou((5.0, 5.0), (5.0, 5.0)) == 1.0


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": "XX"}, "unknown task code 'XX'"),
        ({"answers": []}, "non-empty list"),
        ({"question_time": -1}, "question_time"),
        ({"duration": math.nan}, "duration"),
        ({"answers": [{"text": "a", "start": 3.0}]}, "needs 'start' and 'end'"),
        ({"answers": [{"text": "a", "start": 5.0, "end": 3.0}]}, "swap them"),
        ({"task": "OU"}, "needs 'time'"),
        ({"answers": [{"text": "a", "start": 1.0, "end": math.inf}]}, "finite"),
    ],
)
def test_validate_reference_errors(change, message):
    r = {**ref("EU", (1.0, 2.0)), **change}
    with pytest.raises(FormatError, match=message):
        validate_reference(r)


def test_validate_reference_missing_field_and_bad_prediction():
    r = ref("OU", 1.0)
    del r["video"]
    with pytest.raises(FormatError, match=r"missing field\(s\) \['video'\]"):
        validate_reference(r)
    with pytest.raises(FormatError, match=r"predictions\[0\].time"):
        streampro_f1_sample([{"time": math.nan, "text": "x"}], ref("OU", 1.0), TableJudge())
    with pytest.raises(FormatError, match="sample 1"):
        compute_streampro_f1(
            [[], [{"time": -2, "text": "x"}]], [ref("OU", 1.0), ref("OU", 1.0)], TableJudge()
        )
