"""StreamPro-F1 (docs/method.md §3) and the turn-level reward (docs/method.md §5) as plain functions.

The scoring maths of the ``evaluate`` module in this folder; it imports only the standard library
and its sibling files, so a copy of the folder (a Hub Space) runs it without the ``streampro``
package. The package re-exports it as :mod:`streampro.metrics.f1`; the ``streampro score``
command and the GRPO rewards call it. Every choice the paper leaves open is listed here, so it can
be found and changed in one place (docs/metric.md repeats the list).

A judge is any object with ``score_batch(requests) -> list[float | failure]``: a float in [0, 1],
or, where it could not score, an object with a ``reason`` (:class:`~.judges.JudgeFailure`). A
failure is recognised as "not a number", so judges built by another copy of these files (the
package's LLM judge passed to a Hub-loaded module) are read correctly.

Decisions
---------
D1  Windows and τ per task are :data:`TASK_SPECS` (docs/method.md §2 table). Windows are inclusive at
    both ends; :data:`TIME_EPS` absorbs float rounding (2.9999999 s is inside a window at 3 s).
D2  Interval tasks (EU, TP): Δt = 0 inside [s, e], else the distance to the nearer end; the
    window is [s, e + 3]. Timestamp tasks: Δt = |t_p − t*|.
D3  TG: t* is the ground-truth segment's end (window [t* − 3, t* + 3]); S_acc is the temporal
    IoU between the segment parsed from the answer text and the ground truth
    (``segments.py``). An unparseable answer gets S_acc = 0 and is counted
    in ``parse_failures``.
D4  RF: τ = 2 for a prediction before t*, 4 at or after it. The same "τ before / τ after" rule
    is written for every task (equal values elsewhere).
D5  Ground-truth items are ordered by t* (span start for interval tasks); ties keep the order of
    ``answers``. Predictions are ordered by time; ties keep the given order.
D6  F1 matching is prediction-first and greedy: each prediction goes to the first ground-truth
    item whose window contains it, and to nothing else. A ground-truth item keeps its highest
    S = S_time · S_acc; ties go to the earliest prediction. Unmatched predictions still count
    in N_pred.
D7  Per sample: P = ΣS / N_pred, R = ΣS / N_gt, F1 = 2PR / (P + R); all three are 0 when there
    are no predictions, F1 is 0 when P + R = 0.
D8  Aggregation (docs/method.md §3 Decision): P, R, F1 per sample, averaged per task. A task's Time and
    Acc are means over all its ground-truth items (pooled across samples) of the kept match's
    S_time and S_acc, 0 when unmatched. A dimension's F1 is the mean over its samples (the
    sample-weighted mean of its tasks); ``avg_f1`` is the plain mean of the dimensions present;
    ``w_avg_f1`` the mean over all samples. Reported on a 0-100 scale.
D9  Only matched (prediction, item) pairs are judged. LLM judge: S_acc = score / 5. A pair the
    judge could not score excludes the whole sample from every average (counted in
    ``judge_failures`` / ``excluded_samples``), or stops the run with ``on_judge_failure="stop"``.
    It is never scored 0.
D10 Turn-level reward: S' = S_time + S_acc (range [0, 2]) with one τ = :data:`TURN_TAU` = 8 for
    every task and both sides (no RF asymmetry). Ground-truth-first matching: for each item in
    the D5 order, among the still unmatched predictions inside its window take the highest S'
    (ties → earliest). Windows: [t* − τ, t* + τ]; Proactive Agency (GP, RF): [t* − τ, t*];
    interval tasks: [s − τ, e + τ] with the D2 Δt. R_turn = 2 ΣS' / (N_pred + N_gt).
D11 Responses emitted before ``question_time`` are scored like any other (the inference loop
    forces silence before the question, so they should not exist).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .judges import Judge, JudgeError, JudgeFailure, JudgeRequest, make_judge
from .schema import (
    TASKS,
    FormatError,
    GroundTruth,
    Prediction,
    Reference,
    validate_predictions,
    validate_reference,
)
from .segments import parse_segment, temporal_iou

TIME_EPS = 1e-6


@dataclass(frozen=True)
class TaskSpec:
    """Matching window and τ of one task, relative to t* (or to the span [s, e])."""

    dimension: str
    before: float  # the window opens this many seconds before t* (s)
    after: float  # ... and closes this many seconds after t* (e)
    tau_early: float  # τ for a prediction before t* (s)
    tau_late: float  # τ for a prediction at or after t* (e)


TASK_SPECS: dict[str, TaskSpec] = {
    "EU": TaskSpec("PU", before=0, after=3, tau_early=4, tau_late=4),  # [s, e + 3]
    "OU": TaskSpec("PU", before=3, after=3, tau_early=4, tau_late=4),  # [t − 3, t + 3]
    "AA": TaskSpec("PU", before=0, after=5, tau_early=6, tau_late=6),  # [t, t + 5]
    "TP": TaskSpec("TR", before=0, after=3, tau_early=4, tau_late=4),  # [s, e + 3]
    "TG": TaskSpec("TR", before=3, after=3, tau_early=4, tau_late=4),  # [t − 3, t + 3], t = segment end
    "GP": TaskSpec("PA", before=3, after=0, tau_early=4, tau_late=4),  # [t − 3, t]
    "RF": TaskSpec("PA", before=1, after=3, tau_early=2, tau_late=4),  # [t − 1, t + 3]
}
DIMENSIONS: dict[str, tuple[str, ...]] = {"PU": ("EU", "OU", "AA"), "TR": ("TP", "TG"), "PA": ("GP", "RF")}
PROACTIVE_TASKS = frozenset(DIMENSIONS["PA"])
TURN_TAU = 8.0


# --- timing ----------------------------------------------------------------------------------


def delta_t(t: float, item: GroundTruth) -> float:
    """Δt of D2: 0 inside [start, end], else the distance to the nearer end (|t − t*| for points)."""
    if t < item.start:
        return item.start - t
    if t > item.end:
        return t - item.end
    return 0.0


def time_score(t: float, item: GroundTruth, tau_early: float, tau_late: float) -> float:
    """S_time = max(0, 1 − Δt / τ), with τ chosen by the side of t* the prediction is on (D4)."""
    tau = tau_early if t < item.start else tau_late
    return max(0.0, 1.0 - delta_t(t, item) / tau)


def in_window(t: float, item: GroundTruth, before: float, after: float) -> bool:
    """Is ``t`` inside [start − before, end + after] (inclusive, D1)?"""
    return item.start - before - TIME_EPS <= t <= item.end + after + TIME_EPS


# --- matching (timing only; accuracy comes later, in one judge batch) ------------------------


def match_prediction_first(reference: Reference, predictions: list[Prediction]) -> list[int | None]:
    """D6: for each prediction (time order) the index of the first item whose window holds it."""
    spec = TASK_SPECS[reference.task]
    return [
        next(
            (gi for gi, g in enumerate(reference.items) if in_window(p.time, g, spec.before, spec.after)),
            None,
        )
        for p in predictions
    ]


def _turn_window(task: str, tau: float) -> tuple[float, float]:
    return (tau, 0.0) if task in PROACTIVE_TASKS else (tau, tau)


def turn_candidates(reference: Reference, predictions: list[Prediction], tau: float = TURN_TAU):
    """D10: every (prediction, item) pair whose time lies in the item's turn-reward window."""
    before, after = _turn_window(reference.task, tau)
    return [
        (pi, gi)
        for gi, g in enumerate(reference.items)
        for pi, p in enumerate(predictions)
        if in_window(p.time, g, before, after)
    ]


# --- accuracy --------------------------------------------------------------------------------


@dataclass
class _Accuracy:
    """S_acc for the pairs of one sample, and how many TG answers could not be parsed."""

    scores: dict[tuple[int, int], float | JudgeFailure] = field(default_factory=dict)
    parse_failures: int = 0

    def failures(self) -> list[JudgeFailure]:
        return [s for s in self.scores.values() if is_failure(s)]


def is_failure(score) -> bool:
    """A judge result that is not a score (a :class:`~.judges.JudgeFailure`, from any copy of it)."""
    return isinstance(score, bool) or not isinstance(score, (int, float))


def _resolve(judge: str | Judge) -> Judge:
    return make_judge(judge) if isinstance(judge, str) else judge


def score_accuracy(samples, judge: str | Judge) -> list[_Accuracy]:
    """S_acc for ``samples`` = [(reference, predictions, pairs)], with ONE judge batch for all.

    TG pairs are scored by IoU (D3); every other pair becomes a judge request (identical
    requests are sent once).
    """
    judge = _resolve(judge)
    results = [_Accuracy() for _ in samples]
    requests: dict[JudgeRequest, int] = {}
    pending = []  # (sample index, pair, request index)
    for si, (ref, preds, pairs) in enumerate(samples):
        if ref.task == "TG":
            segments = {}
            for pi, gi in pairs:
                if pi not in segments:
                    segments[pi] = parse_segment(preds[pi].text)
                    results[si].parse_failures += segments[pi] is None
                seg = segments[pi]
                results[si].scores[(pi, gi)] = (
                    0.0 if seg is None else temporal_iou(seg, ref.items[gi].segment)
                )
            continue
        for pi, gi in pairs:
            request = JudgeRequest(ref.question, preds[pi].text, ref.items[gi].text)
            pending.append((si, (pi, gi), requests.setdefault(request, len(requests))))
    if requests:
        judged = judge.score_batch(list(requests))
        if len(judged) != len(requests):
            raise RuntimeError(f"judge {judge!r} returned {len(judged)} scores for {len(requests)} requests")
        for s in judged:
            if not is_failure(s) and not 0.0 <= s <= 1.0:
                raise RuntimeError(f"judge {judge!r} returned {s!r}; scores must lie in [0, 1]")
        for si, pair, ri in pending:
            results[si].scores[pair] = judged[ri]
    return results


# --- per-sample scores ------------------------------------------------------------------------


@dataclass
class SampleScore:
    """StreamPro-F1 of one sample. Lists follow the time-sorted predictions / ordered items."""

    id: str
    task: str
    precision: float
    recall: float
    f1: float
    num_predictions: int
    item_time: list[float]  # per item: S_time of its kept match (0 when unmatched)
    item_acc: list[float]  # per item: S_acc of its kept match (0 when unmatched)
    kept: list[int | None]  # per item: index of the kept prediction
    matched: list[int | None]  # per prediction: the item it was matched to
    parse_failures: int = 0


def _f1_from_accuracy(ref: Reference, preds: list[Prediction], matched, acc: _Accuracy) -> SampleScore:
    spec = TASK_SPECS[ref.task]
    best: list[tuple[float, float, float, int] | None] = [None] * len(ref.items)  # (S, S_time, S_acc, pi)
    for pi, gi in enumerate(matched):
        if gi is None:
            continue
        s_time = time_score(preds[pi].time, ref.items[gi], spec.tau_early, spec.tau_late)
        s_acc = acc.scores[(pi, gi)]
        s = s_time * s_acc
        if best[gi] is None or s > best[gi][0]:  # strict: ties keep the earlier prediction
            best[gi] = (s, s_time, s_acc, pi)
    total = sum(b[0] for b in best if b is not None)
    n_pred, n_gt = len(preds), len(ref.items)
    precision = total / n_pred if n_pred else 0.0
    recall = total / n_gt
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return SampleScore(
        id=ref.id,
        task=ref.task,
        precision=precision,
        recall=recall,
        f1=f1,
        num_predictions=n_pred,
        item_time=[b[1] if b else 0.0 for b in best],
        item_acc=[b[2] if b else 0.0 for b in best],
        kept=[b[3] if b else None for b in best],
        matched=list(matched),
        parse_failures=acc.parse_failures,
    )


def _turn_from_accuracy(ref: Reference, preds: list[Prediction], acc: _Accuracy, tau: float) -> float:
    before, after = _turn_window(ref.task, tau)
    used: set[int] = set()
    total = 0.0
    for gi, g in enumerate(ref.items):
        best = None  # (S', pi)
        for pi, p in enumerate(preds):
            if pi in used or not in_window(p.time, g, before, after):
                continue
            s = time_score(p.time, g, tau, tau) + acc.scores[(pi, gi)]
            if best is None or s > best[0]:  # strict: ties keep the earlier prediction
                best = (s, pi)
        if best is not None:
            used.add(best[1])
            total += best[0]
    return 2 * total / (len(preds) + len(ref.items))


def _parse_inputs(predictions, reference) -> tuple[Reference, list[Prediction]]:
    ref = reference if isinstance(reference, Reference) else validate_reference(reference)
    return ref, validate_predictions(predictions)


def _raise_failures(ref: Reference, acc: _Accuracy):
    failures = acc.failures()
    if failures:
        raise JudgeError(f"sample {ref.id}: {len(failures)} judge call(s) failed, e.g. {failures[0].reason}")


def streampro_f1_sample(
    predictions: list[dict], reference: dict, judge: str | Judge = "lexical"
) -> SampleScore:
    """StreamPro-F1 of one sample: ``predictions`` = [{time, text}], ``reference`` as in
    ``schema.py``. Raises :class:`JudgeError` if the judge failed on a pair."""
    ref, preds = _parse_inputs(predictions, reference)
    matched = match_prediction_first(ref, preds)
    pairs = [(pi, gi) for pi, gi in enumerate(matched) if gi is not None]
    (acc,) = score_accuracy([(ref, preds, pairs)], judge)
    _raise_failures(ref, acc)
    return _f1_from_accuracy(ref, preds, matched, acc)


def turn_level_reward(
    predictions: list[dict], reference: dict, judge: str | Judge = "lexical", tau: float = TURN_TAU
) -> float:
    """R_turn of docs/method.md §5 (D10), in [0, 2]. Raises :class:`JudgeError` if the judge failed
    (a GRPO reward should then return ``None`` for that completion, not 0)."""
    ref, preds = _parse_inputs(predictions, reference)
    (acc,) = score_accuracy([(ref, preds, turn_candidates(ref, preds, tau))], judge)
    _raise_failures(ref, acc)
    return _turn_from_accuracy(ref, preds, acc, tau)


def turn_level_rewards(
    predictions: list[list[dict]],
    references: list[dict],
    judge: str | Judge = "lexical",
    tau: float = TURN_TAU,
) -> list[float | None]:
    """R_turn for many trajectories with ONE judge batch (what a GRPO step needs: G rollouts of
    B samples). ``None`` where the judge failed on a pair — GRPO's "not applicable", never 0."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} trajectories for {len(references)} references")
    parsed = [_parse_inputs(p, r) for p, r in zip(predictions, references)]
    accuracy = score_accuracy(
        [(ref, preds, turn_candidates(ref, preds, tau)) for ref, preds in parsed], judge
    )
    return [
        None if acc.failures() else _turn_from_accuracy(ref, preds, acc, tau)
        for (ref, preds), acc in zip(parsed, accuracy)
    ]


# --- the benchmark --------------------------------------------------------------------------


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def aggregate(scores: list[SampleScore]) -> dict[str, float | None]:
    """D8: per-task Time / Acc / P / R / F1, dimension F1, Avg and W-Avg, all ×100
    (Avg and W-Avg are ``None`` when no sample could be scored)."""
    by_task: dict[str, list[SampleScore]] = defaultdict(list)
    for s in scores:
        by_task[s.task].append(s)
    out: dict[str, float] = {}
    for task in TASKS:
        if task not in by_task:
            continue
        ss = by_task[task]
        out[f"{task}_time"] = 100 * _mean(t for s in ss for t in s.item_time)
        out[f"{task}_acc"] = 100 * _mean(a for s in ss for a in s.item_acc)
        out[f"{task}_precision"] = 100 * _mean(s.precision for s in ss)
        out[f"{task}_recall"] = 100 * _mean(s.recall for s in ss)
        out[f"{task}_f1"] = 100 * _mean(s.f1 for s in ss)
    dims = []
    for dim, tasks in DIMENSIONS.items():
        f1s = [s.f1 for task in tasks for s in by_task.get(task, [])]
        if f1s:
            out[f"{dim}_f1"] = 100 * _mean(f1s)
            dims.append(out[f"{dim}_f1"])
    # No scored sample (all excluded by judge failures): there is no score, not a score of 0.
    out["avg_f1"] = _mean(dims) if scores else None
    out["w_avg_f1"] = 100 * _mean(s.f1 for s in scores) if scores else None
    return out


def compute_streampro_f1(
    predictions: list[list[dict]],
    references: list[dict],
    judge: str | Judge = "lexical",
    on_judge_failure: str = "exclude",
    return_per_sample: bool = False,
) -> dict:
    """StreamPro-F1 over a benchmark: ``predictions[i]`` is the [{time, text}] list of sample
    ``references[i]``. Returns the D8 keys plus ``num_samples``, ``excluded_samples``,
    ``judge_failures``, ``parse_failures`` and, on request, ``per_sample`` (values in [0, 1])."""
    if on_judge_failure not in ("exclude", "stop"):
        raise ValueError(f"on_judge_failure must be 'exclude' or 'stop', got {on_judge_failure!r}")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} prediction lists for {len(references)} references; pass one per sample"
        )
    samples = []
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        try:
            ref, preds = _parse_inputs(pred, ref)
        except FormatError as e:
            raise FormatError(f"sample {i}: {e}") from None
        matched = match_prediction_first(ref, preds)
        samples.append((ref, preds, matched))
    accuracy = score_accuracy(
        [(ref, preds, [(pi, gi) for pi, gi in enumerate(m) if gi is not None]) for ref, preds, m in samples],
        judge,
    )
    scores, excluded, judge_failures, parse_failures, per_sample = [], 0, 0, 0, []
    for (ref, preds, matched), acc in zip(samples, accuracy):
        failures = acc.failures()
        parse_failures += acc.parse_failures
        if failures:
            if on_judge_failure == "stop":
                _raise_failures(ref, acc)
            judge_failures += len(failures)
            excluded += 1
            per_sample.append({"id": ref.id, "task": ref.task, "excluded": failures[0].reason})
            continue
        score = _f1_from_accuracy(ref, preds, matched, acc)
        scores.append(score)
        per_sample.append(
            {
                "id": ref.id,
                "task": ref.task,
                "precision": score.precision,
                "recall": score.recall,
                "f1": score.f1,
            }
        )
    result = aggregate(scores)
    result.update(
        num_samples=len(scores),
        excluded_samples=excluded,
        judge_failures=judge_failures,
        parse_failures=parse_failures,
    )
    if return_per_sample:
        result["per_sample"] = per_sample
    return result
