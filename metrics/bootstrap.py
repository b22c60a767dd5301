"""Bootstrap intervals for W-Avg F1: how far a score moves with the clips a benchmark happened to draw.

W-Avg F1 is the mean of per-sample F1 (D8), so resampling samples is enough: each task's samples are
drawn with replacement, as many as it has (stratified, so every resample keeps the task mix), and
W-Avg is recomputed. A paired interval resamples the same clips for two models scored on the same
benchmark: it says whether one is better than the other on clips like these, which two separate
intervals cannot. Inputs are the ``per_sample`` lists of ``compute_streampro_f1(...,
return_per_sample=True)`` (``streampro evaluate`` writes them to ``report.json``); samples a judge could
not score (``excluded``) are left out, as they are from W-Avg.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _scored(per_sample: list[dict], where: str) -> dict[str, tuple[str, float]]:
    """``id -> (task, f1)`` of the scored samples; a repeated id is an error (pairs are matched by id)."""
    out: dict[str, tuple[str, float]] = {}
    for i, sample in enumerate(per_sample):
        if "excluded" in sample:
            continue
        for key in ("id", "task", "f1"):
            if key not in sample:
                raise ValueError(f"{where}: per_sample[{i}] has no {key!r}; pass the per_sample list of a "
                                 "StreamPro-F1 report (compute_streampro_f1(..., return_per_sample=True))")
        if sample["id"] in out:
            raise ValueError(f"{where}: sample id {sample['id']!r} appears twice in per_sample")
        out[sample["id"]] = (sample["task"], float(sample["f1"]))
    if not out:
        raise ValueError(f"{where}: no scored sample to resample")
    return out


def _resampled_means(values_by_task: dict[str, np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """W-Avg (×100) of ``resamples`` stratified resamples; ``values`` may be per-sample F1 or differences."""
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    n = 0
    for task in sorted(values_by_task):
        values = values_by_task[task]
        draws = rng.integers(0, len(values), size=(resamples, len(values)))
        total += values[draws].sum(axis=1)
        n += len(values)
    return 100 * total / n


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def w_avg_interval(per_sample: list[dict], resamples: int = 10_000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of W-Avg F1 (×100), samples resampled within each task."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for task, f1 in _scored(per_sample, "w_avg_interval").values():
        by_task[task].append(f1)
    return _interval(_resampled_means({t: np.asarray(v) for t, v in by_task.items()}, resamples, seed), level)


def paired_difference_interval(per_sample_a: list[dict], per_sample_b: list[dict], resamples: int = 10_000,
                               level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """W-Avg F1 of A minus B (×100) on the samples both scored, with a paired bootstrap interval.

    Returns ``difference``, ``low``, ``high`` and ``samples``. Both lists must hold the same benchmark:
    a sample id in one and not the other is an error unless a judge excluded it there.
    """
    a, b = _scored(per_sample_a, "model A"), _scored(per_sample_b, "model B")
    excluded = {s["id"] for s in [*per_sample_a, *per_sample_b] if "excluded" in s}
    unmatched = (a.keys() ^ b.keys()) - excluded
    if unmatched:
        raise ValueError(f"the two per_sample lists are not the same benchmark: {len(unmatched)} sample id(s) "
                         f"in only one, e.g. {sorted(unmatched)[0]!r}")
    by_task: dict[str, list[float]] = defaultdict(list)
    for sample_id in a.keys() & b.keys():
        task, f1_a = a[sample_id]
        if b[sample_id][0] != task:
            raise ValueError(f"sample {sample_id!r} is task {task} for model A and {b[sample_id][0]} for model B")
        by_task[task].append(f1_a - b[sample_id][1])
    arrays = {t: np.asarray(v) for t, v in by_task.items()}
    low, high = _interval(_resampled_means(arrays, resamples, seed), level)
    n = sum(len(v) for v in arrays.values())
    return {"difference": 100 * float(sum(v.sum() for v in arrays.values())) / n, "low": low, "high": high,
            "samples": n}
