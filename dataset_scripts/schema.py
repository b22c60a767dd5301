"""The raw sample schema: what every converter writes and every builder reads.

A **raw sample** is one question about one video with its timed ground truth (one JSON object
per line of a ``*.jsonl`` file)::

    {"id": "charades-sta:L12", "task": "TG", "source": "charades-sta",
     "video": "3MSZA.mp4", "duration": 30.4,
     "question": "...", "question_time": 0.0,
     "answers": [{"text": "24.3s - 30.4s", "start": 24.3, "end": 30.4}],
     "system": null, "meta": {...}}

It is a superset of the metric's reference format (issue 4); :func:`to_reference` gives that view.
Answers carry ``time`` (the best response time t* of docs/method.md §2) for the timestamp tasks OU, AA,
GP, RF, and ``start``/``end`` for EU/TP (the event span) and TG (the segment; t* is its end).
A timestamp answer may also carry ``start`` (0 <= start <= time): when the event it answers began.
The metric never reads it (:func:`to_reference` leaves it out); the SFT builder labels the turns from
it to t* Standby for three-state models (docs/data.md §3).
``system`` (optional) overrides the model's default system prompt; ``meta`` (optional) keeps
source-specific facts (e.g. ``duration_estimated``) and never reaches the built datasets.

Validation errors name the file, line and field (:class:`RawFormatError`).
"""

from __future__ import annotations

import logging
import os

# The task vocabulary lives in the metric (docs/method.md §2); re-exported for the data scripts.
from streampro.metrics.schema import (  # noqa: F401
    INTERVAL_TASKS,
    REFERENCE_FIELDS,
    SEGMENT_TASKS,
    TASKS,
    TIMESTAMP_TASKS,
    FormatError,
    seconds,
)

from streampro.jsonl import iter_jsonl

REQUIRED_FIELDS = ("id", "task", "video", "duration", "question", "question_time", "answers")
OPTIONAL_FIELDS = ("source", "system", "meta")


class RawFormatError(ValueError):
    """A raw sample does not follow the schema; the message names where and which field."""


def format_segment(start: float, end: float) -> str:
    """The canonical TG answer text, e.g. ``"12s - 18.5s"`` (seconds rounded to 0.1)."""
    return f"{round(float(start), 1):g}s - {round(float(end), 1):g}s"


def _number(value, field: str, where: str) -> float:
    try:
        return seconds(value, field)
    except FormatError as e:
        raise RawFormatError(f"{where}: {e}") from e


def answer_time(task: str, answer: dict) -> float:
    """The best response time t* of one answer: ``time``, or the span/segment end."""
    return float(answer["time"]) if task in TIMESTAMP_TASKS else float(answer["end"])


def validate_raw(sample, where: str = "sample") -> dict:
    """Check one raw sample; return it unchanged or raise :class:`RawFormatError`.

    ``where`` is the location prefix for messages, e.g. ``"train.jsonl:12"``.
    """
    if not isinstance(sample, dict):
        raise RawFormatError(f"{where}: a raw sample must be a JSON object, got {type(sample).__name__}")
    if "kind" in sample:
        raise RawFormatError(
            f"{where}: a real-time QA record (kind {sample['kind']!r}), not a raw sample with timed answers; "
            "pass benchmark references to `streampro score --benchmark` / `streampro evaluate`, not `data build`"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in sample]
    if missing:
        raise RawFormatError(f"{where}: missing field(s) {missing}; a raw sample needs {list(REQUIRED_FIELDS)}")
    unknown = sorted(set(sample) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise RawFormatError(
            f"{where}: unknown field(s) {unknown}; put source-specific facts under 'meta'"
        )
    if not isinstance(sample["id"], str) or not sample["id"]:
        raise RawFormatError(f"{where}: field 'id' must be a non-empty string, got {sample['id']!r}")
    task = sample["task"]
    if task not in TASKS:
        raise RawFormatError(f"{where}: field 'task' is {task!r}; use one of {list(TASKS)}")
    if not isinstance(sample["video"], str) or not sample["video"]:
        raise RawFormatError(f"{where}: field 'video' must be a non-empty path or name, got {sample['video']!r}")
    duration = _number(sample["duration"], "duration", where)
    if duration <= 0:
        raise RawFormatError(f"{where}: field 'duration' must be > 0 seconds, got {duration}")
    if not isinstance(sample["question"], str) or not sample["question"].strip():
        raise RawFormatError(f"{where}: field 'question' must be a non-empty string")
    q_time = _number(sample["question_time"], "question_time", where)
    if q_time > duration:
        raise RawFormatError(
            f"{where}: field 'question_time' {q_time} is after the end of the video ({duration} s)"
        )
    for key in ("source", "system"):
        if sample.get(key) is not None and not isinstance(sample[key], str):
            raise RawFormatError(f"{where}: field '{key}' must be a string or null, got {sample[key]!r}")
    if sample.get("meta") is not None and not isinstance(sample["meta"], dict):
        raise RawFormatError(f"{where}: field 'meta' must be an object or null")
    answers = sample["answers"]
    if not isinstance(answers, list) or not answers:
        raise RawFormatError(f"{where}: field 'answers' must be a non-empty list")
    for i, ans in enumerate(answers):
        field = f"answers[{i}]"
        if not isinstance(ans, dict):
            raise RawFormatError(f"{where}: field '{field}' must be an object, got {ans!r}")
        if not isinstance(ans.get("text"), str) or not ans["text"].strip():
            raise RawFormatError(f"{where}: field '{field}.text' must be a non-empty string")
        if task in TIMESTAMP_TASKS:
            if "time" not in ans or "end" in ans:
                raise RawFormatError(
                    f"{where}: field '{field}' needs 'time' (an optional 'start', no 'end') for task {task}"
                )
            t = _number(ans["time"], f"{field}.time", where)
            if t > duration:
                raise RawFormatError(f"{where}: field '{field}.time' {t} is after the video end {duration}")
            if "start" in ans:
                s = _number(ans["start"], f"{field}.start", where)
                if not 0 <= s <= t:
                    raise RawFormatError(
                        f"{where}: field '{field}.start' {s} must be in [0, time = {t}]: the event starts before "
                        "it is answered"
                    )
        else:
            if "start" not in ans or "end" not in ans or "time" in ans:
                raise RawFormatError(
                    f"{where}: field '{field}' needs 'start' and 'end' (and no time) for task {task}"
                )
            s = _number(ans["start"], f"{field}.start", where)
            e = _number(ans["end"], f"{field}.end", where)
            if e <= s:
                raise RawFormatError(f"{where}: field '{field}' has end {e} <= start {s}; spans must be non-empty")
            if e > duration:
                raise RawFormatError(f"{where}: field '{field}.end' {e} is after the video end {duration}")
        extra = sorted(set(ans) - {"text", "time", "start", "end"})
        if extra:
            raise RawFormatError(f"{where}: field '{field}' has unknown key(s) {extra}")
    return sample


def to_reference(sample: dict) -> dict:
    """The metric's reference view of a raw sample (issue 4 format; answers in t* order)."""
    task = sample["task"]
    answers = []
    for ans in sample["answers"]:
        if task in TIMESTAMP_TASKS:
            answers.append({"text": ans["text"], "time": float(ans["time"])})
        else:
            answers.append({"text": ans["text"], "start": float(ans["start"]), "end": float(ans["end"])})
    return {
        "id": sample["id"],
        "task": task,
        "question": sample["question"],
        "question_time": float(sample["question_time"]),
        "video": sample["video"],
        "duration": float(sample["duration"]),
        "answers": answers,
    }


def read_raw(path: str | os.PathLike) -> list[dict]:
    """Read and validate a raw JSONL file; ids must be unique.

    Real-time QA records (``kind``, from ``streampro data convert ovo-bench|streamingbench``) are
    not raw samples: they are left out, and their number is logged.
    """
    samples, seen, qa_records = [], {}, 0
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if isinstance(obj, dict) and "kind" in obj:
            qa_records += 1
            continue
        validate_raw(obj, where)
        if obj["id"] in seen:
            raise RawFormatError(f"{where}: field 'id' {obj['id']!r} repeats line {seen[obj['id']]}; ids must be unique")
        seen[obj["id"]] = lineno
        samples.append(obj)
    if qa_records:
        logging.getLogger(__name__).warning(
            "%s: %d real-time QA record(s) left out (score them with `streampro score --benchmark`)", path, qa_records)
    return samples
