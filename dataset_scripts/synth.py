"""StreamPro-Synth: procedural streaming videos with exact ground truth for all seven tasks.

Run::

    streampro data synth --out data/synth --n 140 --seed 0

Every clip is drawn from a seeded generator (clip i of task T depends only on ``(seed, T, i)``),
so the same seed gives byte-identical files. Clips are small (``--size`` ≤ 112 px, 12–24 s, a few
large high-contrast shapes on a dark background) and every answer is a short phrase from a small
closed vocabulary, so the ``exact`` judge is meaningful and a tiny CPU model can learn the tasks.

Timing: every event happens at a whole second t. A clip is encoded at ``ENCODE_FPS`` frames per
second, frame j showing the scene at time j / ENCODE_FPS, so the 1-fps frame of turn k (displayed at
k + 1 s) shows the scene at exactly k + 1 s; a change at t* is first visible on turn t* − 1, which
is where ``turn_index_for_time(t*)`` puts the response. t* per task (docs/method.md §2): OU the change, AA
the anomaly onset, EU/TP the end of the event span, TG the segment end (answer ``"Ss - Es"``), GP the
completion of the previous step, RF impact − 3 s (constant walking speed ``RF_SPEED`` px/s).

Output (``OUT/``): ``videos/*.mp4``, ``raw/{split}.jsonl``, ``sft|rl|bench/{split}.jsonl``, the same rows
as Parquet shards ``sft|rl|bench/{split}-00000-of-00001.parquet`` (declared features) and a dataset
card ``README.md`` (configs ``sft`` (default), ``rl``, ``bench``) for ``datasets.load_dataset``.

Interruptions (``dataset_scripts/manifest.py``): ``OUT/manifest.json`` records the settings before
the first file and is marked complete after the last data file; every file is moved into place
only when whole. Running the same command again resumes (videos already in place are kept) and
gives the files of an uninterrupted run; a folder of other settings, or synth files without a
manifest, is refused, never overwritten in part.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from streampro.dataset_scripts import hub, manifest
from streampro.dataset_scripts.builders import build_records
from streampro.dataset_scripts.schema import TASKS, format_segment, to_reference, validate_raw

from streampro.jsonl import write_jsonl

logger = logging.getLogger(__name__)

ENCODE_FPS = 2  # frames per second in the files; the 1-fps samples fall on even frames
MIN_DURATION, MAX_DURATION = 12, 24  # seconds
SPLITS = ("train", "validation", "test")
SYNTH_ENTRIES = ("videos", "raw", "sft", "rl", "bench", "README.md")  # what a run writes (and `manifest.json`)
RF_SPEED = 5.0  # px/s at 112 px: the walker is 3 * RF_SPEED px from impact at the warning time
RF_LEAD = 3  # seconds between the warning and the impact (docs/method.md §2)

BACKGROUND = (24, 24, 32)
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 245),
    "yellow": (245, 215, 40),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("square", "circle", "triangle")
WHITE, GRAY, BLACK = (240, 240, 240), (150, 150, 150), (0, 0, 0)
FIRE_OUTER, FIRE_INNER = (255, 120, 0), (255, 230, 60)
GROUND = (120, 80, 40)

Render = Callable[[float], np.ndarray]


@dataclass
class Clip:
    """One generated clip: how to draw it and its ground truth (raw-schema fields)."""

    task: str
    duration: int
    question: str
    question_time: float
    answers: list[dict]
    render: Render
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


class Canvas:
    """Pixel grids of one frame size, and shape masks on them."""

    def __init__(self, size: int):
        self.size = size
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def blank(self) -> np.ndarray:
        img = np.empty((self.size, self.size, 3), np.uint8)
        img[:] = BACKGROUND
        return img

    def mask(self, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
        dx, dy = self.xx - cx, self.yy - cy
        if shape == "square":
            return (np.abs(dx) <= r) & (np.abs(dy) <= r)
        if shape == "circle":
            return dx * dx + dy * dy <= r * r
        if shape == "triangle":  # apex up, base 2r wide, 2r high
            return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2 + 0.5)
        raise ValueError(f"unknown shape {shape!r}")

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)


def _pick(rng: np.random.Generator, seq, k: int | None = None):
    if k is None:
        return seq[int(rng.integers(len(seq)))]
    return [seq[int(i)] for i in rng.choice(len(seq), size=k, replace=False)]


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(rng.integers(lo, hi + 1))


# --------------------------------------------------------------------------------------------
# Shapes acting on a 3x3 grid (EU, TP)
# --------------------------------------------------------------------------------------------

MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass
class Actor:
    shape: str
    color: str
    gx: int
    gy: int
    big: bool
    keys: list[tuple[float, float, float, float]] = field(default_factory=list)  # (t, x, y, r)

    def name(self) -> str:
        return f"the {self.color} {self.shape}"


def _grid_xy(canvas: Canvas, gx: int, gy: int) -> tuple[float, float]:
    cells = (0.25, 0.5, 0.75)
    return canvas.size * cells[gx], canvas.size * cells[gy]


def _radius(canvas: Canvas, big: bool) -> float:
    return canvas.size * (0.12 if big else 0.07)


def _possible_actions(actor: Actor, occupied: set[tuple[int, int]]) -> list[str]:
    acts = []
    for word, (dx, dy) in MOVES.items():
        nx, ny = actor.gx + dx, actor.gy + dy
        if 0 <= nx <= 2 and 0 <= ny <= 2 and (nx, ny) not in occupied:
            acts.append(f"moved {word}")
    acts.append("shrank" if actor.big else "grew")
    return acts


def _apply(actor: Actor, action: str) -> None:
    if action.startswith("moved "):
        dx, dy = MOVES[action.split()[1]]
        actor.gx, actor.gy = actor.gx + dx, actor.gy + dy
    else:
        actor.big = action == "grew"


def _schedule(rng: np.random.Generator, n: int, first_start: tuple[int, int],
              lengths: tuple[int, int] = (2, 3), gaps: tuple[int, int] = (1, 3)) -> list[tuple[int, int]]:
    """n non-overlapping spans [s, e] (lengths and gaps in seconds, inclusive ranges)."""
    spans, t = [], _randint(rng, *first_start)
    for _ in range(n):
        d = _randint(rng, *lengths)
        spans.append((t, t + d))
        t += d + _randint(rng, *gaps)
    return spans


def _place_at_rest(canvas: Canvas, actors: list[Actor]) -> None:
    """Start every actor's keyframes with its grid cell and size at time 0."""
    for a in actors:
        a.keys = [(0.0, *_grid_xy(canvas, a.gx, a.gy), _radius(canvas, a.big))]


def _play(canvas: Canvas, rng: np.random.Generator, actors: list[Actor], n_events: int,
          first_start: tuple[int, int]) -> list[dict]:
    """Give ``n_events`` scheduled actions to random actors; fill their keyframes; return the events."""
    _place_at_rest(canvas, actors)
    events = []
    for s, e in _schedule(rng, n_events, first_start):
        for _ in range(20):  # pick an actor and an action whose text is new (unique event texts)
            actor = _pick(rng, actors)
            occupied = {(b.gx, b.gy) for b in actors if b is not actor}
            action = _pick(rng, _possible_actions(actor, occupied))
            text = f"{actor.name()} {action}"
            if all(ev["text"] != text for ev in events):
                break
        else:  # pragma: no cover - 20 draws always find a new text with >= 2 actions per actor
            raise RuntimeError("could not draw a distinct event")
        x0, y0 = _grid_xy(canvas, actor.gx, actor.gy)
        actor.keys.append((float(s), x0, y0, _radius(canvas, actor.big)))
        _apply(actor, action)
        x1, y1 = _grid_xy(canvas, actor.gx, actor.gy)
        actor.keys.append((float(e), x1, y1, _radius(canvas, actor.big)))
        events.append({"text": text, "start": float(s), "end": float(e)})
    return events


def _actor_render(canvas: Canvas, actors: list[Actor]) -> Render:
    def render(t: float) -> np.ndarray:
        img = canvas.blank()
        for a in actors:
            ts, xs, ys, rs = (np.array(v, np.float64) for v in zip(*a.keys))
            x, y, r = (float(np.interp(t, ts, v)) for v in (xs, ys, rs))
            img[canvas.mask(a.shape, x, y, r)] = COLORS[a.color]
        return img

    return render


def _new_actors(rng: np.random.Generator, n: int) -> list[Actor]:
    shapes, colors = _pick(rng, SHAPES, n), _pick(rng, COLOR_NAMES, n)
    cells = _pick(rng, [(gx, gy) for gx in range(3) for gy in range(3)], n)
    return [Actor(s, c, gx, gy, bool(rng.integers(2))) for s, c, (gx, gy) in zip(shapes, colors, cells)]


# --------------------------------------------------------------------------------------------
# Task generators
# --------------------------------------------------------------------------------------------


def _duration_for(rng: np.random.Generator, last_event: float) -> int:
    """A clip length in [MIN, MAX] that leaves at least 2 s after the last event."""
    lo = max(MIN_DURATION, math.ceil(last_event) + 2)
    if lo > MAX_DURATION:
        raise RuntimeError(f"event at {last_event} s does not fit in {MAX_DURATION} s")
    return _randint(rng, lo, MAX_DURATION)


def make_eu(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """EU: one shape makes 2-3 steps (a one-cell move, growing or shrinking); describe each as it ends."""
    actors = _new_actors(rng, 1)
    events = _play(canvas, rng, actors, _randint(rng, 2, 3), (1, 4))
    duration = _duration_for(rng, events[-1]["end"])
    q = float(_randint(rng, 0, int(events[0]["end"]) - 1))
    return Clip("EU", duration, "Describe each step the shape takes as soon as the step is finished.", q,
                events, _actor_render(canvas, actors), {"actor": actors[0].name()})


def make_tp(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """TP: 2-3 shapes, three events; asked what happens after event X, the answer is the next event."""
    actors = _new_actors(rng, _randint(rng, 2, 3))
    events = _play(canvas, rng, actors, 3, (1, 6))
    i = _randint(rng, 0, 1)
    target, answer = events[i], events[i + 1]
    duration = _duration_for(rng, events[-1]["end"])
    q = float(_randint(rng, 0, int(answer["start"])))
    return Clip("TP", duration, f"What happens after {target['text']}?", q, [answer],
                _actor_render(canvas, actors), {"target": target["text"], "events": events})


def make_ou(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """OU: a shape changes colour, or a new shape appears, at t*; confirm it at once."""
    size = canvas.size
    shape = _pick(rng, SHAPES)
    c1, c2 = _pick(rng, COLOR_NAMES, 2)
    t_star = _randint(rng, 3, MAX_DURATION - 3)
    duration = _duration_for(rng, t_star)
    q = float(_randint(rng, 0, t_star - 2))
    cells = _pick(rng, [(gx, gy) for gx in range(3) for gy in range(3)], 2)
    x, y = _grid_xy(canvas, *cells[0])
    r = size * 0.12
    variant = _pick(rng, ("change", "appear"))
    if variant == "change":
        question = f"Tell me when the {shape} changes colour."
        text = f"the {c1} {shape} turned {c2}"

        def render(t: float) -> np.ndarray:
            img = canvas.blank()
            img[canvas.mask(shape, x, y, r)] = COLORS[c2 if t >= t_star else c1]
            return img
    else:
        question = "Tell me when a new shape appears."
        text = f"a {c1} {shape} appeared"
        # A second shape present from the start (half of the clips) is not new.
        other = None
        if rng.integers(2):
            other = (_pick(rng, [s for s in SHAPES if s != shape]), c2, *_grid_xy(canvas, *cells[1]))

        def render(t: float) -> np.ndarray:
            img = canvas.blank()
            if other is not None:
                img[canvas.mask(other[0], other[2], other[3], r)] = COLORS[other[1]]
            if t >= t_star:
                img[canvas.mask(shape, x, y, r)] = COLORS[c1]
            return img

    return Clip("OU", duration, question, q, [{"text": text, "time": float(t_star)}], render,
                {"variant": variant, "x": x, "y": y, "before": c1, "after": c2 if variant == "change" else None})


def make_aa(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """AA: a calm shape drifts; at t* a fire starts or an object falls off a shelf; alert at once."""
    size = canvas.size
    t_star = _randint(rng, 3, MAX_DURATION - 3)
    duration = _duration_for(rng, t_star)
    q = float(_randint(rng, 0, t_star - 2))
    variant = _pick(rng, ("fire", "fall"))
    mover_shape, mover_color = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
    period, amp, phase = float(_randint(rng, 6, 10)), size * 0.2, float(rng.uniform(0, 2 * math.pi))
    r = size * 0.08
    fx = size * (0.3 if rng.integers(2) else 0.7)  # where the fire / the falling object is
    fall_shape, fall_color = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
    shelf_y = size * 0.25

    def render(t: float) -> np.ndarray:
        img = canvas.blank()
        mx = size / 2 + amp * math.sin(2 * math.pi * t / period + phase)
        img[canvas.mask(mover_shape, mx, size * 0.5, r)] = COLORS[mover_color]
        if variant == "fire":
            if t >= t_star:
                outer = ((canvas.xx - fx) / (size * 0.2)) ** 2 + ((canvas.yy - size * 0.8) / (size * 0.17)) ** 2 <= 1
                inner = ((canvas.xx - fx) / (size * 0.1)) ** 2 + ((canvas.yy - size * 0.84) / (size * 0.09)) ** 2 <= 1
                img[outer] = FIRE_OUTER
                img[inner] = FIRE_INNER
        else:
            img[canvas.rect(fx - size * 0.15, shelf_y, fx + size * 0.15, shelf_y + 3)] = GRAY
            oy = size - r - 2 if t >= t_star else shelf_y - r - 1
            img[canvas.mask(fall_shape, fx, oy, r)] = COLORS[fall_color]
        return img

    text = "alert: a fire started" if variant == "fire" else "alert: an object fell"
    return Clip("AA", duration, "Alert me if anything unusual happens.", q,
                [{"text": text, "time": float(t_star)}], render, {"variant": variant, "x": fx})


def make_tg(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """TG: a named shape is visible during [s, e); give "Ss - Es" as soon as it disappears."""
    size = canvas.size
    s = _randint(rng, 2, 14)
    e = s + _randint(rng, 3, 8)
    duration = _duration_for(rng, e)
    q = float(_randint(rng, 0, s))
    target, distractor = _new_actors(rng, 2)
    r = size * 0.11
    tx, ty = _grid_xy(canvas, target.gx, target.gy)
    dx, dy = _grid_xy(canvas, distractor.gx, distractor.gy)
    # The distractor is visible all the time or during its own interval.
    d_span = (0.0, float(duration) + 1) if rng.integers(2) else tuple(sorted(map(float, rng.choice(duration, 2, replace=False))))

    def render(t: float) -> np.ndarray:
        img = canvas.blank()
        if d_span[0] <= t < d_span[1]:
            img[canvas.mask(distractor.shape, dx, dy, r)] = COLORS[distractor.color]
        if s <= t < e:
            img[canvas.mask(target.shape, tx, ty, r)] = COLORS[target.color]
        return img

    question = (f"When is {target.name()} on screen? Tell me its start and end time as soon as it disappears.")
    return Clip("TG", duration, question, q, [{"text": format_segment(s, e), "start": float(s), "end": float(e)}],
                render, {"x": tx, "y": ty, "color": target.color})


def make_gp(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """GP: blocks are stacked in the goal order; after each block lands, name the next one."""
    size = canvas.size
    n = _randint(rng, 3, 4)
    colors = _pick(rng, COLOR_NAMES, n)
    spans = _schedule(rng, n, (1, 5), lengths=(2, 2), gaps=(1, 2))
    duration = _duration_for(rng, spans[-1][1])
    q = float(_randint(rng, 0, spans[0][1] - 1))
    bw, bh = size * 0.4, size * 0.12
    floor = size - 4

    def render(t: float) -> np.ndarray:
        img = canvas.blank()
        img[canvas.rect(0, floor, size, size)] = GRAY
        for i, (s, e) in enumerate(spans):
            if t < s:
                continue
            y_rest = floor - (i + 1) * bh
            y = y_rest if t >= e else 2 + (y_rest - 2) * (t - s) / (e - s)
            img[canvas.rect(size / 2 - bw / 2, y, size / 2 + bw / 2, y + bh - 1)] = COLORS[colors[i]]
        return img

    goal = ", then ".join(colors)
    question = f"Goal: stack the blocks {goal}, bottom to top. Each time a block is placed, tell me the next step."
    answers = [{"text": f"next: place the {colors[i + 1]} block", "time": float(spans[i][1])} for i in range(n - 1)]
    answers.append({"text": "done: the tower is complete", "time": float(spans[-1][1])})
    return Clip("GP", duration, question, q, answers, render, {"colors": colors, "spans": spans})


def make_rf(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """RF: a walker moves right at constant speed toward a wall or a hole; warn 3 s before impact."""
    size = canvas.size
    scale = size / 112
    speed = RF_SPEED * scale
    r = size * 0.09
    ground = size * 0.75
    obstacle = _pick(rng, ("wall", "hole"))
    ox = size * float(rng.uniform(0.72, 0.82))
    x_imp = ox - r if obstacle == "wall" else ox  # wall: touching it; hole: centre over its edge
    max_move = int((x_imp - r - 2) / speed)
    t_move = _randint(rng, 5, max_move)  # seconds of walking before the impact
    t_imp = _randint(rng, max(t_move, RF_LEAD + 2), MAX_DURATION - 2)
    t_warn = t_imp - RF_LEAD
    duration = _duration_for(rng, t_imp)
    q = float(_randint(rng, 0, t_warn - 1))
    x_start, t0 = x_imp - speed * t_move, t_imp - t_move

    def render(t: float) -> np.ndarray:
        img = canvas.blank()
        img[canvas.rect(0, ground, size, ground + 6 * scale)] = GROUND
        if obstacle == "wall":
            img[canvas.rect(ox, ground - size * 0.4, ox + 8 * scale, ground)] = GRAY
        else:
            img[canvas.rect(ox, ground, ox + 22 * scale, ground + 6 * scale)] = BLACK
        x = x_start + speed * min(max(t - t0, 0.0), float(t_move))
        img[canvas.mask("circle", x, ground - r, r)] = WHITE
        return img

    question = "I am the white ball walking right. Warn me 3 seconds before I run into anything."
    return Clip("RF", duration, question, q, [{"text": f"warning: {obstacle} ahead, stop", "time": float(t_warn)}],
                render, {"obstacle": obstacle, "impact_time": t_imp, "speed_px_s": speed, "start_time": t0})


# The easy control task ("the screen changes colour", docs/method.md §6): trained on to switch vision on,
# reported on its own, never one of the seven tasks' splits or their W-Avg. Its references carry
# task "OU" (an object-understanding change, scored with OU's window) and ids ``synth-CC-*``.
CONTROL_TASK = "CC"
SCREEN_COLORS = {name: tuple(c // 2 for c in rgb) for name, rgb in COLORS.items()}  # dimmed full-screen tints


def make_cc(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """CC (control): the whole screen changes from one tint to another at t*; confirm it at once."""
    c1, c2 = _pick(rng, COLOR_NAMES, 2)
    t_star = _randint(rng, 3, MAX_DURATION - 3)
    duration = _duration_for(rng, t_star)
    q = float(_randint(rng, 0, t_star - 2))

    def render(t: float) -> np.ndarray:
        img = canvas.blank()
        img[:] = SCREEN_COLORS[c2 if t >= t_star else c1]
        return img

    return Clip("OU", duration, "Tell me when the screen changes colour.", q,
                [{"text": f"the screen turned {c2}", "time": float(t_star)}], render,
                {"control": "screen colour", "before": c1, "after": c2})


# Scene captions: one still frame of 1-3 shapes on the 3x3 grid and its description, asked as
# "Describe the shapes you see." and answered on the first turn. They teach a randomly initialised
# model the words for what the frames show (colour, shape, size, place) before any streaming task,
# the job a pretrained VLM's image-caption stage does. Their references carry task "OU" (a
# timestamped answer) and ids ``synth-CAP-*``; they are never part of the seven tasks' files.
CAPTION_TASK = "CAP"
CAPTION_QUESTION = "Describe the shapes you see."
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")


def make_caption(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """CAP (pretraining): a still scene of 1-3 shapes; its caption lists them in reading order."""
    actors = sorted(_new_actors(rng, _randint(rng, 1, 3)), key=lambda a: (a.gy, a.gx))
    _place_at_rest(canvas, actors)
    text = ", ".join(f"a {'big' if a.big else 'small'} {a.color} {a.shape} {ROWS[a.gy]} {COLUMNS[a.gx]}"
                     for a in actors)
    return Clip("OU", 1, CAPTION_QUESTION, 0.0, [{"text": text, "time": 1.0}], _actor_render(canvas, actors),
                {"caption": True, "shapes": len(actors)})


# Motion captions: 1-3 shapes, one of which makes one step (a one-cell move, growing or shrinking),
# named as it ends in the words of EU and TP (`the red square moved right`). Like the scene captions
# they are pretraining only: references with task "EU", ids ``synth-MCAP-*``, never in the seven
# tasks' files. They teach the action words the still captions cannot.
MOTION_CAPTION_TASK = "MCAP"
MOTION_CAPTION_QUESTION = "Tell me what the shapes do."


def make_motion_caption(canvas: Canvas, rng: np.random.Generator) -> Clip:
    """MCAP (pretraining): 1-3 shapes, one step by one of them from 1 s, named at the step's end."""
    actors = _new_actors(rng, _randint(rng, 1, 3))
    (event,) = _play(canvas, rng, actors, 1, (1, 1))
    return Clip("EU", int(event["end"]) + 1, MOTION_CAPTION_QUESTION, 0.0, [event], _actor_render(canvas, actors),
                {"motion_caption": True, "shapes": len(actors)})


GENERATORS: dict[str, Callable[[Canvas, np.random.Generator], Clip]] = {
    "EU": make_eu, "OU": make_ou, "AA": make_aa, "TP": make_tp, "TG": make_tg, "GP": make_gp, "RF": make_rf,
}
assert tuple(GENERATORS) == TASKS


def make_clip(task: str, index: int, seed: int, size: int = 112, silence_factor: float = 1.0) -> Clip:
    """Clip ``index`` of ``task`` (one of TASKS, CONTROL_TASK, CAPTION_TASK or MOTION_CAPTION_TASK): depends
    only on (seed, task, index, size) and, for the streaming tasks, ``silence_factor`` (:func:`stretch_clip`;
    caption clips are never stretched)."""
    if task == CAPTION_TASK:
        return make_caption(Canvas(size), np.random.default_rng([seed, len(TASKS) + 1, index]))
    if task == MOTION_CAPTION_TASK:
        return make_motion_caption(Canvas(size), np.random.default_rng([seed, len(TASKS) + 2, index]))
    code = len(TASKS) if task == CONTROL_TASK else TASKS.index(task)
    generator = make_cc if task == CONTROL_TASK else GENERATORS[task]
    clip = generator(Canvas(size), np.random.default_rng([seed, code, index]))
    if silence_factor == 1:
        return clip
    # Its own stream of draws (four seed words), so the clip's events are those of silence_factor 1.
    return stretch_clip(clip, silence_factor, np.random.default_rng([seed, code, index, 1]))


# --------------------------------------------------------------------------------------------
# The imbalance knob: longer streams, the same events (``--silence-factor``)
# --------------------------------------------------------------------------------------------

MAX_SILENCE_FACTOR = 50.0


def _busy_spans(clip: Clip) -> list[tuple[float, float]]:
    """Intervals [s, e) of the clip's original timeline into which no silent stretch may go.

    A stretch freezes the scene, so it must not cut a labelled motion (an EU / TP step, a GP block
    falling, the RF walk, whose constant speed times the warning) or lengthen a span the metric scores
    (EU / TP windows start at s). TG's answer *names* its segment (``"12s - 18s"``), so its stretches
    all come after the target disappears: its answer text stays the same.
    """
    meta = clip.meta
    if clip.task == "EU":
        return [(a["start"], a["end"]) for a in clip.answers]
    if clip.task == "TP":
        return [(ev["start"], ev["end"]) for ev in meta["events"]]
    if clip.task == "GP":
        return [(float(s), float(e)) for s, e in meta["spans"]]
    if clip.task == "RF":
        return [(float(meta["start_time"]), float(meta["impact_time"]))]
    if clip.task == "TG":
        return [(0.0, clip.answers[0]["end"])]
    return []  # OU, AA, the control task: instantaneous changes


def stretch_clip(clip: Clip, factor: float, rng: np.random.Generator) -> Clip:
    """The same clip in a longer stream: about ``factor`` times its supervised silent turns, the same responses.

    The supervised silent turns of a clip are its turns from the question's on that carry no response
    (docs/method.md §4). ``round((factor - 1) * silent)`` extra seconds are split at random over the whole
    seconds p from the question time to the end, outside :func:`_busy_spans`; at each chosen p the scene
    at p is held (frozen) for its share of seconds — silent stretches before, between and after the
    events. Every time of the clip (answers, event spans, ``meta`` times) moves by the seconds held before
    it; the question time, questions and answer texts stay. ``meta["holds"]`` lists ``[p, seconds]`` on the
    original timeline.
    """
    from streampro.dataset_scripts.schema import answer_time
    from streampro.modeling_streampro.time_streampro import num_turns, turn_index_for_time

    if not 1 <= factor <= MAX_SILENCE_FACTOR:
        raise ValueError(f"--silence-factor must be in [1, {MAX_SILENCE_FACTOR:g}], got {factor}")
    q = clip.question_time
    responses = {turn_index_for_time(answer_time(clip.task, a)) for a in clip.answers}
    silent = num_turns(clip.duration) - turn_index_for_time(q) - len(responses)
    extra = int(math.floor((factor - 1) * silent + 0.5))
    busy = _busy_spans(clip)
    points = [p for p in range(math.ceil(q), clip.duration + 1) if not any(s <= p < e for s, e in busy)]
    counts = rng.multinomial(extra, [1 / len(points)] * len(points)) if extra else [0] * len(points)
    holds = [(p, int(c)) for p, c in zip(points, counts) if c]

    def shift(t: float) -> float:  # a time of the clip on the stretched timeline
        return float(t + sum(h for p, h in holds if p < t))

    def original(t: float) -> float:  # the clip's time shown at stretched time t
        offset = 0
        for p, h in holds:
            if t <= p + offset:
                break
            if t <= p + offset + h:
                return float(p)
            offset += h
        return t - offset

    def moved(d: dict) -> dict:
        return {k: shift(v) if k in ("time", "start", "end") else v for k, v in d.items()}

    answers = [moved(a) for a in clip.answers]
    if clip.task == "TG":  # its answer names the segment: unchanged, because no stretch comes before its end
        assert answers == clip.answers
    meta = dict(clip.meta)
    if "events" in meta:
        meta["events"] = [moved(ev) for ev in meta["events"]]
    if "spans" in meta:
        meta["spans"] = [(int(shift(s)), int(shift(e))) for s, e in meta["spans"]]
    for key in ("impact_time", "start_time"):
        if key in meta:
            meta[key] = type(meta[key])(shift(meta[key]))
    meta["silence_factor"] = factor
    meta["holds"] = [[p, h] for p, h in holds]
    render = clip.render
    return Clip(clip.task, clip.duration + extra, clip.question, q, answers, lambda t: render(original(t)), meta)


def clip_frames(clip: Clip) -> list[np.ndarray]:
    """The encoded frames: frame j shows time j / ENCODE_FPS, up to and including the clip end."""
    return [clip.render(j / ENCODE_FPS) for j in range(clip.duration * ENCODE_FPS + 1)]


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


def split_counts(m: int) -> dict[str, int]:
    """80/10/10 of ``m`` clips of one task (validation and test get >= 1 clip once m >= 3)."""
    held = max(1, round(m * 0.1)) if m >= 3 else 0
    return {"train": m - 2 * held, "validation": held, "test": held}


def per_task_counts(n: int) -> dict[str, int]:
    """``n`` clips spread evenly over the seven tasks (the first tasks get the remainder)."""
    return {t: n // len(TASKS) + (1 if i < n % len(TASKS) else 0) for i, t in enumerate(TASKS)}


def generate(out_dir: str | os.PathLike, n: int = 140, seed: int = 0, size: int = 112,
             progress: bool = True, control: int = 0, captions: int = 0, motion_captions: int = 0,
             extra_train: int = 0, extra_validation: int = 0, silence_factor: float = 1.0) -> dict:
    """Write StreamPro-Synth to ``out_dir``; return the statistics that the card reports.

    ``control`` > 0 adds that many clips of the easy control task (``CONTROL_TASK``, split 80/10/10
    like a task): its training clips join ``sft/train.jsonl``, and all of them are also written to
    ``raw|bench/control_{split}.jsonl`` so they can be scored on their own. The seven tasks' raw,
    RL and bench files never contain them. ``captions`` > 0 adds that many scene-caption clips
    (``CAPTION_TASK``, 80/10/10), written only to ``raw|sft|bench/caption_{split}.jsonl`` for a
    pretraining stage; ``motion_captions`` > 0 likewise adds motion captions (``MOTION_CAPTION_TASK``) to
    ``raw|sft|bench/motion_caption_{split}.jsonl``.

    ``extra_train`` > 0 adds that many more training clips of the seven tasks (spread like ``n``),
    drawn after the ``n`` clips' indices and written last in the train files (after the control
    clips in ``sft/train.jsonl``): the validation and test splits, and the first training records,
    stay exactly those of the same ``n`` without them. ``extra_validation`` > 0 likewise adds validation
    clips, drawn after the extra training clips and written last in the validation files: a larger
    validation split makes model selection less noisy, and leaves the training and test files as they were.

    ``silence_factor`` K > 1 puts every clip of the seven tasks and the control task, in every split, in a
    longer stream (:func:`stretch_clip`): the same questions, events and answer texts, about K times the
    supervised silent turns, so the silence-to-response ratio is K times that of K = 1. K = 1 writes
    exactly the files of a call without it.
    """
    from tqdm import tqdm

    from streampro.video import encode_video

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    extra_counts = {"--control": control, "--captions": captions, "--motion-captions": motion_captions,
                    "--extra-train": extra_train, "--extra-validation": extra_validation}
    for flag, count in extra_counts.items():
        if count < 0:
            raise ValueError(f"{flag} must be >= 0, got {count}")
    if not (16 <= size <= 112) or size % 2:
        raise ValueError(f"--size must be an even number of pixels in [16, 112], got {size}")
    if not 1 <= silence_factor <= MAX_SILENCE_FACTOR:
        raise ValueError(f"--silence-factor must be in [1, {MAX_SILENCE_FACTOR:g}], got {silence_factor}")
    out = Path(out_dir)
    settings = {"n": n, "seed": seed, "size": size, "control": control, "captions": captions,
                "motion_captions": motion_captions, "extra_train": extra_train, "extra_validation": extra_validation}
    stretched = {"silence_factor": silence_factor} if silence_factor != 1 else {}  # K = 1: the files of today
    settings.update(stretched)
    # Refuse a folder of another run; resume an interrupted one (dataset_scripts/manifest.py).
    manifest.begin(out, "data synth", settings, data_entries=SYNTH_ENTRIES)
    for folder in (out, *(out / name for name in SYNTH_ENTRIES)):
        manifest.remove_stale_temporaries(folder)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    plan = []  # (split, task, index)
    counts_by_task = per_task_counts(n)
    if control:
        counts_by_task[CONTROL_TASK] = control
    if captions:
        counts_by_task[CAPTION_TASK] = captions
    if motion_captions:
        counts_by_task[MOTION_CAPTION_TASK] = motion_captions
    for task, m in counts_by_task.items():
        counts, i = split_counts(m), 0
        for split in SPLITS:
            for _ in range(counts[split]):
                plan.append((split, task, i))
                i += 1
    # Extra training, then validation clips continue each task's indices, so no clip of the n-clip splits
    # (nor any training clip when validation clips are added) changes.
    first_index = per_task_counts(n)
    for split, count in (("train", extra_train), ("validation", extra_validation)):
        for task, k in (per_task_counts(count) if count else {}).items():
            plan += [(split, task, first_index[task] + j) for j in range(k)]
            first_index[task] += k
    raw: dict[str, list[dict]] = {s: [] for s in SPLITS}
    extra_raw: dict[str, list[dict]] = {s: [] for s in SPLITS}
    pretraining = {CAPTION_TASK: ("caption", captions), MOTION_CAPTION_TASK: ("motion_caption", motion_captions)}
    extra: dict[str, dict[str, list[dict]]] = {t: {s: [] for s in SPLITS} for t in (CONTROL_TASK, *pretraining)}
    for split, task, i in tqdm(plan, desc="synth", unit="clip", disable=not progress):
        clip = make_clip(task, i, seed, size, silence_factor)
        sample_id = f"synth-{task}-{i:05d}"
        video = f"videos/{sample_id}.mp4"
        if not (out / video).is_file():  # present: whole (moved into place once encoded) and of these settings
            manifest.write_atomic(out / video, lambda tmp: encode_video(tmp, clip_frames(clip), ENCODE_FPS))
        sample = {
            "id": sample_id, "task": clip.task, "source": "streampro-synth", "video": video,
            "duration": float(clip.duration), "question": clip.question, "question_time": clip.question_time,
            "answers": clip.answers, "system": None,
            "meta": {"seed": seed, "index": i, "split": split, **clip.meta},
        }
        is_extra = task in TASKS and i >= counts_by_task[task]
        (extra_raw[split] if is_extra else extra[task][split] if task in extra else raw[split]).append(
            validate_raw(sample, where=sample_id))
    raw_control = extra[CONTROL_TASK]
    stats: dict = {"seed": seed, "n": n, "size": size, "control": control, "captions": captions,
                   "motion_captions": motion_captions, "extra_train": extra_train, "extra_validation": extra_validation,
                   **stretched, "splits": {}, "tasks": {}}
    for split in SPLITS:
        extras = extra_raw[split]
        write_jsonl(out / "raw" / f"{split}.jsonl", raw[split] + extras)
        sft_stats: Counter = Counter()
        sft = build_records("sft", raw[split], 1.0, sft_stats)
        if split == "train":
            sft += build_records("sft", raw_control[split], 1.0)
        sft += build_records("sft", extras, 1.0, sft_stats)
        write_jsonl(out / "sft" / f"{split}.jsonl", sft)
        write_jsonl(out / "rl" / f"{split}.jsonl", build_records("rl", raw[split] + extras, 1.0))
        write_jsonl(out / "bench" / f"{split}.jsonl", [to_reference(s) for s in raw[split] + extras])
        stats["splits"][split] = dict(sft_stats, clips=len(raw[split]) + len(extras))
        if control:
            write_jsonl(out / "raw" / f"control_{split}.jsonl", raw_control[split])
            write_jsonl(out / "bench" / f"control_{split}.jsonl", [to_reference(s) for s in raw_control[split]])
            stats["splits"][split]["control_clips"] = len(raw_control[split])
        for task, (name, count) in pretraining.items():
            if count:
                clips = extra[task][split]
                write_jsonl(out / "raw" / f"{name}_{split}.jsonl", clips)
                write_jsonl(out / "sft" / f"{name}_{split}.jsonl", build_records("sft", clips, 1.0))
                write_jsonl(out / "bench" / f"{name}_{split}.jsonl", [to_reference(s) for s in clips])
                stats["splits"][split][f"{name}_clips"] = len(clips)
    for task in TASKS:
        task_stats: Counter = Counter()
        clips = [s for split in SPLITS for s in raw[split] + extra_raw[split]]
        build_records("sft", [s for s in clips if s["task"] == task], 1.0, task_stats)
        stats["tasks"][task] = dict(task_stats)
    if not stats["splits"]["test"]["clips"]:
        logger.warning("--n %d gives no test clips (a task needs 3 clips for one validation and one test clip): "
                       "bench/test.jsonl is empty; use --n %d or more to evaluate on the test split",
                       n, 3 * len(TASKS))
    # The completion mark, then the card (``streampro reproduce`` takes a card as a finished data stage).
    card = _card(stats, out)  # writes the Parquet shards too
    manifest.finish(out, "data synth", settings)
    manifest.write_text_atomic(out / "README.md", card)
    return stats


_TASK_DOC = {
    "EU": "one shape makes 2–3 steps (a one-cell move on a 3×3 grid, growing or shrinking); answer each step "
          "(`the red square moved right`, `the blue circle grew`) at the step's end",
    "OU": "a shape changes colour (`the red square turned blue`) or a new shape appears (`a green circle "
          "appeared`); answer at the change",
    "AA": "a shape drifts calmly; suddenly a fire starts (`alert: a fire started`) or an object falls off a "
          "shelf (`alert: an object fell`); answer at onset",
    "TP": "2–3 shapes, three events; \"What happens after X?\" is answered with the next event at its end",
    "TG": "a named shape is on screen during [s, e) (a distractor shape may also come and go); answer "
          "`\"12s - 18s\"` when it disappears (t* = e)",
    "GP": "blocks drop onto a stack in the goal order given in the question; after each block lands, answer "
          "`next: place the green block` (after the last: `done: the tower is complete`)",
    "RF": f"a white ball walks right at a constant {RF_SPEED:g} px/s (at 112 px) toward a wall or a hole; answer "
          "`warning: wall ahead, stop` at impact − 3 s",
}


def _card(stats: dict, out: Path) -> str:
    """The dataset card; writes the Parquet shards of every config first (dataset_scripts/hub.py)."""
    configs = {kind: (kind, {s: f"{kind}/{s}.jsonl" for s in SPLITS}) for kind in ("sft", "rl", "bench")}
    # The extra clip sets are configs of their own (their JSONL files sit beside the main ones).
    extra_sets = [("control", ("bench",))] if stats.get("control") else []
    extra_sets += [(name, ("sft", "bench")) for name in ("caption", "motion_caption") if stats.get(f"{name}s")]
    for name, kinds in extra_sets:
        configs.update({f"{kind}_{name}": (kind, {s: f"{kind}/{name}_{s}.jsonl" for s in SPLITS}) for kind in kinds})
    rows = ["| task | clips | turns | response turns | silence turns | silence turns after the question |",
            "|---|---|---|---|---|---|"]
    for task, st in stats["tasks"].items():
        rows.append(f"| {task} | {st.get('records', 0)} | {st.get('turns', 0)} | {st.get('response_turns', 0)} | "
                    f"{st.get('silence_turns', 0)} | {st.get('silence_turns_from_question', 0)} |")
    split_line = ", ".join(f"{s}: {st['clips']} clips" for s, st in stats["splits"].items())
    extra_line = (f", plus {stats['extra_train']} more training clips (`--extra-train`), drawn after them and listed last "
                  "in the train files" if stats.get("extra_train") else "")
    if stats.get("extra_validation"):
        extra_line += (f", plus {stats['extra_validation']} more validation clips (`--extra-validation`), drawn after "
                       "those and listed last in the validation files")
    control = ""
    if stats.get("control"):
        per_split = ", ".join(f"{s}: {st['control_clips']}" for s, st in stats["splits"].items())
        control = f"""
## Control task (not one of the seven)
`--control {stats['control']}` added clips of an easy control task ({per_split}): the whole screen
changes from one dimmed tint to another (`the screen turned green`), asked as "Tell me when the
screen changes colour." (such a task switches a tiny model's vision on). Their
training clips are part of `sft/train.jsonl`; all of them are also in `raw|bench/control_{{split}}.jsonl`
(references with task `OU`, scored with OU's window, ids `synth-CC-*`) to be reported on their own.
They are in no other file, so the seven tasks' splits, RL data and benchmarks are unchanged.
"""
    if stats.get("captions"):
        control += f"""
## Scene captions (pretraining only)
`--captions {stats['captions']}` added one-second clips of a still scene of 1–3 shapes on the 3×3 grid,
asked "{CAPTION_QUESTION}" and answered on the first turn with their description in reading order
(`a big red triangle top left, a small blue circle middle centre`). They are only in
`raw|sft|bench/caption_{{split}}.jsonl` (ids `synth-CAP-*`, references with task `OU`).
"""
    if stats.get("motion_captions"):
        control += f"""
## Motion captions (pretraining only)
`--motion-captions {stats['motion_captions']}` added clips of 1–3 shapes, one of which makes one step
from 1 s (a one-cell move, growing or shrinking), asked "{MOTION_CAPTION_QUESTION}" and answered at
the step's end in EU's words (`the red square moved right`). They are only in
`raw|sft|bench/motion_caption_{{split}}.jsonl` (ids `synth-MCAP-*`, references with task `EU`).
"""
    if stats.get("silence_factor"):
        control += f"""
## Longer streams (`--silence-factor {stats['silence_factor']:g}`)
Every clip of the seven tasks and the control task is the clip of `--silence-factor 1` with silent
stretches added: at whole seconds from the question on, outside the labelled motions (EU / TP / GP
steps, the RF walk; for TG after the target disappears, since its answer names its segment), the
scene is held for a random share of `round((K - 1) × S)` seconds, S the clip's silent turns from the
question on. Questions, question times and answer texts are the same; every later time moves by the
seconds held before it (`meta.holds`: `[second, length]` on the original timeline). The silence-to-response
ratio from the question on is about {stats['silence_factor']:g} times that of `--silence-factor 1`
(table below); clips are longer than {MAX_DURATION} s.
"""
    tasks = "\n".join(f"- **{t}**: {d}." for t, d in _TASK_DOC.items())
    body = f"""\
Procedural streaming videos with exact ground truth for the seven StreamPro tasks, generated by
`streampro data synth --n {stats['n']} --seed {stats['seed']} --size {stats['size']}{f" --control {stats['control']}" if stats.get('control') else ""}{f" --captions {stats['captions']}" if stats.get('captions') else ""}{f" --motion-captions {stats['motion_captions']}" if stats.get('motion_captions') else ""}{f" --extra-train {stats['extra_train']}" if stats.get('extra_train') else ""}{f" --extra-validation {stats['extra_validation']}" if stats.get('extra_validation') else ""}{f" --silence-factor {stats['silence_factor']:g}" if stats.get('silence_factor') else ""}`. Same seed, same files.

Clips are {MIN_DURATION}–{MAX_DURATION} s, {stats['size']}×{stats['size']} px, H.264 at {ENCODE_FPS} fps
(frame j shows time j/{ENCODE_FPS} s), a few large saturated shapes on a dark background. Answers are
short phrases from a closed vocabulary (colours {', '.join(COLOR_NAMES)}; shapes {', '.join(SHAPES)}),
so exact-match judging is meaningful. Splits ({split_line}) are 80/10/10 per task, balanced across tasks{extra_line}.

## Tasks
{tasks}
{control}
Question times are drawn uniformly before the first answer, and event times vary widely across
clips, so answering at a fixed time scores poorly.

## How t* is computed
Every event happens at a whole second. The frame of turn k (tag `<k s-(k+1) s>`) is the scene at
k + 1 s, so a change at t* is first visible on turn t* − 1 = `turn_index_for_time(t*)`, where the
SFT response sits. t*: OU the change; AA the onset; EU/TP the end of the event span; TG the segment
end; GP the landing of the previous block; RF impact − {RF_LEAD} s, the impact time following from the
walker's constant speed and distance.

## Class balance (all splits, 1 fps)
{chr(10).join(rows)}

## Files
`videos/*.mp4`; `raw/{{split}}.jsonl` (the raw schema, with generator facts under `meta`);
configs `sft` (default; streaming conversations), `rl` (questions, answers, `rubric` slot) and
`bench` (StreamPro-F1 references): `datasets.load_dataset(DIR, "bench", split="test")`; the extra
clip sets above, when generated, are the configs `bench_control`, `sft_caption`, `bench_caption`,
`sft_motion_caption`, `bench_motion_caption`. Each config is one Parquet shard per split
(`{{kind}}/{{split}}-00000-of-00001.parquet`) beside the JSONL file the `streampro` commands read.

## License
Apache-2.0 (generated by StreamPro's own code; no third-party content).
"""
    return hub.write_dataset(out, configs, title="StreamPro-Synth", body=body, license_="apache-2.0",
                             tags=("synthetic",))
