"""Bootstrap intervals of W-Avg F1 and of paired differences (streampro.metrics.bootstrap)."""

import math

import numpy as np
import pytest
from streampro.metrics import compute_streampro_f1, paired_difference_interval, w_avg_interval


def _samples(f1s_by_task: dict[str, list[float]], prefix: str = "s") -> list[dict]:
    return [{"id": f"{prefix}-{task}-{i}", "task": task, "precision": f1, "recall": f1, "f1": f1}
            for task, f1s in f1s_by_task.items() for i, f1 in enumerate(f1s)]


def test_interval_matches_the_normal_approximation_for_a_binary_score():
    """400 clips scoring 0 or 1 half the time: W-Avg 50 ± 1.96·sqrt(0.25/400)·100 = ± 4.9."""
    low, high = w_avg_interval(_samples({"AA": [0.0, 1.0] * 200}), resamples=20_000)
    half = 196 * math.sqrt(0.25 / 400)
    assert low == pytest.approx(50 - half, abs=0.6) and high == pytest.approx(50 + half, abs=0.6)


def test_interval_is_stratified_by_task_and_reproducible():
    # A task where every clip scores the same adds no spread: only RF's clips move W-Avg.
    samples = _samples({"AA": [1.0] * 20, "RF": [0.0, 1.0] * 10})
    first, again = w_avg_interval(samples, seed=3), w_avg_interval(samples, seed=3)
    assert first == again
    rf_alone = w_avg_interval(_samples({"RF": [0.0, 1.0] * 10}), seed=3)
    # W-Avg = (20 + RF's sum) / 40, so its interval is RF's (×100 of a 20-clip mean) halved, shifted by 50.
    assert first[0] == pytest.approx(50 + rf_alone[0] / 2, abs=1e-9)
    assert first[1] == pytest.approx(50 + rf_alone[1] / 2, abs=1e-9)
    narrow = w_avg_interval(_samples({"RF": [0.0, 1.0] * 100}), seed=3)
    assert narrow[1] - narrow[0] < rf_alone[1] - rf_alone[0]


def test_paired_difference_sees_what_two_separate_intervals_cannot():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=60)
    a = _samples({"EU": list(base[:30]), "GP": list(base[30:])})
    b = _samples({"EU": list(base[:30] - 0.05), "GP": list(base[30:] - 0.05)})  # B is 5 points worse on every clip
    result = paired_difference_interval(a, b)
    assert result["difference"] == pytest.approx(5.0)
    assert result["low"] == pytest.approx(5.0) and result["high"] == pytest.approx(5.0)
    assert result["samples"] == 60
    # Separately the two intervals overlap widely.
    a_low, b_high = w_avg_interval(a)[0], w_avg_interval(b)[1]
    assert a_low < b_high
    same = paired_difference_interval(a, a)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "samples": 60}


def test_paired_difference_on_real_reports_and_clear_errors():
    references = [
        {"id": f"c{t}", "task": "AA", "question": "Alert me if anything unusual happens.", "question_time": 0,
         "video": f"c{t}.mp4", "duration": 10, "answers": [{"time": t, "text": "alert: a fire started"}]}
        for t in (5, 6)
    ]
    right = [[{"time": 5, "text": "alert: a fire started"}], [{"time": 6, "text": "alert: a fire started"}]]
    silent = [[], [{"time": 6, "text": "alert: a fire started"}]]
    a = compute_streampro_f1(right, references, judge="exact", return_per_sample=True)["per_sample"]
    b = compute_streampro_f1(silent, references, judge="exact", return_per_sample=True)["per_sample"]
    assert paired_difference_interval(a, b)["difference"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="not the same benchmark"):
        paired_difference_interval(a, b[:1])
    with pytest.raises(ValueError, match="appears twice"):
        w_avg_interval(a + a)
    with pytest.raises(ValueError, match="no 'f1'"):
        w_avg_interval([{"id": "x", "task": "AA"}])
    with pytest.raises(ValueError, match="no scored sample"):
        w_avg_interval([{"id": "x", "task": "AA", "excluded": "judge failed"}])
    with pytest.raises(ValueError, match="level"):
        w_avg_interval(a, level=95)
