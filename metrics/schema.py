"""The reference and prediction formats shared by the metric, the data builders and evaluation.

The code is ``metrics/streampro_f1/schema.py`` (part of the self-contained ``evaluate`` module),
re-exported here.

The reference and prediction formats are documented there (a reference is one benchmark sample
with timed ``answers``; a prediction is ``{"id", "predictions": [{"time", "text"}, ...]}``).

A **real-time QA record** (OVO-Bench, StreamingBench; docs/data.md "Streaming benchmarks") is a
question asked at ``question_time`` about the stream so far, told apart by its ``kind``::

    {"id": "ovo-bench:0", "benchmark": "ovo-bench", "task": "EPM", "kind": "multiple_choice",
     "video": "a.mp4", "duration": 215.0, "question": "...", "question_time": 215.0,
     "options": ["...", "..."], "answer": "C", "group": null, "group_index": 0, "context": ""}

Its prediction is ``{"id": ..., "answer": "free text"}`` (:func:`validate_qa_reference`,
:func:`validate_qa_prediction`); ``kind`` is ``multiple_choice`` (``answer`` a letter A, B, ...
by the position of ``options``) or ``open`` (``answer`` the expected text, ``options`` null).
"""

from __future__ import annotations

from dataclasses import dataclass

from streampro.metrics.streampro_f1.schema import (
    INTERVAL_TASKS,
    REFERENCE_FIELDS,
    SEGMENT_TASKS,
    TASKS,
    TIMESTAMP_TASKS,
    FormatError,
    GroundTruth,
    Prediction,
    Reference,
    seconds,
    validate_prediction_record,
    validate_predictions,
    validate_reference,
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
    "QA_FIELDS",
    "QA_KINDS",
    "QAReference",
    "is_qa_record",
    "reference_time_problems",
    "validate_qa_prediction",
    "validate_qa_reference",
]

QA_KINDS = ("multiple_choice", "open")
# The fields of a real-time QA record, in the order the converters write them.
QA_FIELDS = ("id", "benchmark", "task", "kind", "video", "duration", "question", "question_time", "options",
             "answer", "group", "group_index", "context")
_QA_OPTIONAL = ("source", "meta")


@dataclass(frozen=True)
class QAReference:
    """A validated real-time QA record."""

    id: str
    benchmark: str
    task: str
    kind: str
    question: str
    question_time: float
    duration: float
    options: tuple[str, ...] | None
    answer: str
    group: str | None
    group_index: int


def is_qa_record(obj) -> bool:
    """Is this reference line a real-time QA record (rather than a timed-answer sample)?"""
    return isinstance(obj, dict) and "kind" in obj


def _string(obj: dict, field: str, *, empty: bool = False) -> str:
    value = obj[field]
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise FormatError(f"field '{field}' must be a {'' if empty else 'non-empty '}string, got {value!r}")
    return value


def validate_qa_reference(obj) -> QAReference:
    """Check one real-time QA record and return it parsed; raise :class:`FormatError` naming the problem."""
    if not isinstance(obj, dict):
        raise FormatError(f"a QA record must be a JSON object, got {type(obj).__name__}")
    missing = [f for f in QA_FIELDS if f not in obj]
    if missing:
        raise FormatError(f"QA record is missing field(s) {missing}; a QA record needs {list(QA_FIELDS)}")
    unknown = sorted(set(obj) - set(QA_FIELDS) - set(_QA_OPTIONAL))
    if unknown:
        raise FormatError(f"QA record has unknown field(s) {unknown}; put source-specific facts under 'meta'")
    if obj["kind"] not in QA_KINDS:
        raise FormatError(f"field 'kind' is {obj['kind']!r}; use one of {list(QA_KINDS)}")
    if isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int)) or obj["id"] == "":
        raise FormatError(f"field 'id' must be a non-empty string, got {obj['id']!r}")
    for field in ("benchmark", "task", "video", "question", "answer"):
        _string(obj, field)
    _string(obj, "context", empty=True)
    duration = seconds(obj["duration"], "duration")
    q_time = seconds(obj["question_time"], "question_time")
    options = obj["options"]
    if obj["kind"] == "multiple_choice":
        if not isinstance(options, list) or not 2 <= len(options) <= 26 or not all(
                isinstance(o, str) and o.strip() for o in options):
            raise FormatError(f"field 'options' must be a list of 2-26 non-empty strings, got {options!r}")
        letters = [chr(65 + i) for i in range(len(options))]
        if obj["answer"] not in letters:
            raise FormatError(f"field 'answer' must be one of the option letters {letters}, got {obj['answer']!r}")
        options = tuple(options)
    elif options is not None:
        raise FormatError(f"field 'options' must be null for an open question, got {options!r}")
    group = obj["group"]
    if group is not None and (not isinstance(group, str) or not group):
        raise FormatError(f"field 'group' must be null or a non-empty string, got {group!r}")
    index = obj["group_index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise FormatError(f"field 'group_index' must be an integer >= 0, got {index!r}")
    if obj.get("meta") is not None and not isinstance(obj["meta"], dict):
        raise FormatError("field 'meta' must be an object or null")
    return QAReference(str(obj["id"]), obj["benchmark"], obj["task"], obj["kind"], obj["question"], q_time,
                       duration, options, obj["answer"], group, index)


def validate_qa_prediction(obj) -> tuple[str, str]:
    """Check one line of a QA predictions file: ``{"id", "answer"}`` -> ``(id, answer)``."""
    if not isinstance(obj, dict) or "id" not in obj or "answer" not in obj:
        raise FormatError(f'a QA prediction must be an object {{"id", "answer"}}, got {obj!r}')
    if isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int)) or obj["id"] == "":
        raise FormatError(f"field 'id' must be a non-empty string, got {obj['id']!r}")
    if obj["answer"] is not None and not isinstance(obj["answer"], str):
        raise FormatError(f"field 'answer' must be a string (the model's reply), got {obj['answer']!r}")
    return str(obj["id"]), obj["answer"] or ""


def reference_time_problems(obj: dict) -> list[str]:
    """The timing errors of one reference (either kind), each naming the field; empty when fine.

    A question after the end of the video; an answer due (t*: ``time``, or a span's end) before
    the question; an answer ``time`` / span end after the end of the video. Callers add file:line
    (``streampro score``) or mark the sample invalid (``streampro evaluate``). Assumes the record
    passed its format check.
    """
    problems = []
    duration, q_time = float(obj["duration"]), float(obj["question_time"])
    if q_time > duration:
        problems.append(f"field 'question_time' {q_time:g} s is after the end of the video ({duration:g} s)")
    for i, ans in enumerate(obj.get("answers") or []):
        t = ans.get("time") if ans.get("time") is not None else ans.get("end")
        if t is None:
            continue
        field = "time" if ans.get("time") is not None else "end"
        if float(t) < q_time:
            problems.append(f"field 'answers[{i}].{field}' {float(t):g} s is before the question ({q_time:g} s)")
        if float(t) > duration:
            problems.append(f"field 'answers[{i}].{field}' {float(t):g} s is after the end of the video "
                            f"({duration:g} s)")
    return problems
