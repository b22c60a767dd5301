"""``streampro score``: StreamPro-F1 of a predictions file against a references file.

    streampro score --predictions preds.jsonl --references refs.jsonl --judge lexical \\
        --out report.json --plot plots/

Both files are JSONL (formats in :mod:`streampro.metrics.schema`). Every problem in them is
reported with its file and line before anything is scored. The LLM judge caches its scores on
disk, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streampro.metrics.judges import JUDGES  # stdlib-only module: cheap at `streampro --help`

MAX_ERRORS_SHOWN = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions", required=True, type=Path, help="JSONL: {id, predictions: [{time, text}]}"
    )
    parser.add_argument("--references", required=True, type=Path, help="JSONL: one benchmark sample per line")
    parser.add_argument(
        "--judge",
        default="lexical",
        choices=JUDGES,
        help="Answer-accuracy judge (default: lexical, an offline approximation).",
    )
    parser.add_argument("--lexical-method", default="token_f1", choices=("token_f1", "rougeL"))
    parser.add_argument(
        "--judge-base-url", help="llm judge: OpenAI-compatible API root, e.g. http://localhost:8000/v1"
    )
    parser.add_argument("--judge-model", help="llm judge: model name sent to the endpoint")
    parser.add_argument(
        "--judge-api-key-env",
        default="OPENAI_API_KEY",
        help="llm judge: environment variable holding the API key (default OPENAI_API_KEY)",
    )
    parser.add_argument(
        "--judge-cache",
        type=Path,
        help="llm judge: SQLite cache file (default $STREAMPRO_JUDGE_CACHE or ~/.cache/streampro)",
    )
    parser.add_argument("--judge-concurrency", type=int, default=16, help="llm judge: requests in flight")
    parser.add_argument("--judge-timeout", type=float, default=60.0, help="llm judge: seconds per request")
    parser.add_argument("--judge-retries", type=int, default=5, help="llm judge: retries per request")
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


class InputError(ValueError):
    """Problems in the input files; the message lists them with file and line."""


def _read_jsonl(path: Path, parse, errors: list[str]) -> dict[str, tuple[int, object]]:
    """id -> (line number, parsed record); problems are appended to ``errors``."""
    from streampro.metrics.schema import FormatError

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    records: dict[str, tuple[int, object]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(
                    f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); one JSON object per line"
                )
                continue
            try:
                sample_id, record = parse(obj)
            except FormatError as e:
                errors.append(f"{path}:{lineno}: {e}")
                continue
            if sample_id in records:
                errors.append(
                    f"{path}:{lineno}: duplicate id {sample_id!r} (first on line {records[sample_id][0]})"
                )
                continue
            records[sample_id] = (lineno, record)
    return records


def load_inputs(predictions_path: Path, references_path: Path) -> tuple[list[list[dict]], list[dict]]:
    """Read and validate both files; pair them by id in the references' order.

    Raises :class:`InputError` listing every problem found (file:line: what and how to fix).
    """
    from streampro.metrics.schema import validate_prediction_record, validate_reference

    def parse_reference(obj):
        validate_reference(obj)
        return str(obj["id"]), obj

    def parse_prediction(obj):
        sample_id, _ = validate_prediction_record(obj)
        return sample_id, obj["predictions"]

    errors: list[str] = []
    refs = _read_jsonl(references_path, parse_reference, errors)
    preds = _read_jsonl(predictions_path, parse_prediction, errors)
    for sample_id, (lineno, _) in refs.items():
        if sample_id not in preds:
            errors.append(
                f"{references_path}:{lineno}: id {sample_id!r} has no record in {predictions_path}; "
                f'add {{"id": {json.dumps(sample_id)}, "predictions": []}} if the model stayed silent'
            )
    for sample_id, (lineno, _) in preds.items():
        if sample_id not in refs:
            errors.append(
                f"{predictions_path}:{lineno}: id {sample_id!r} is not in {references_path}; remove it"
            )
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise InputError(f"{len(errors)} problem(s) in the input files:\n" + "\n".join(shown) + more)
    if not refs:
        raise InputError(f"{references_path}: no samples")
    ids = list(refs)
    return [preds[i][1] for i in ids], [refs[i][1] for i in ids]


def build_judge(args):
    from streampro.metrics import make_judge

    if args.judge == "lexical":
        return make_judge("lexical", method=args.lexical_method)
    if args.judge == "llm":
        if not args.judge_base_url or not args.judge_model:
            raise InputError(
                "--judge llm needs --judge-base-url (e.g. http://localhost:8000/v1) and --judge-model"
            )
        return make_judge(
            "llm",
            base_url=args.judge_base_url,
            model=args.judge_model,
            api_key_env=args.judge_api_key_env,
            cache_path=args.judge_cache,
            max_concurrency=args.judge_concurrency,
            timeout=args.judge_timeout,
            max_retries=args.judge_retries,
        )
    return make_judge(args.judge)


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
            raise InputError(f"--plot-samples: ids {unknown} are not in {args.references}")
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


def run(args: argparse.Namespace) -> int:
    from streampro.metrics import JudgeError, compute_streampro_f1

    try:
        predictions, references = load_inputs(args.predictions, args.references)
        judge = build_judge(args)
        results = compute_streampro_f1(
            predictions,
            references,
            judge=judge,
            on_judge_failure=args.on_judge_failure,
            return_per_sample=True,
        )
    except (ValueError, JudgeError) as e:  # InputError, FormatError, bad judge options
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_sample = results.pop("per_sample")
    if results["num_samples"] == 0:
        print(f"error: no sample could be scored: the judge failed on all {len(per_sample)}", file=sys.stderr)
        return 1
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
        try:
            written = _plot(args, predictions, references, {**results}, judge)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"plots: {len(written)} file(s) in {args.plot}")
    return 0
