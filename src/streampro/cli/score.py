"""``streampro score``: StreamPro-F1 of a predictions file against a references file.

    streampro score --predictions preds.jsonl --references refs.jsonl --judge lexical \\
        --out report.json --plot plots/

    streampro score --benchmark ovo-bench --predictions preds.jsonl --references ovo.jsonl --out report.json

Both files are JSONL (formats in :mod:`streampro.metrics.schema`). Every problem in them is
reported with its file and line before anything is scored, timing errors in the references
included (a question after the end of the video, an answer due before its question or after the
end). ``--benchmark`` scores a converted benchmark (``streampro data convert``) by its official
rules (:mod:`streampro.metrics.official`) and prints its own table. The LLM judge caches its scores on
disk, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streampro.errors import UserError
from streampro.metrics.inputs import add_judge_arguments  # stdlib-only module: cheap at `streampro --help`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions", required=True, type=Path, help="JSONL: {id, predictions: [{time, text}]}"
    )
    parser.add_argument("--references", required=True, type=Path, help="JSONL: one benchmark sample per line")
    parser.add_argument("--benchmark", choices=("ovo-bench", "streamingbench", "proactivevideoqa"),
                        help="Score a converted benchmark by its official rules (predictions: {id, answer} for "
                             "its questions, {id, predictions} for its proactive samples).")
    add_judge_arguments(parser)
    parser.add_argument(
        "--on-judge-failure",
        default="exclude",
        choices=("exclude", "stop"),
        help="A pair the judge could not score: exclude its sample (counted) or stop.",
    )
    parser.add_argument("--out", type=Path, help="Write the JSON report here.")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="Write per-task F1 and timeline PNGs here.")
    parser.add_argument("--plot-samples", help="Comma-separated sample ids to draw timelines for.")
    parser.add_argument(
        "--plot-first",
        type=int,
        default=5,
        help="Without --plot-samples: draw timelines of the first N samples (default 5).",
    )


def format_table(results: dict, per_sample: list[dict]) -> str:
    """The paper's layout: per task Time / Acc / P / R / F1, then dimensions, Avg, W-Avg."""
    from streampro.metrics import DIMENSIONS, TASK_SPECS, TASKS

    counts: dict[str, int] = {}
    for s in per_sample:
        if "f1" in s:
            counts[s["task"]] = counts.get(s["task"], 0) + 1
    lines = [f"{'task':<5}{'dim':<5}{'N':>6}{'Time':>8}{'Acc':>8}{'P':>8}{'R':>8}{'F1':>8}"]
    for task in TASKS:
        if f"{task}_f1" not in results:
            continue
        row = [results[f"{task}_{k}"] for k in ("time", "acc", "precision", "recall", "f1")]
        lines.append(
            f"{task:<5}{TASK_SPECS[task].dimension:<5}{counts[task]:>6}" + "".join(f"{v:>8.1f}" for v in row)
        )
    lines.append("")
    head = [d for d in DIMENSIONS if f"{d}_f1" in results]
    lines.append("".join(f"{d + ' F1':>8}" for d in head) + f"{'Avg':>8}{'W-Avg':>8}")
    lines.append(
        "".join(f"{results[d + '_f1']:>8.1f}" for d in head)
        + f"{results['avg_f1']:>8.1f}{results['w_avg_f1']:>8.1f}"
    )
    lines.append("")
    lines.append(
        f"samples scored: {results['num_samples']}, excluded (judge failed): {results['excluded_samples']}, "
        f"judge failures: {results['judge_failures']}, TG parse failures: {results['parse_failures']}"
    )
    return "\n".join(lines)


def _plot(args, predictions, references, results, judge) -> list[Path]:
    import logging

    from streampro.metrics import JudgeError, streampro_f1_sample, validate_predictions, validate_reference
    from streampro.metrics.plots import plot_task_f1, plot_timeline

    args.plot.mkdir(parents=True, exist_ok=True)
    written = [plot_task_f1(results, args.plot / "task_f1.png")]
    by_id = {str(r["id"]): (p, r) for p, r in zip(predictions, references)}
    if args.plot_samples:
        ids = [i.strip() for i in args.plot_samples.split(",") if i.strip()]
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise UserError(f"--plot-samples: ids {unknown} are not in {args.references}",
                            "pass ids of samples in the references file")
    else:
        ids = list(by_id)[: args.plot_first]
    for sample_id in ids:
        preds, ref = by_id[sample_id]
        try:
            score = streampro_f1_sample(preds, ref, judge)  # LLM judge: served from its cache
        except JudgeError as e:
            logging.getLogger(__name__).warning("timeline of %s drawn without scores: %s", sample_id, e)
            score = None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
        path = args.plot / f"timeline_{safe}.png"
        written.append(plot_timeline(validate_reference(ref), validate_predictions(preds), score, path))
    return written


def _check_reference_times(path: Path) -> None:
    """Timing errors of the references (:func:`~streampro.metrics.schema.reference_time_problems`), with file:line."""
    from streampro.jsonl import iter_jsonl
    from streampro.metrics.schema import reference_time_problems

    problems = []
    for lineno, obj in iter_jsonl(path, errors=[]):  # bad lines: the format check lists them with the rest
        try:
            found = reference_time_problems(obj)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a malformed line: the format check names it
        problems += [f"{path}:{lineno}: {p}" for p in found]
    if len(problems) == 1:
        raise UserError(problems[0], "fix the reference (times are seconds from the start of the video)")
    if problems:
        raise UserError(f"{len(problems)} timing errors in {path} (listed below)",
                        "fix each reference (times are seconds from the start of the video)",
                        details=tuple(problems[:30]) + ((f"... and {len(problems) - 30} more",)
                                                        if len(problems) > 30 else ()))


def _run_benchmark(args: argparse.Namespace) -> int:
    from streampro.metrics.inputs import judge_from_args, read_records
    from streampro.metrics.official import score_benchmark
    from streampro.metrics.schema import (
        FormatError,
        is_qa_record,
        validate_prediction_record,
        validate_qa_prediction,
        validate_qa_reference,
        validate_reference,
    )

    def parse_reference(obj):
        (validate_qa_reference if is_qa_record(obj) else validate_reference)(obj)
        return str(obj["id"]), obj

    def parse_prediction(obj):
        is_qa = isinstance(obj, dict) and "answer" in obj
        return (validate_qa_prediction(obj) if is_qa else validate_prediction_record(obj))[0], obj

    problems: list[str] = []  # every bad line of both files, reported together
    references = [record for _, record in read_records(args.references, parse_reference, problems).values()]
    predictions = [record for _, record in read_records(args.predictions, parse_prediction, problems).values()]
    if problems:
        raise UserError(problems[0] if len(problems) == 1 else f"{len(problems)} problems in the input files",
                        "fix the file and run again (formats: docs/data.md, Streaming benchmarks)",
                        details=tuple(problems[:30]) if len(problems) > 1 else ())
    if not references:
        raise UserError(f"{args.references}: no references", f"pass the output of `streampro data convert "
                        f"{args.benchmark} ...`")
    try:
        report = score_benchmark(args.benchmark, predictions, references, judge=judge_from_args(args))
    except FormatError as e:
        raise UserError.from_exception(e, "score each benchmark's converted references with its own --benchmark") from e
    print(report["table"])
    if args.out:
        out = {"benchmark": args.benchmark, "results": report["results"], "counts": report["counts"],
               "streampro_f1": report["streampro_f1"], "predictions": str(args.predictions),
               "references": str(args.references), "per_sample": report["per_sample"]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"report: {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from streampro.metrics import JudgeError, compute_streampro_f1
    from streampro.metrics.inputs import InputError, judge_from_args, load_inputs

    _check_reference_times(args.references)
    if args.benchmark:
        return _run_benchmark(args)
    try:
        predictions, references = load_inputs(args.predictions, args.references)
    except InputError as e:
        raise e.to_user_error() from e
    judge = judge_from_args(args)
    try:
        results = compute_streampro_f1(
            predictions,
            references,
            judge=judge,
            on_judge_failure=args.on_judge_failure,
            return_per_sample=True,
        )
    except JudgeError as e:  # --on-judge-failure stop
        raise UserError.from_exception(
            e, "check the judge endpoint, or pass --on-judge-failure exclude to score without the failed pairs"
        ) from e
    per_sample = results.pop("per_sample")
    if results["num_samples"] == 0:
        raise UserError(f"no sample could be scored: the judge failed on all {len(per_sample)}",
                        "check the judge endpoint (see the log above) and run again; scores are cached")
    print(format_table(results, per_sample))
    if args.out:
        report = {
            "results": results,
            "judge": judge.describe(),
            "predictions": str(args.predictions),
            "references": str(args.references),
            "per_sample": per_sample,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"report: {args.out}")
    if args.plot:
        written = _plot(args, predictions, references, {**results}, judge)
        print(f"plots: {len(written)} file(s) in {args.plot}")
    return 0
