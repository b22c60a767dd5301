"""Temporal Grounding answers: parse a segment out of free text and score it by temporal IoU.

Models write segments in many forms: ``12.5s - 18s``, ``from 12 to 18 seconds``,
``00:12-00:18``, ``<12.0s-18.0s>``, ``[12, 18]``, ``between 1:02 and 1:10``, ``start: 12, end: 18``.
The parser looks, in this order, for

1. a range: two times joined by ``-``, ``–``, ``~``, ``to``, ``until``, ``and`` or ``through``;
2. a bracketed pair ``[12.0, 18.0]``;
3. an explicit ``start ... end ...`` pair;
4. otherwise the first two *marked* times (a clock ``mm:ss`` or a number with a seconds unit).

Bare numbers outside a range are ignored (``2 people walk in`` is not a time). A segment
written backwards is put in order. Anything else is a parse failure (``None``); the metric
scores it 0 and counts it.
"""

from __future__ import annotations

import re

_CLOCK = r"\d{1,2}:\d{1,2}(?::\d{1,2})?(?:\.\d+)?"
_NUMBER = r"\d+(?:\.\d+)?"
_TIME = rf"(?:{_CLOCK}|{_NUMBER})"
_UNIT = r"(?:s|secs?|seconds?)\b"
_JOIN = r"(?:-|–|—|~|to|until|till|and|through)"

_RANGE_RE = re.compile(
    rf"(?<![\w.:])(?P<a>{_TIME})\s*(?:{_UNIT})?\s*{_JOIN}\s*(?P<b>{_TIME})(?!\d|[.:]\d)", re.IGNORECASE
)
_BRACKET_RE = re.compile(
    rf"[\[(]\s*(?P<a>{_TIME})\s*(?:{_UNIT})?\s*,\s*(?P<b>{_TIME})\s*(?:{_UNIT})?\s*[\])]"
)
_START_END_RE = re.compile(
    rf"\bstart\w*\W{{0,20}}?(?P<a>{_TIME}).*?\bend\w*\W{{0,20}}?(?P<b>{_TIME})", re.IGNORECASE | re.DOTALL
)
_MARKED_RE = re.compile(rf"(?<![\w.:])(?:(?P<clock>{_CLOCK})|(?P<num>{_NUMBER})\s*{_UNIT})", re.IGNORECASE)


def _seconds(token: str) -> float:
    """``"75"`` -> 75.0, ``"1:15"`` -> 75.0, ``"01:01:15.5"`` -> 3675.5."""
    value = 0.0
    for part in token.split(":"):
        value = value * 60 + float(part)
    return value


def parse_segment(text: str) -> tuple[float, float] | None:
    """The (start, end) segment, in seconds, written in ``text``; ``None`` when there is none."""
    match = _RANGE_RE.search(text) or _BRACKET_RE.search(text) or _START_END_RE.search(text)
    if match:
        a, b = _seconds(match["a"]), _seconds(match["b"])
    else:
        marked = [_seconds(m["clock"] or m["num"]) for m in _MARKED_RE.finditer(text)]
        if len(marked) < 2:
            return None
        a, b = marked[0], marked[1]
    return (min(a, b), max(a, b))


def temporal_iou(pred: tuple[float, float], gt: tuple[float, float]) -> float:
    """Intersection over union of two segments; two identical zero-length segments give 1."""
    inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
    union = max(pred[1], gt[1]) - min(pred[0], gt[0])
    if union <= 0:
        return 1.0 if pred == gt else 0.0
    return inter / union
