"""Scoring a finished run and writing ``report.json``, ``report.md`` and ``plots/``.

Scoring is the metric package's own :func:`streampro.metrics.compute_streampro_f1` over the
samples that ran — or, for a benchmark suite (``--benchmark-suite``), the benchmark's official
scoring (``streampro.metrics.official.score_benchmark``: its own table, plus StreamPro-F1 on its
proactive samples); samples with an ``error`` are excluded from every average and listed (with
their reason) under ``errors`` — they are never scored as zeros. ``report.json`` depends only on
the predictions and the references, so a resumed or sharded run gives the same file as a plain one.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)


def _errors(records: list[dict], references: list[dict]) -> list[dict]:
    return [{"id": str(ref["id"]), "task": ref.get("task"), **record["error"]}
            for record, ref in zip(records, references) if record["error"] is not None]


def _error_summary(errors: list[dict]) -> dict:
    return {"count": len(errors), "by_kind": dict(sorted(Counter(e["kind"] for e in errors).items())),
            "samples": errors}


def _errors_markdown(report: dict) -> list[str]:
    if not report["errors"]["count"]:
        return []
    lines = ["", "## Errors", "", "| id | task | kind | message |", "|---|---|---|---|"]
    for e in report["errors"]["samples"]:
        message = str(e["message"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {e['id']} | {e['task']} | {e['kind']} | {message} |")
    return lines


def score_run(records: list[dict], references: list[dict], judge, *, strict: bool = False) -> dict:
    """The report dict: metric results, per-sample scores and the errored samples."""
    from streampro.metrics import compute_streampro_f1

    errors = _errors(records, references)
    preds, refs = [], []
    for record, ref in zip(records, references):
        if record["error"] is None:
            preds.append(record["predictions"])
            refs.append(ref)
    if refs:
        results = compute_streampro_f1(preds, refs, judge=judge, on_judge_failure="stop" if strict else "exclude",
                                       return_per_sample=True)
        per_sample = results.pop("per_sample")
    else:  # nothing could be scored: no F1 keys at all, rather than zeros
        results = {"num_samples": 0, "excluded_samples": 0, "judge_failures": 0, "parse_failures": 0}
        per_sample = []
    results["num_errors"] = len(errors)
    return {
        "results": results,
        "errors": _error_summary(errors),
        "num_benchmark_samples": len(references),
        "judge": judge.describe(),
        "per_sample": per_sample,
    }


def format_markdown(report: dict, config: dict) -> str:
    """The paper's layout as a markdown table: per task Time / Acc / P / R / F1; PU / TR / PA, Avg, W-Avg."""
    from streampro.metrics import DIMENSIONS, TASK_SPECS, TASKS

    results = report["results"]
    counts = Counter(s["task"] for s in report["per_sample"] if "f1" in s)
    lines = [
        "# StreamPro-F1 evaluation",
        "",
        f"- model: `{config['model']}`",
        f"- benchmark: `{config['benchmark']}` ({report['num_benchmark_samples']} samples)",
        f"- protocol: {config['protocol']}, judge: {report['judge'].get('name')}, fps: {config['fps']:g}",
        "",
    ]
    if results["num_samples"] == 0:
        lines.append("**No sample could be scored** (see the errors below).")
    else:
        lines += ["| Task | Dim | N | Time | Acc | P | R | F1 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for task in TASKS:
            if f"{task}_f1" in results:
                vals = [results[f"{task}_{k}"] for k in ("time", "acc", "precision", "recall", "f1")]
                lines.append(f"| {task} | {TASK_SPECS[task].dimension} | {counts[task]} | "
                             + " | ".join(f"{v:.1f}" for v in vals) + " |")
        dims = [d for d in DIMENSIONS if f"{d}_f1" in results]
        lines += ["", "| " + " | ".join(dims + ["Avg", "W-Avg"]) + " |", "|" + "---:|" * (len(dims) + 2),
                  "| " + " | ".join(f"{results[k]:.1f}" for k in [f"{d}_f1" for d in dims] + ["avg_f1", "w_avg_f1"])
                  + " |"]
    lines += [
        "",
        (
            f"Samples scored: {results['num_samples']}; errored (excluded from the averages): "
            f"{results['num_errors']}; excluded because the judge failed: {results['excluded_samples']}; "
            f"TG parse failures: {results['parse_failures']}."
        ),
    ]
    lines += _errors_markdown(report)
    return "\n".join(lines) + "\n"


def plot_p_response(ref, events: list[dict], predictions, path: Path) -> Path:
    """p_response (or p_yes of the decision tree) per frame, ground-truth windows shaded, responses marked."""
    from streampro.metrics import TASK_SPECS
    from streampro.metrics.plots import _pyplot

    plt = _pyplot()
    spec = TASK_SPECS[ref.task]
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for g in ref.items:
        ax.axvspan(g.start - spec.before, g.end + spec.after, color="tab:blue", alpha=0.15)
        if g.end > g.start:  # an event span
            ax.axvspan(g.start, g.end, color="tab:blue", alpha=0.4)
        else:  # a best response time t*
            ax.axvline(g.start, color="tab:blue", linewidth=2.5)
    points = [(e["t"], e["p"]) for e in events if e["p"] is not None]
    if points:
        ax.plot([t for t, _ in points], [p for _, p in points], marker=".", color="tab:purple", label="p_response")
    for p in predictions:
        ax.axvline(p.time, color="tab:green", linewidth=1.2, alpha=0.8)
    ax.axvline(ref.question_time, color="black", linestyle="--", linewidth=0.8, label="question")
    ax.plot([], [], color="tab:green", label="response")
    ax.fill_between([], [], color="tab:blue", alpha=0.15, label="ground-truth window")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("p_response")
    ax.legend(loc="upper left", fontsize=7, ncols=3)
    ax.set_title(f"{ref.id} [{ref.task}]: p_response against the ground-truth windows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(report: dict, records: list[dict], references: list[dict], judge, plot_dir: Path,
                num_timelines: int) -> list[Path]:
    """Per-task F1 bars and, for the first ``num_timelines`` scored samples, two timelines each."""
    from streampro.metrics.plots import plot_task_f1

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if report["results"]["num_samples"]:
        written.append(plot_task_f1(report["results"], plot_dir / "task_f1.png"))
    return written + write_timelines(records, references, judge, plot_dir, num_timelines)


def write_timelines(records: list[dict], references: list[dict], judge, plot_dir: Path,
                    num_timelines: int) -> list[Path]:
    """For the first ``num_timelines`` scored proactive samples, a timeline and a p_response plot each."""
    from streampro.metrics import JudgeError, streampro_f1_sample, validate_predictions, validate_reference
    from streampro.metrics.plots import plot_timeline

    written = []
    shown = 0
    for record, ref_obj in zip(records, references):
        if shown >= num_timelines:
            break
        if record["error"] is not None:
            continue
        ref, preds = validate_reference(ref_obj), validate_predictions(record["predictions"])
        try:
            score = streampro_f1_sample(record["predictions"], ref_obj, judge)
        except JudgeError as e:
            logger.warning("timeline of %s drawn without scores: %s", ref.id, e)
            score = None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ref.id)
        written.append(plot_timeline(ref, preds, score, plot_dir / f"timeline_{safe}.png"))
        written.append(plot_p_response(ref, record["events"], preds, plot_dir / f"p_response_{safe}.png"))
        shown += 1
    return written


def write_reports(out_dir: Path, records: list[dict], references: list[dict], judge, config: dict, *,
                  strict: bool = False, num_timelines: int = 4) -> dict:
    """Score and write ``report.json``, ``report.md`` and ``plots/``; return the report."""
    report = score_run(records, references, judge, strict=strict)
    report = {"config": config, **report}
    write_plots(report, records, references, judge, out_dir / "plots", num_timelines)
    _write_report_files(out_dir, report, format_markdown(report, config))
    return report


def _write_report_files(out_dir: Path, report: dict, markdown: str) -> None:
    """Write ``report.md`` then ``report.json``, each atomically and after the plots.

    ``report.json`` is the mark of a finished run (``streampro reproduce`` skips an evaluation that
    has one), so it comes last: a run killed before it is evaluated again, plots included.
    """
    from streampro.dataset_scripts.manifest import write_text_atomic

    write_text_atomic(out_dir / "report.md", markdown)
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# Benchmark suites (`streampro evaluate --benchmark-suite NAME`)
# --------------------------------------------------------------------------------------------


def _for_scorer(record: dict) -> dict:
    """The part of a run record the official scorer reads: ``{id, answer}`` or ``{id, predictions}``."""
    if "answer" in record:
        return {"id": record["id"], "answer": record["answer"]}
    return {"id": record["id"], "predictions": record["predictions"]}


def score_suite(benchmark: str, records: list[dict], references: list[dict], judge) -> dict:
    """The suite's report dict: the official scoring of the samples that ran, and the errored ones."""
    from streampro.metrics.official import score_benchmark

    errors = _errors(records, references)
    ran = [(record, ref) for record, ref in zip(records, references) if record["error"] is None]
    official = None
    if ran:
        official = score_benchmark(benchmark, [_for_scorer(record) for record, _ in ran], [ref for _, ref in ran],
                                   judge=judge)
    return {
        "benchmark": benchmark,
        "official": official,  # None when no sample could be scored (no zeros)
        "errors": _error_summary(errors),
        "num_benchmark_samples": len(references),
        "num_scored_samples": len(ran),
        "judge": judge.describe(),
    }


def format_suite_markdown(report: dict, config: dict) -> str:
    """The benchmark's official table (its task names as columns), StreamPro-F1 where it applies, the errors."""
    from streampro.metrics import TASKS

    official = report["official"]
    lines = [
        f"# {report['benchmark']} evaluation",
        "",
        f"- model: `{config['model']}`",
        f"- references: {', '.join(f'`{p}`' for p in config['benchmark'].split(os.pathsep))} "
        f"({report['num_benchmark_samples']} samples)",
        f"- protocol: {config['protocol']}, judge: {report['judge'].get('name')}, fps: {config['fps']:g}",
        "",
    ]
    if official is None:
        lines.append("**No sample could be scored** (see the errors below).")
    else:
        lines += ["## Official score", "", "```", official["table"].rstrip("\n"), "```", ""]
        f1 = official.get("streampro_f1")
        if f1 and f1.get("num_samples"):
            tasks = [t for t in TASKS if f"{t}_f1" in f1]
            lines += ["## StreamPro-F1 (proactive samples)", "",
                      "| " + " | ".join(tasks + ["Avg", "W-Avg"]) + " |", "|" + "---:|" * (len(tasks) + 2),
                      "| " + " | ".join(f"{f1[k]:.1f}" for k in [f"{t}_f1" for t in tasks] + ["avg_f1", "w_avg_f1"])
                      + " |", ""]
    lines.append(f"Samples scored: {report['num_scored_samples']}; errored (excluded from the scores): "
                 f"{report['errors']['count']}.")
    lines += _errors_markdown(report)
    return "\n".join(lines) + "\n"


def plot_official(results: dict, tasks: list[str], benchmark: str, path: Path) -> Path:
    """Bar chart of the official score per task, then the benchmark's averages."""
    from streampro.metrics.plots import _pyplot

    plt = _pyplot()
    labels = [t for t in tasks if t in results] + [k for k in results if k not in tasks]
    values = [float(results[k]) for k in labels]
    colors = ["tab:blue" if k in tasks else "tab:green" for k in labels]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 1), 3.5))
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_ylabel("score (×100)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{benchmark}: official score per task")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_suite_reports(out_dir: Path, benchmark: str, records: list[dict], references: list[dict], judge,
                        config: dict, *, num_timelines: int = 4) -> dict:
    """Score a suite run and write ``report.json``, ``report.md`` and ``plots/``; return the report."""
    from streampro.metrics.plots import plot_task_f1

    report = {"config": config, **score_suite(benchmark, records, references, judge)}
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    official = report["official"]
    if official is not None:
        numeric = {k: v for k, v in official["results"].items() if isinstance(v, (int, float))}
        plot_official(numeric, list(official["counts"]), benchmark, plot_dir / "official.png")
        f1 = official.get("streampro_f1")
        if f1 and f1.get("num_samples"):
            plot_task_f1(f1, plot_dir / "task_f1.png")
    proactive = [(rec, ref) for rec, ref in zip(records, references) if "predictions" in rec]
    write_timelines([r for r, _ in proactive], [r for _, r in proactive], judge, plot_dir, num_timelines)
    _write_report_files(out_dir, report, format_suite_markdown(report, config))
    return report
