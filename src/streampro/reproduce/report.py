"""The report of a run (``results.json``, ``results.md``, plots) and ``--compare`` of finished runs.

The final model is chosen by VALIDATION W-Avg F1, never by test. A model *works* on a task when it
beats the fixed-time baseline and loses F1 when its frames are shuffled in time (docs/reproduce.md,
"Controls"); bootstrap intervals say how much of the test table is the few test clips per task.
"""

from __future__ import annotations

import json
from pathlib import Path

from streampro.dataset_scripts.manifest import write_text_atomic
from streampro.errors import UserError
from streampro.jsonl import read_jsonl
from streampro.reproduce.baseline import fixed_time_baseline
from streampro.reproduce.run import GRPO_MODELS, Run

# A model "works" on a task when it beats the fixed-time baseline AND its F1 under shuffled
# frames falls by at least this many points and this fraction of its own F1.
SHUFFLE_DROP_POINTS = 5.0
SHUFFLE_DROP_FRACTION = 0.25


# The paper's claims as paired comparisons on the same test clips: CB-Stream >= focal >= CE, GRPO >= SFT.
LOSS_PAIRS = (("sft-cb_stream", "sft-focal"), ("sft-focal", "sft-ce"), ("sft-cb_stream", "sft-ce"))


def bootstrap_intervals(run: Run, starts: dict[str, str]) -> dict:
    """How much of the test table is the 20 clips per task: a bootstrap interval of each model's W-Avg,
    and paired intervals of the differences the paper claims (each GRPO model against its SFT start)."""
    from streampro.metrics import paired_difference_interval, w_avg_interval

    per_sample = {m: run.report(m, "test")["per_sample"] for m in run.models}
    pairs = [p for p in (*LOSS_PAIRS, *starts.items()) if p[0] in per_sample and p[1] in per_sample]
    return {
        "w_avg": {m: list(w_avg_interval(s)) for m, s in per_sample.items()},
        "differences": [{"a": a, "b": b, **paired_difference_interval(per_sample[a], per_sample[b])}
                        for a, b in pairs],
    }


def collect(run: Run, baseline: dict) -> dict:
    """Every row of the results table (test split) plus validation W-Avg for model selection."""
    rows = {"fixed-time baseline": baseline["results"]}
    validation = {}
    for model in run.models:
        rows[model] = run.results(model, "test")
        rows[f"{model} (shuffled frames)"] = run.results(model, "test-shuffled")
        validation[model] = run.results(model, "validation")
    final = max(run.models, key=lambda m: (validation[m]["w_avg_f1"] or 0.0, -run.models.index(m)))
    works = {m: works_on(rows[m], rows[f"{m} (shuffled frames)"], rows["fixed-time baseline"]) for m in run.models}
    control = None
    if run.recipe.control_clips:
        # The control clips are scored as task OU (its window); reported on their own, never in W-Avg.
        control = {"fixed-time baseline": baseline["control"]["results"]["OU_f1"]}
        for model in run.models:
            control[model] = run.results(model, "control_test")["OU_f1"]
            control[f"{model} (shuffled frames)"] = run.results(model, "control_test-shuffled")["OU_f1"]
    starts = {m: (run.model_dir(m) / "start.txt").read_text().strip() for m in GRPO_MODELS if m in run.models}
    captions = run.results("captions", "caption_validation")["OU_f1"] if run.recipe.caption_steps else None
    motion = (run.results("captions", "motion_caption_validation")["EU_f1"]
              if run.recipe.caption_steps and run.recipe.motion_caption_clips else None)
    return {
        "rows": rows,
        "grpo_starts": starts,
        "test_intervals": bootstrap_intervals(run, starts),
        "control_f1": control,
        "caption_validation_f1": captions,
        "motion_caption_validation_f1": motion,
        "models": list(run.models),
        "validation_w_avg_f1": {m: validation[m]["w_avg_f1"] for m in run.models},
        "final_model": final,
        "works": works,
        "baseline_choice": baseline["choice"],
        "timings_s": run.timings,
        "settings": run.settings(),
    }


def works_on(results: dict, shuffled: dict, baseline: dict) -> dict[str, bool]:
    """Per task: does the model work ("Controls" of docs/reproduce.md: beats the baseline, falls under shuffling)?"""
    works = {}
    for task in tasks_of(results):
        f1, base = results[f"{task}_f1"], baseline.get(f"{task}_f1", 0.0)
        drop = f1 - shuffled.get(f"{task}_f1", 0.0)
        works[task] = bool(f1 > base and drop >= SHUFFLE_DROP_POINTS and drop >= SHUFFLE_DROP_FRACTION * f1)
    return works


def tasks_of(results: dict) -> list[str]:
    from streampro.metrics import TASKS

    return [t for t in TASKS if f"{t}_f1" in results]


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def format_results(summary: dict) -> str:
    from streampro.metrics import TASKS

    rows = summary["rows"]
    lines = ["# StreamPro-Synth reproduction (test split, exact judge, ×100)", "",
             f"Run: {run_label(summary['settings'])} (recipe.yaml has the whole recipe).", ""]
    head = "| model | " + " | ".join(f"{t} Time | {t} Acc | {t} P | {t} R | {t} F1" for t in TASKS)
    lines += [head + " | PU | TR | PA | Avg | W-Avg |", "|---" * (2 + 5 * len(TASKS) + 4) + "|"]
    for name, r in rows.items():
        cells = [_fmt(r.get(f"{t}_{k}")) for t in TASKS for k in ("time", "acc", "precision", "recall", "f1")]
        cells += [_fmt(r.get(k)) for k in ("PU_f1", "TR_f1", "PA_f1", "avg_f1", "w_avg_f1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-task F1 and controls", "",
              ("A model *works* on a task (✓) when its F1 beats the fixed-time baseline and falls by ≥ "
              f"{SHUFFLE_DROP_POINTS:g} points and ≥ {100 * SHUFFLE_DROP_FRACTION:g} % of itself when the frames are "
              "shuffled in time."), "",
              "| model | " + " | ".join(TASKS) + " | W-Avg | works on |", "|---" * (len(TASKS) + 3) + "|"]
    base, models = rows["fixed-time baseline"], summary["models"]
    lines.append("| fixed-time baseline | " + " | ".join(_fmt(base.get(f"{t}_f1")) for t in TASKS)
                 + f" | {_fmt(base.get('w_avg_f1'))} | – |")
    for model in models:
        r, s, w = rows[model], rows[f"{model} (shuffled frames)"], summary["works"][model]
        cells = [f"{_fmt(r.get(f'{t}_f1'))} / {_fmt(s.get(f'{t}_f1'))}{' ✓' if w.get(t) else ''}" for t in TASKS]
        lines.append(f"| {model} (plain / shuffled) | " + " | ".join(cells)
                     + f" | {_fmt(r.get('w_avg_f1'))} / {_fmt(s.get('w_avg_f1'))} | {sum(w.values())} of {len(w)} |")
    if summary.get("test_intervals"):
        intervals = summary["test_intervals"]
        lines += ["", "## How much of this is the test clips (bootstrap, 95 %)", "",
                  "Each task's test clips resampled with replacement (10,000 draws). Test W-Avg [interval]: "
                  + ", ".join(f"{m} {_fmt(rows[m].get('w_avg_f1'))} [{_fmt(lo)}, {_fmt(hi)}]"
                              for m, (lo, hi) in intervals["w_avg"].items()) + ".", "",
                  "| comparison (same clips, paired) | W-Avg difference | 95 % interval |", "|---|---|---|"]
        lines += [f"| {d['a']} − {d['b']} | {d['difference']:+.1f} | [{d['low']:+.1f}, {d['high']:+.1f}] |"
                  for d in intervals["differences"]]
    if summary.get("control_f1"):
        c = summary["control_f1"]
        lines += ["", "## Control task: \"the screen changes colour\" (trained on; not one of the seven, not in W-Avg)",
                  "", "| model | F1 | F1, shuffled frames |", "|---|---|---|",
                  f"| fixed-time baseline | {_fmt(c['fixed-time baseline'])} | – |"]
        lines += [f"| {m} | {_fmt(c[m])} | {_fmt(c[f'{m} (shuffled frames)'])} |" for m in models]
    if summary.get("caption_validation_f1") is not None:
        lines += ["", f"Caption stage: F1 {_fmt(summary['caption_validation_f1'])} on the validation captions (exact "
                  "match of the whole description; the later stages start from this model)."]
    if summary.get("motion_caption_validation_f1") is not None:
        lines += ["", f"Motion captions: F1 {_fmt(summary['motion_caption_validation_f1'])} on the validation motion "
                  "captions (the step named right, at its end)."]
    lines += ["", "Fixed-time baseline (chosen on validation): "
              + "; ".join(f"{t} at {c['time']:g} s `{c['answer']}`" for t, c in summary["baseline_choice"].items()), "",
              *([("GRPO started from: " + ", ".join(f"{m} ← {src}" for m, src in summary["grpo_starts"].items())), ""]
                if summary.get("grpo_starts") else []),
              "Validation W-Avg F1 (model selection): "
              + ", ".join(f"{m} {_fmt(v)}" for m, v in summary["validation_w_avg_f1"].items())
              + f" → final model **{summary['final_model']}**.", "",
              "Stage wall times (s): " + ", ".join(f"{k} {v:g}" for k, v in summary["timings_s"].items()), ""]
    return "\n".join(lines)


def run_label(settings: dict) -> str:
    """``seed S``, the recipe file's name unless it is ``default``, and the fields changed on top of it
    (``seed 1, paper_stages, control-first-steps 200``)."""
    name = Path(settings["recipe_file"]).stem
    changed = [f"{k.replace('_', '-')} {v}" for k, v in settings["changed"].items()]
    return ", ".join([f"seed {settings['seed']}", *([name] if name != "default" else []), *changed])


def compare_runs(run_dirs: list[Path]) -> str:
    """One markdown table of several finished runs (e.g. seeds): test W-Avg F1, shuffled W-Avg, tasks
    where the model works, control F1, validation W-Avg, per run and the mean — how far one seed's
    claims (orderings, "works") can be trusted."""
    summaries = []
    for d in run_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise UserError(f"{path} not found", f"finish `streampro reproduce --out {d}` first")
        summaries.append(json.loads(path.read_text()))
    names = [run_label(s["settings"]) for s in summaries]
    models = [m for m in summaries[0]["models"] if all(m in s["models"] for s in summaries)]
    # A mean over runs of different recipes would mix them: then the runs are only shown side by side.
    with_mean = len({json.dumps(s["settings"]["recipe"], sort_keys=True) for s in summaries}) == 1

    def mean(values: list) -> str:
        values = [v for v in values if v is not None]
        return _fmt(sum(values) / len(values)) if values else "–"

    def table(title: str, value) -> list[str]:
        head = names + ["mean"] * with_mean
        lines = [f"### {title}", "", "| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for model in ["fixed-time baseline", *models]:
            values = [value(s, model) for s in summaries]
            if all(v is None for v in values):
                continue
            cells = [v if isinstance(v, str) else _fmt(v) for v in values]
            numeric = [v for v in values if not isinstance(v, str)]
            lines.append(f"| {model} | " + " | ".join(cells + [mean(numeric)] * with_mean) + " |")
        return lines + [""]

    def works(s: dict, model: str):
        w = s["works"].get(model)
        return None if w is None else f"{sum(w.values())} ({' '.join(t for t, ok in w.items() if ok) or '–'})"

    lines = ["# StreamPro-Synth reproduction: runs side by side (test split, exact judge, ×100)", "",
             "Runs: " + ", ".join(f"{n} = `{d}`" for n, d in zip(names, run_dirs)), "",
             *([] if with_mean else ["The runs' recipes differ, so there is no mean column.", ""])]
    lines += table("Test W-Avg F1", lambda s, m: s["rows"][m]["w_avg_f1"])
    lines += table("Test W-Avg F1, frames shuffled",
                   lambda s, m: s["rows"].get(f"{m} (shuffled frames)", {}).get("w_avg_f1"))
    lines += table("Tasks where the model works (beats the baseline, loses under shuffling)", works)
    lines += table("Control task F1 (not in W-Avg)", lambda s, m: (s.get("control_f1") or {}).get(m))
    lines += table("Validation W-Avg F1 (model selection)", lambda s, m: s["validation_w_avg_f1"].get(m))
    lines += ["Final model (chosen on validation): "
              + "; ".join(f"{n}: {s['final_model']}" for n, s in zip(names, summaries)), ""]
    return "\n".join(lines)


def plot_task_f1(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from streampro.metrics import TASKS

    models = summary["models"]
    names = ["fixed-time baseline", *models]
    control = summary.get("control_f1")
    labels = list(TASKS) + (["control (not in W-Avg)"] if control else [])
    x = np.arange(len(labels))
    width = 0.8 / len(names)

    def values(name: str) -> list[float]:
        row = summary["rows"][name]
        return [row.get(f"{t}_f1") or 0.0 for t in TASKS] + ([control[name] or 0.0] if control else [])

    fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for i, name in enumerate(names):
        axes[0].bar(x + (i - len(names) / 2 + 0.5) * width, values(name), width, label=name)
    for i, model in enumerate(models):
        drop = [a - b for a, b in zip(values(model), values(f"{model} (shuffled frames)"))]
        axes[1].bar(x + (i - len(models) / 2 + 0.5) * width, drop, width, label=model, color=f"C{i + 1}")
    axes[0].set_ylabel("F1 (test)")
    axes[0].set_title("Per-task StreamPro-F1 on StreamPro-Synth test (exact judge)")
    axes[0].legend(fontsize=8, ncol=5)
    axes[1].axhline(SHUFFLE_DROP_POINTS, color="gray", lw=0.8, ls="--")
    axes[1].set_ylabel("F1 − F1 shuffled")
    axes[1].set_title("Shuffled-frames control: how much F1 each model loses when frames are shuffled")
    axes[1].set_xticks(x, labels)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timelines(run: Run, summary: dict, path: Path) -> None:
    """One test clip per task: ground-truth windows, t*, and each model's (and the baseline's) responses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from streampro.metrics import TASK_SPECS, TASKS

    test = read_jsonl(run.data / "bench" / "test.jsonl")
    preds = {m: {r["id"]: r for r in read_jsonl(run.eval_dir(m, "test") / "predictions.jsonl")} for m in run.models}
    clips = [next(r for r in test if r["task"] == t) for t in TASKS if any(r["task"] == t for r in test)]
    lanes = ["baseline", *run.models]
    fig, axes = plt.subplots(len(clips), 1, figsize=(11, 1.25 * len(clips) + 0.6), squeeze=False)
    for ax, ref in zip(axes[:, 0], clips):
        spec = TASK_SPECS[ref["task"]]
        for a in ref["answers"]:
            t_star = a.get("time", a.get("end"))
            lo = (a["start"] if "start" in a and ref["task"] in ("EU", "TP") else t_star) - spec.before
            hi = (a.get("end", t_star)) + spec.after
            ax.axvspan(lo, hi, color="tab:green", alpha=0.15)
            ax.axvline(t_star, color="tab:green", lw=1)
        ax.axvline(ref["question_time"], color="black", lw=0.8, ls=":")
        choice = summary["baseline_choice"][ref["task"]]
        ax.plot([choice["time"]], [0], "k|", ms=10, mew=2)
        for i, m in enumerate(run.models, 1):
            record = preds[m][ref["id"]]
            times = [p["time"] for p in record["predictions"]]
            ax.plot(times, [i] * len(times), "o", ms=5, color=f"C{i}")
        ax.set_yticks(range(len(lanes)), lanes, fontsize=7)
        ax.set_xlim(0, ref["duration"] + 1)
        ax.set_ylim(-0.7, len(lanes) - 0.3)
        ax.set_title(f"{ref['id']} ({ref['task']}): {ref['question'][:90]}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s)  — green: matching windows and t*; dotted: question; marks: responses")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: Run) -> dict:
    baseline = fixed_time_baseline(run)
    summary = collect(run, baseline)
    plot_task_f1(summary, run.out / "plots" / "reproduce_task_f1.png")
    plot_timelines(run, summary, run.out / "plots" / "reproduce_timelines.png")
    write_text_atomic(run.out / "results.md", format_results(summary))
    write_text_atomic(run.out / "results.json", json.dumps(summary, indent=2) + "\n")
    return summary
