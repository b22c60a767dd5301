"""Figures for ``streampro score --plot``: per-task F1 bars and per-sample timelines.

matplotlib runs on the Agg backend (no display needed); each function writes one PNG.
"""

from __future__ import annotations

from pathlib import Path

from streampro.metrics.f1 import DIMENSIONS, TASK_SPECS, SampleScore
from streampro.metrics.schema import TASKS, Prediction, Reference


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task_f1(results: dict, path: Path) -> Path:
    """Bar chart of F1 per task present, then per dimension, Avg and W-Avg."""
    plt = _pyplot()
    labels, values, colors = [], [], []
    for task in TASKS:
        if f"{task}_f1" in results:
            labels.append(task)
            values.append(results[f"{task}_f1"])
            colors.append("tab:blue")
    for dim in DIMENSIONS:
        if f"{dim}_f1" in results:
            labels.append(dim)
            values.append(results[f"{dim}_f1"])
            colors.append("tab:orange")
    labels += ["Avg", "W-Avg"]
    values += [results["avg_f1"], results["w_avg_f1"]]
    colors += ["tab:green", "tab:green"]
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(labels) + 1), 3.5))
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylabel("StreamPro-F1 (×100)")
    ax.set_ylim(0, max(100, max(values) * 1.1))
    ax.set_title(f"StreamPro-F1 over {results['num_samples']} samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_timeline(ref: Reference, preds: list[Prediction], score: SampleScore | None, path: Path) -> Path:
    """One sample: each ground-truth item on its own row (matching window shaded, span or t*
    drawn), the predictions on the bottom row coloured by outcome, the question time dashed."""
    plt = _pyplot()
    spec = TASK_SPECS[ref.task]
    n = len(ref.items)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * (n + 1)))
    for gi, g in enumerate(ref.items):
        y = n - gi
        ax.barh(
            y,
            g.end + spec.after - (g.start - spec.before),
            left=g.start - spec.before,
            height=0.6,
            color="tab:blue",
            alpha=0.18,
        )
        if g.segment is not None:  # TG: the ground-truth segment, t* at its end
            ax.barh(
                y, g.segment[1] - g.segment[0], left=g.segment[0], height=0.25, color="tab:gray", alpha=0.6
            )
        if g.end > g.start:
            ax.barh(y, g.end - g.start, left=g.start, height=0.6, color="tab:blue", alpha=0.55)
        else:
            ax.plot([g.start], [y], marker="|", markersize=18, color="tab:blue")
        ax.text(g.end + spec.after, y, f"  {g.text[:40]}", va="center", fontsize=7)
    kept = set(score.kept) if score else set()
    for pi, p in enumerate(preds):
        if score is None:
            color, label = "tab:gray", ""
        elif pi in kept:
            color, label = "tab:green", "kept"
        elif score.matched[pi] is not None:
            color, label = "tab:orange", "matched"
        else:
            color, label = "tab:red", "no window"
        ax.plot([p.time], [0], marker="v", markersize=9, linestyle="none", color=color, label=label or None)
        if score is not None and score.matched[pi] is not None:
            ax.plot([p.time, p.time], [0, n - score.matched[pi]], color=color, linewidth=0.8, alpha=0.6)
    ax.axvline(ref.question_time, color="black", linestyle="--", linewidth=0.8, label="question")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=7, ncols=4)
    ax.set_yticks(range(n + 1), ["predictions"] + [f"gt {gi}" for gi in reversed(range(n))])
    ax.set_ylim(-0.8, n + 1.2)
    ax.set_xlabel("time (s)")
    f1 = f"F1 {100 * score.f1:.1f}" if score else "not scored (judge failed)"
    ax.set_title(f"{ref.id} [{ref.task}] {f1}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
