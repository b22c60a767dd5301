"""StreamPro-F1, the turn-level reward and the answer judges, as plain functions.

``streampro.metrics.f1`` holds the maths and the list of decisions (D1-D11),
``streampro.metrics.judges`` the accuracy judges, ``streampro.metrics.schema`` the reference /
prediction formats, ``streampro.metrics.segments`` the TG segment parser,
``streampro.metrics.bootstrap`` bootstrap intervals for W-Avg F1 and paired differences. The
``evaluate`` module in ``metrics/streampro_f1/`` and the ``streampro score`` command are thin wrappers.
"""

from streampro.metrics.bootstrap import paired_difference_interval, w_avg_interval
from streampro.metrics.f1 import (
    DIMENSIONS,
    TASK_SPECS,
    TURN_TAU,
    SampleScore,
    aggregate,
    compute_streampro_f1,
    streampro_f1_sample,
    turn_level_reward,
    turn_level_rewards,
)
from streampro.metrics.judges import (
    JUDGES,
    Judge,
    JudgeError,
    JudgeFailure,
    JudgeRequest,
    LLMJudge,
    make_judge,
)
from streampro.metrics.schema import (
    TASKS,
    FormatError,
    validate_prediction_record,
    validate_predictions,
    validate_reference,
)
from streampro.metrics.segments import parse_segment, temporal_iou

__all__ = [
    "paired_difference_interval",
    "w_avg_interval",
    "DIMENSIONS",
    "JUDGES",
    "TASKS",
    "TASK_SPECS",
    "TURN_TAU",
    "FormatError",
    "Judge",
    "JudgeError",
    "JudgeFailure",
    "JudgeRequest",
    "LLMJudge",
    "SampleScore",
    "aggregate",
    "compute_streampro_f1",
    "make_judge",
    "parse_segment",
    "streampro_f1_sample",
    "temporal_iou",
    "turn_level_reward",
    "turn_level_rewards",
    "validate_prediction_record",
    "validate_predictions",
    "validate_reference",
]
