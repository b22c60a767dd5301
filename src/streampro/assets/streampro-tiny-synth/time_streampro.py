"""StreamPro's time convention (docs/method.md §1): the one place that maps times to turns.

Self-contained Hub remote code with no torch import, so data tools and CLIs can use it cheaply.

At ``fps`` frames per second, turn k (0-based) covers ``[k / fps, (k + 1) / fps]``, is tagged
``<{k/fps}s-{(k+1)/fps}s>``, shows the frame sampled at the *end* of that interval, and a
response on turn k is timestamped ``(k + 1) / fps``. A ground-truth time t is placed on the
first turn whose time is ≥ t: ``k = max(0, ceil(t * fps) - 1)``. Data building, inference and
scoring all call :func:`turn_index_for_time` / :func:`turn_time`.
"""

from __future__ import annotations

import math

# Float tolerance so that 3.0000000001 s still lands on the turn ending at 3 s.
_TIME_EPS = 1e-6


def turn_time(turn_index: int, fps: float = 1.0) -> float:
    """Time (seconds) of turn ``turn_index``: the end of its interval, where its frame is sampled."""
    if turn_index < 0:
        raise ValueError(f"turn_index must be >= 0, got {turn_index}")
    return (turn_index + 1) / fps


def turn_index_for_time(t: float, fps: float = 1.0) -> int:
    """The first turn whose time is >= ``t`` (``max(0, ceil(t * fps) - 1)``)."""
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"time must be a finite number >= 0, got {t!r}")
    return max(0, math.ceil(t * fps - _TIME_EPS) - 1)


def _fmt_seconds(x: float) -> str:
    return f"{x:g}"


def time_tag(turn_index: int, fps: float = 1.0) -> str:
    """The ``<Xs-Ys>`` tag of a turn, e.g. ``<3s-4s>`` for turn 3 at 1 fps."""
    start = turn_index / fps
    return f"<{_fmt_seconds(start)}s-{_fmt_seconds(turn_time(turn_index, fps))}s>"


def num_turns(duration: float, fps: float = 1.0) -> int:
    """Number of turns (sampled frames) in a stream of ``duration`` seconds: frames at 1/fps, 2/fps, ... <= duration."""
    if duration <= 0:
        return 0
    return int(math.floor(duration * fps + _TIME_EPS))
