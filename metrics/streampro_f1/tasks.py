"""The StreamPro task vocabulary (docs/method.md §2): the seven task codes and how each task's answers are timed.

The one definition of these names. It uses the standard library only, so the ``evaluate`` module
in this folder can carry it; :mod:`streampro.metrics.schema` and
:mod:`streampro.dataset_scripts.schema` import it from here.
"""

TASKS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF")
# Answers are event spans [start, end]: interval-aware Δt (docs/method.md §3), respond at each span.
INTERVAL_TASKS = frozenset({"EU", "TP"})
# Temporal Grounding: the answer is a segment (also written in its text); t* is its end; accuracy is IoU.
SEGMENT_TASKS = frozenset({"TG"})
# Answers carry the best response time t* directly as "time".
TIMESTAMP_TASKS = frozenset({"OU", "AA", "GP", "RF"})

# The fields of a reference (one benchmark sample), in the order the files write them.
REFERENCE_FIELDS = ("id", "task", "question", "question_time", "video", "duration", "answers")
