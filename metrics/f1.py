"""StreamPro-F1 (docs/method.md §3) and the turn-level reward (docs/method.md §5).

The maths, with the decisions D1-D11 the paper leaves open, is ``metrics/streampro_f1/scoring.py``:
the ``evaluate`` module carries it so that a copy of that folder (a Hub Space) scores without this
package. This module re-exports it for the package (``streampro score``, the GRPO rewards, the
evaluation harness).
"""

from streampro.metrics.streampro_f1.scoring import (
    DIMENSIONS,
    PROACTIVE_TASKS,
    TASK_SPECS,
    TIME_EPS,
    TURN_TAU,
    SampleScore,
    TaskSpec,
    aggregate,
    compute_streampro_f1,
    delta_t,
    in_window,
    is_failure,
    match_prediction_first,
    score_accuracy,
    streampro_f1_sample,
    time_score,
    turn_candidates,
    turn_level_reward,
    turn_level_rewards,
)

__all__ = [
    "DIMENSIONS",
    "PROACTIVE_TASKS",
    "TASK_SPECS",
    "TIME_EPS",
    "TURN_TAU",
    "SampleScore",
    "TaskSpec",
    "aggregate",
    "compute_streampro_f1",
    "delta_t",
    "in_window",
    "is_failure",
    "match_prediction_first",
    "score_accuracy",
    "streampro_f1_sample",
    "time_score",
    "turn_candidates",
    "turn_level_reward",
    "turn_level_rewards",
]
