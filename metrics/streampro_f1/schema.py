"""The reference and prediction formats shared by the metric, the data builders and evaluation.

Part of the self-contained ``evaluate`` module (standard library only); the package re-exports it
as :mod:`streampro.metrics.schema`.

A **reference** is one benchmark sample::

    {"id": "v1_q0", "task": "EU", "question": "...", "question_time": 3.0,
     "video": "v1.mp4", "duration": 120.0,
     "answers": [{"text": "...", "start": 10.0, "end": 14.0}, ...]}

Each answer carries ``"time"`` (the best response time t* of docs/method.md §2: for GP the previous
step's completion, for RF the warning time) for OU / AA / GP / RF, or ``"start"`` and ``"end"``
for EU / TP (the event span) and TG (the ground-truth segment, whose end is t*).

A **prediction** is ``{"id": ..., "predictions": [{"time": 12.0, "text": "..."}, ...]}``; the
metric functions take just the inner list. Validation errors say which field is wrong and how to
fix it; callers prefix the location (file and line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tasks import (
    INTERVAL_TASKS,
    REFERENCE_FIELDS,
    SEGMENT_TASKS,
    TASKS,
    TIMESTAMP_TASKS,
)

__all__ = [
    "INTERVAL_TASKS",
    "REFERENCE_FIELDS",
    "SEGMENT_TASKS",
    "TASKS",
    "TIMESTAMP_TASKS",
    "FormatError",
    "GroundTruth",
    "Prediction",
    "Reference",
    "validate_prediction_record",
    "validate_predictions",
    "validate_reference",
]


class FormatError(ValueError):
    """A reference or prediction does not follow the documented format."""


@dataclass(frozen=True)
class Prediction:
    """One response the model emitted: its time (seconds) and text."""

    time: float
    text: str


@dataclass(frozen=True)
class GroundTruth:
    """One ground-truth item, in the form the matching needs.

    ``start``/``end`` bound the best response time: an event span for interval tasks, and
    ``start == end == t*`` otherwise (for TG, t* is the segment end). ``segment`` is the TG
    ground-truth segment used for IoU, ``None`` for other tasks.
    """

    text: str
    start: float
    end: float
    segment: tuple[float, float] | None = None


@dataclass(frozen=True)
class Reference:
    """A validated reference: ground-truth items sorted by t* (span start for interval tasks)."""

    id: str
    task: str
    question: str
    question_time: float
    items: tuple[GroundTruth, ...]


def seconds(value, field: str) -> float:
    """A finite, non-negative number of seconds (bools are not numbers here)."""
    if type(value) is float and 0 <= value < math.inf:  # the common case, checked fast
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(f"field '{field}' must be a number of seconds, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise FormatError(f"field '{field}' must be a finite number >= 0, got {value!r}")
    return value


def _sample_id(value) -> str:
    # Integer ids are accepted (some annotation sets number their samples) and compared as text.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise FormatError(f"field 'id' must be a non-empty string, got {value!r}")
    return str(value)


def _has(answer: dict, key: str) -> bool:
    # Arrow (evaluate / datasets) fills a missing struct field with None: treat None as absent.
    return answer.get(key) is not None


def validate_reference(obj) -> Reference:
    """Check one reference and return it parsed; raise :class:`FormatError` naming the problem."""
    if not isinstance(obj, dict):
        raise FormatError(f"a reference must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in REFERENCE_FIELDS if f not in obj]
    if missing:
        raise FormatError(
            f"reference is missing field(s) {missing}; every reference needs {list(REFERENCE_FIELDS)}"
        )
    sample_id = _sample_id(obj["id"])
    task = obj["task"]
    if task not in TASKS:
        raise FormatError(f"unknown task code {task!r}; use one of {list(TASKS)}")
    if not isinstance(obj["question"], str):
        raise FormatError(f"field 'question' must be a string, got {obj['question']!r}")
    question_time = seconds(obj["question_time"], "question_time")
    if not isinstance(obj["video"], str):
        raise FormatError(f"field 'video' must be a string (a path or name), got {obj['video']!r}")
    seconds(obj["duration"], "duration")
    answers = obj["answers"]
    if not isinstance(answers, list) or not answers:
        raise FormatError("field 'answers' must be a non-empty list of {text, time} or {text, start, end}")
    items = []
    for i, answer in enumerate(answers):
        where = f"answers[{i}]"
        if not isinstance(answer, dict):
            raise FormatError(f"{where} must be an object, got {answer!r}")
        if not isinstance(answer.get("text"), str):
            raise FormatError(f"{where}.text must be a string, got {answer.get('text')!r}")
        if task in TIMESTAMP_TASKS:
            if not _has(answer, "time"):
                raise FormatError(f"{where} needs 'time' (the best response time t*) for task {task}")
            t = seconds(answer["time"], f"{where}.time")
            items.append(GroundTruth(answer["text"], t, t))
            continue
        if not (_has(answer, "start") and _has(answer, "end")):
            raise FormatError(f"{where} needs 'start' and 'end' (seconds) for task {task}")
        start = seconds(answer["start"], f"{where}.start")
        end = seconds(answer["end"], f"{where}.end")
        if end < start:
            raise FormatError(f"{where} has end {end} before start {start}; swap them")
        if task in SEGMENT_TASKS:
            items.append(GroundTruth(answer["text"], end, end, (start, end)))
        else:
            items.append(GroundTruth(answer["text"], start, end))
    # Ground-truth items are visited in order of t* (span start); ties keep the file's order.
    items.sort(key=lambda g: g.start)
    return Reference(sample_id, task, obj["question"], question_time, tuple(items))


def validate_predictions(obj) -> list[Prediction]:
    """Check one sample's list of ``{time, text}`` and return it sorted by time (stable)."""
    if not isinstance(obj, list):
        raise FormatError(f"predictions must be a list of {{time, text}} objects, got {type(obj).__name__}")
    out = []
    for i, p in enumerate(obj):
        if not isinstance(p, dict) or "time" not in p or "text" not in p:
            raise FormatError(f"predictions[{i}] must be an object with 'time' and 'text', got {p!r}")
        if not isinstance(p["text"], str):
            raise FormatError(f"predictions[{i}].text must be a string, got {p['text']!r}")
        out.append(Prediction(seconds(p["time"], f"predictions[{i}].time"), p["text"]))
    out.sort(key=lambda p: p.time)
    return out


def validate_prediction_record(obj) -> tuple[str, list[Prediction]]:
    """Check one line of a predictions file: ``{"id", "predictions": [...]}``."""
    if not isinstance(obj, dict):
        raise FormatError(f"a prediction record must be a JSON object, got {type(obj).__name__}")
    for field in ("id", "predictions"):
        if field not in obj:
            raise FormatError(
                f'prediction record is missing field \'{field}\'; write {{"id", "predictions"}}'
            )
    return _sample_id(obj["id"]), validate_predictions(obj["predictions"])
