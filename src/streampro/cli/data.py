"""``streampro data``: build StreamPro datasets.

    streampro data convert FORMAT ANNOTATIONS --out RAW.jsonl [--video-root DIR]
    streampro data build {sft,rl,bench} RAW.jsonl --out DIR [--split NAME] [--window-turns W --window-stride S]
    streampro data synth --out DIR [--n 140] [--seed 0] [--silence-factor 1]
    streampro data stats SFT.jsonl ...
    streampro data rubrics RL.jsonl --out RL_WITH_RUBRICS.jsonl --endpoint URL --model NAME

Argument parsing and glue only; the work is done by :mod:`streampro.dataset_scripts`
(``converters``, ``builders``, ``synth``, ``rubrics``). Errors in the inputs or options are
reported as ``streampro data <sub-command>: error: <what> — <fix>`` (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streampro.dataset_scripts.builders import DEFAULT_WINDOW_TURNS, KINDS
from streampro.dataset_scripts.converters import FORMATS
from streampro.dataset_scripts.schema import TASKS
from streampro.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for name, (add, run_sub, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_data_run=run_sub, _command=f"data {name}")
        add(p)


def run(args: argparse.Namespace) -> int:
    return int(args._data_run(args) or 0)


def _no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


# --------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=sorted(FORMATS), help="Annotation format of INPUT.")
    parser.add_argument("input", help="Annotation file.")
    parser.add_argument("--out", required=True, help="Output raw JSONL (appended to; re-running resumes).")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="StreamPro task (activitynet-captions: EU/AA/GP; streamo, proactivevideoqa: any; "
                             "ovo-bench, streamingbench: fixed per question, docs/data.md).")
    parser.add_argument("--video-root", default=None,
                        help="Folder holding the videos; each must exist there; missing durations are probed.")
    parser.add_argument("--video-ext", default=".mp4",
                        help="Extension added to video ids that have no video extension ('' for none).")
    parser.add_argument("--allow-missing-videos", action="store_true",
                        help="Keep samples whose video is not under --video-root (counted as missing_video).")
    _no_progress(parser)


def run_convert(args: argparse.Namespace) -> int:
    from streampro.dataset_scripts.converters import convert, format_summary

    if not Path(args.input).is_file():
        raise UserError(f"{args.input}: no such file", f"pass the {args.format} annotation file (docs/data.md)")
    try:
        stats = convert(
            args.format, args.input, args.out, task=args.task, video_root=args.video_root,
            video_ext=args.video_ext, allow_missing_videos=args.allow_missing_videos,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:  # RawFormatError, MissingVideoError, bad options
        raise UserError.from_exception(
            e, f"check that {args.input} is a complete {args.format} annotation file (docs/data.md)"
        ) from e
    print(f"{args.format} -> {args.out}\n{format_summary(stats)}")
    if not stats["written"] and not stats["already_done"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()) if k not in ("read", "written") and v)
        raise UserError(
            f"{args.input}: no sample converted ({stats['read']} read{'; ' + dropped if dropped else ''})",
            f"check that the file holds {args.format} annotations and that --task / --video-root fit it",
        )
    return 0


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="What to build: sft conversations, rl samples or bench references.")
    parser.add_argument("raw", help="Raw JSONL (from `streampro data convert` or `synth`).")
    parser.add_argument("--out", required=True, help="Output folder: OUT/{split}.jsonl and OUT/README.md.")
    parser.add_argument("--split", default="train", help="Split name of this file (default: train).")
    parser.add_argument("--fps", type=float, default=1.0, help="Frames (turns) per second (default: 1).")
    parser.add_argument("--window-turns", type=int, default=None, metavar="W",
                        help="sft: cut streams longer than W turns into the contexts the engine's window holds after "
                        f"each slide (default {DEFAULT_WINDOW_TURNS}, the engine's window_turns; 0: whole streams).")
    parser.add_argument("--window-stride", type=int, default=None, metavar="S",
                        help="sft: turns between two windows, the engine's evict_turns (default W // 4).")
    _no_progress(parser)


def run_build(args: argparse.Namespace) -> int:
    from streampro.dataset_scripts.builders import build, format_stats

    if not Path(args.raw).is_file():
        raise UserError(f"{args.raw}: no such file", "pass a raw JSONL from `streampro data convert` or `data synth`")
    try:
        window = {}
        if args.kind == "sft":
            turns = DEFAULT_WINDOW_TURNS if args.window_turns is None else args.window_turns
            window = {"window_turns": turns, "window_stride": args.window_stride}
        elif args.window_turns is not None or args.window_stride is not None:
            raise ValueError(f"--window-turns / --window-stride apply to `data build sft`, not {args.kind}")
        stats = build(args.kind, args.raw, args.out, split=args.split, fps=args.fps, progress=not args.no_progress,
                      **window)
    except ValueError as e:  # RawFormatError with file:line, bad --split / --fps
        raise UserError.from_exception(e, "fix the input or the option and run again") from e
    print(f"{args.kind}: {args.raw} -> {Path(args.out) / (args.split + '.jsonl')}\n{format_stats(stats)}")
    return 0


# --------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="Output folder.")
    parser.add_argument("--n", type=int, default=140, help="Number of clips over all tasks (default 140).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; the same seed gives identical files.")
    parser.add_argument("--size", type=int, default=112, help="Frame width and height in pixels (even, 16-112).")
    extras = {
        "--control": "the easy control task 'the screen changes colour' (training clips join "
                     "sft/train.jsonl; scored separately via bench/control_*.jsonl)",
        "--captions": "scene-caption clips (a still frame and its description) for caption pretraining; "
                      "written only to raw|sft|bench/caption_*.jsonl",
        "--motion-captions": "motion-caption clips (one shape makes one step, named at its end) for caption "
                             "pretraining; written only to raw|sft|bench/motion_caption_*.jsonl",
        "--extra-train": "training clips of the seven tasks after the --n clips (validation and test "
                         "unchanged); listed last in the train files",
        "--extra-validation": "validation clips of the seven tasks after those (training and test "
                              "unchanged); listed last in the validation files",
    }
    for flag, what in extras.items():
        parser.add_argument(flag, type=int, default=0, help=f"Also add this many clips: {what}.")
    parser.add_argument("--silence-factor", type=float, default=1.0, metavar="K",
                        help="Longer streams, same events and answers: about K times the silent turns from the "
                             "question on (1-50; default 1, the standard Synth; docs/data.md §5).")
    _no_progress(parser)


def run_synth(args: argparse.Namespace) -> int:
    from streampro.dataset_scripts.synth import generate

    try:
        stats = generate(args.out, n=args.n, seed=args.seed, size=args.size, progress=not args.no_progress,
                         control=args.control, captions=args.captions, motion_captions=args.motion_captions,
                         extra_train=args.extra_train, extra_validation=args.extra_validation,
                         silence_factor=args.silence_factor)
    except ValueError as e:  # an option out of range, named by its flag
        raise UserError.from_exception(e, "pass a value in the range `streampro data synth --help` gives") from e
    print(f"StreamPro-Synth -> {args.out}")
    for split, st in stats["splits"].items():
        print(f"  {split}: {st['clips']} clips, {st.get('response_turns', 0)} response turns, "
              f"{st.get('silence_turns', 0)} silence turns")
    return 0


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="SFT.jsonl",
                        help="SFT records (`streampro data build sft`, Synth's sft/{split}.jsonl).")


def format_turn_balance(tables: dict[str, dict[str, dict[str, int]]]) -> str:
    """One markdown table: a row per file and task, the silence-per-response ratios last."""
    lines = ["| file | task | records | turns | response turns | silent turns | silent from question "
             "| silent per response, from question | silent per response, all turns |", "|---" * 9 + "|"]
    for name, table in tables.items():
        for task, row in table.items():
            resp = row["response_turns"]
            ratio = [f"{row[k] / resp:.1f}" if resp else "–" for k in ("silence_turns_from_question", "silence_turns")]
            lines.append(f"| {name} | {task} | {row['records']} | {row['turns']} | {resp} | {row['silence_turns']} | "
                         f"{row['silence_turns_from_question']} | {ratio[0]} | {ratio[1]} |")
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    from streampro.dataset_scripts.builders import turn_balance
    from streampro.jsonl import read_jsonl

    tables = {}
    for name in args.files:
        if not Path(name).is_file():
            raise UserError(f"{name}: no such file", "pass SFT records from `streampro data build sft` or `data synth`")
        try:
            tables[name] = turn_balance(read_jsonl(name), name)
        except ValueError as e:
            raise UserError.from_exception(e, "pass SFT records (sft/{split}.jsonl), not raw or bench files") from e
    print(format_turn_balance(tables))
    return 0


# --------------------------------------------------------------------------------------------
# rubrics
# --------------------------------------------------------------------------------------------


def add_rubrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rl_samples", help="RL samples JSONL (`streampro data build rl` or Synth's rl/{split}.jsonl).")
    parser.add_argument("--out", required=True,
                        help="Output JSONL: the samples with `rubric` filled (appended; re-runs resume).")
    parser.add_argument("--endpoint", required=True, help="OpenAI-compatible API root, e.g. http://localhost:8000/v1.")
    parser.add_argument("--model", required=True, help="Model name the endpoint serves.")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="Environment variable holding the API key.")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight (default: 8).")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds per request (default: 120).")
    parser.add_argument("--max-retries", type=int, default=5, help="Retries on timeouts, 429 and 5xx (default: 5).")
    parser.add_argument("--invalid-retries", type=int, default=2, help="Re-asks after an invalid rubric (default: 2).")
    _no_progress(parser)


def run_rubrics(args: argparse.Namespace) -> int:
    from streampro.dataset_scripts.rubrics import RubricWriter, write_rubrics

    try:
        writer = RubricWriter(args.endpoint, args.model, api_key_env=args.api_key_env, timeout=args.timeout,
                              max_retries=args.max_retries, invalid_retries=args.invalid_retries)
        stats = write_rubrics(args.rl_samples, args.out, writer, concurrency=args.concurrency,
                              progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:  # a bad RL samples file or option
        raise UserError.from_exception(e, "fix the input or the option and run again") from e
    print(f"rubrics: {args.rl_samples} -> {args.out}\n" + "\n".join(f"  {k}: {v}" for k, v in stats.items()))
    if stats["failed"]:
        print(f"{stats['failed']} sample(s) failed (see the log); run the same command again to retry only them")
        return 1
    return 0


# name -> (add_arguments, run, one-line help)
SUBCOMMANDS = {
    "convert": (add_convert_arguments, run_convert, "Convert a public annotation file to raw JSONL."),
    "build": (add_build_arguments, run_build, "Build SFT / RL / benchmark files from raw JSONL."),
    "synth": (add_synth_arguments, run_synth, "Generate StreamPro-Synth: procedural videos with exact labels."),
    "stats": (add_stats_arguments, run_stats, "Count response and silent turns of SFT records, per task."),
    "rubrics": (add_rubrics_arguments, run_rubrics, "Write GRPO trajectory rubrics for RL samples with an LLM endpoint."),
}
