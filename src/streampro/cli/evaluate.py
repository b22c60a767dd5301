"""``streampro evaluate``: stream a model over a benchmark, resumably, and report StreamPro-F1.

    streampro evaluate --model ckpt/ --benchmark synth/bench/test.jsonl --video-root synth/ --out runs/synth
    streampro evaluate ... --num-processes 4          # data-parallel (spawns `accelerate launch`)
    accelerate launch --multi_gpu --num_processes 4 -m streampro.cli evaluate ...   # the same, by hand
    python -m streampro.cli.evaluate ...            # this command alone (same options)
    streampro evaluate --protocol decision-tree --model Qwen2.5-VL-3B/ ...           # offline baseline
    streampro evaluate --benchmark-suite ovo-bench --references refs/ovo.jsonl --video-root ovo/ --out runs/ovo
    streampro evaluate --engine vllm --batch-streams 16 ...   # on a vLLM server this command starts (docs/vllm.md)
    streampro evaluate --engine vllm --vllm-url http://127.0.0.1:8000 ...   # on a running one

Killed at any point, the same command resumes where it stopped (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

from streampro.errors import UserError
from streampro.metrics.inputs import add_judge_arguments  # stdlib-only module: cheap at `streampro --help`

logger = logging.getLogger(__name__)

PROTOCOL_CHOICES = ("streampro", "decision-tree", "activation")  # = protocols.PROTOCOLS (not imported: torch)
SUITE_CHOICES = ("ovo-bench", "streamingbench", "proactivevideoqa")  # = metrics.official.BENCHMARKS (tested)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path,
                        help="Checkpoint directory (default: the embedded tiny StreamPro model). A plain "
                             "Qwen2.5-VL / Qwen3-VL checkpoint with --protocol decision-tree.")
    parser.add_argument("--benchmark", type=Path,
                        help="References JSONL (one sample per line), scored with StreamPro-F1. Or --benchmark-suite.")
    parser.add_argument("--benchmark-suite", choices=SUITE_CHOICES,
                        help="Run a whole converted benchmark (all its tasks, each in its own protocol: real-time "
                             "questions answered at their time, proactive samples streamed) and report its official "
                             "score. Needs --references.")
    parser.add_argument("--references", nargs="+", type=Path, metavar="FILE_OR_DIR",
                        help="With --benchmark-suite: the files `streampro data convert NAME` wrote, or folders of "
                             "them (every *.jsonl inside).")
    parser.add_argument("--video-root", required=True, type=Path, help="Folder the references' 'video' paths are relative to.")
    parser.add_argument("--out", required=True, type=Path, help="Run directory (created; an existing one is resumed).")
    parser.add_argument("--protocol", default="streampro", choices=PROTOCOL_CHOICES,
                        help="streampro: decision tokens; decision-tree: docs/method.md §3 protocol for offline models; "
                             "activation: StreamBridge's activation model decides when --model answers (docs/activation.md).")
    parser.add_argument("--activation-model", type=Path, metavar="DIR",
                        help="--protocol activation: the activation model (`streampro train activation`); --model "
                             "(default: the embedded model) is the answerer.")
    parser.add_argument("--token-budget", type=int, metavar="N",
                        help="--protocol activation: the answerer's memory budget in tokens (default 16384); older "
                             "frames are pooled first (round-decayed compression, docs/activation.md).")
    parser.add_argument("--limit", type=int,
                        help="Evaluate only the first N samples of the benchmark (of each task with --benchmark-suite).")
    parser.add_argument("--fps", type=float, default=1.0, help="Frames (turns) per second (default 1).")
    parser.add_argument("--window-turns", type=int,
                        help="streampro: turns kept in context (default 200); decision-tree: recent frames "
                             "shown at each step (default 8); activation: frames the activation model reads (default 16).")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Longest answer in tokens (default 64).")
    parser.add_argument("--response-threshold", type=float,
                        help="Respond when p_response (decision-tree: p_yes) >= P instead of the arg-max decision.")
    parser.add_argument("--max-pixels", type=int, help="Downscale frames to at most this many pixels before the processor.")
    parser.add_argument("--shuffle-frames", type=int, metavar="SEED",
                        help="Control run: stream each clip's frames in a seeded random order (times kept), to "
                             "check that a model's answers depend on the video (docs/evaluation.md).")
    parser.add_argument("--strict", action="store_true",
                        help="Stop at the first bad sample (missing/corrupt video, invalid reference) instead of "
                             "recording it and going on.")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="Data-parallel processes; > 1 re-launches this command with `accelerate launch`.")
    parser.add_argument("--plot-samples", type=int, default=4,
                        help="Draw timelines for the first N scored samples (default 4).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.add_argument("--batch-streams", type=int, default=1, metavar="N",
                        help="Stream N proactive samples together in one batched forward per frame (StreamPro "
                             "protocol; same results, docs/engine.md); each batch's videos are decoded whole first.")
    parser.add_argument("--engine", choices=("pytorch", "vllm"), default="pytorch",
                        help="pytorch: the model runs in this process; vllm: on a vLLM server, with --batch-streams "
                             "streams in flight at once (docs/vllm.md).")
    parser.add_argument("--vllm-url", metavar="URL",
                        help="--engine vllm: a running server (`streampro vllm-server MODEL`). Without it, this "
                             "command starts one on 127.0.0.1 and stops it at the end.")
    parser.add_argument("--vllm-python", metavar="PATH",
                        help="--engine vllm without --vllm-url: the python of vLLM's environment "
                             "(default $STREAMPRO_VLLM_PYTHON, else .venv-vllm/bin/python).")
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                        help="--engine vllm without --vllm-url: one more argument for the vLLM server "
                             "(repeat it: --vllm-arg=--enforce-eager --vllm-arg=--max-model-len=32768).")
    add_judge_arguments(parser)  # the same judge flags as `streampro score`


def _judge_config(args) -> dict:
    if args.judge == "lexical":
        return {"name": "lexical", "method": args.lexical_method}
    if args.judge == "llm":
        return {"name": "llm", "base_url": args.judge_base_url, "model": args.judge_model}
    return {"name": args.judge}


def _check_args(args) -> None:
    """Raise :class:`UserError` for an option out of range (named by its flag)."""
    at_least_one = {"--limit": args.limit, "--window-turns": args.window_turns,
                    "--max-new-tokens": args.max_new_tokens, "--num-processes": args.num_processes,
                    "--batch-streams": args.batch_streams, "--token-budget": args.token_budget}
    for flag, value in at_least_one.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be >= 1", f"pass a positive {flag}")
    if args.engine == "vllm" and args.protocol != "streampro":
        raise UserError(f"--engine vllm with --protocol {args.protocol}: the vLLM engine runs StreamPro checkpoints",
                        "use --protocol streampro, or --engine pytorch for the decision-tree protocol")
    if args.engine != "vllm" and (args.vllm_url or args.vllm_python or args.vllm_arg):
        raise UserError("--vllm-url / --vllm-python / --vllm-arg need --engine vllm", "add --engine vllm")
    if args.vllm_url and (args.vllm_python or args.vllm_arg):
        raise UserError("--vllm-python / --vllm-arg start a server, --vllm-url names a running one",
                        "pass one or the other")
    if args.engine == "vllm" and args.num_processes > 1 and not args.vllm_url:
        raise UserError(f"--num-processes {args.num_processes} with --engine vllm: the processes would start one "
                        "server each", "start one with `streampro vllm-server MODEL` and pass its --vllm-url "
                        "(or raise --batch-streams instead: one process keeps that many streams in flight)")
    if args.batch_streams > 1 and args.protocol != "streampro":
        raise UserError(f"--batch-streams {args.batch_streams} with --protocol {args.protocol}: only the streampro "
                        "protocol streams samples together", "drop --batch-streams or use --protocol streampro")
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps {args.fps:g}: must be a number > 0", "pass e.g. --fps 1 (one frame per second)")
    if args.response_threshold is not None and not 0 <= args.response_threshold <= 1:
        raise UserError(f"--response-threshold {args.response_threshold:g}: must be in [0, 1]",
                        "pass a probability, or leave it out for the arg-max decision")
    if not args.video_root.is_dir():
        raise UserError(f"--video-root {args.video_root}: no such directory",
                        "pass the folder that the references' 'video' paths are relative to")
    if args.model is not None and not (args.model / "config.json").is_file():
        raise UserError(f"--model {args.model}: not a checkpoint directory (no config.json)",
                        "pass a StreamPro checkpoint directory, or leave --model out for the embedded model")
    if args.protocol == "activation" and args.activation_model is None:
        raise UserError("--protocol activation needs --activation-model DIR",
                        "pass the output_dir of `streampro train activation`")
    if args.protocol != "activation" and (args.activation_model is not None or args.token_budget is not None):
        raise UserError("--activation-model / --token-budget are options of --protocol activation",
                        "add --protocol activation, or leave them out")
    if args.activation_model is not None and not (args.activation_model / "config.json").is_file():
        raise UserError(f"--activation-model {args.activation_model}: not a checkpoint directory (no config.json)",
                        "pass the output_dir of `streampro train activation`")
    if args.model is None and args.protocol == "decision-tree":
        raise UserError("--protocol decision-tree needs --model",
                        "pass --model DIR, a plain Qwen2.5-VL / Qwen3-VL checkpoint")
    if (args.benchmark is None) == (args.benchmark_suite is None):
        raise UserError("pass either --benchmark FILE or --benchmark-suite NAME --references ...",
                        "--benchmark for StreamPro-F1 references, --benchmark-suite for a converted benchmark")
    if args.benchmark_suite is not None:
        if not args.references:
            raise UserError(f"--benchmark-suite {args.benchmark_suite} needs --references",
                            f"pass the files `streampro data convert {args.benchmark_suite}` wrote (or their folder)")
        reference_files(args.references)  # every path exists and holds references
        return
    if args.references:
        raise UserError("--references is for --benchmark-suite", "pass --benchmark FILE alone, or add --benchmark-suite NAME")
    if not args.benchmark.is_file():
        raise UserError(f"--benchmark {args.benchmark}: no such file",
                        "pass a references JSONL (`streampro data build bench` or `streampro data synth` write one)")


def reference_files(paths: list[Path]) -> list[Path]:
    """``--references``: files as given, folders as their ``*.jsonl`` files (sorted)."""
    files = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.glob("*.jsonl") if p.is_file())
            if not inside:
                raise UserError(f"--references {path}: a folder without *.jsonl files",
                                "pass the folder `streampro data convert` wrote into, or the files themselves")
            files += inside
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--references {path}: no such file or folder", "pass converted reference files")
    return files


def build_config(args):
    from streampro.evaluation.activation import ACTIVATION_TOKEN_BUDGET
    from streampro.evaluation.harness import EvalConfig, file_sha256, files_sha256
    from streampro.evaluation.protocols import default_window
    from streampro.loading import default_model_dir

    model = args.model if args.model is not None else default_model_dir()
    if args.benchmark_suite is not None:
        files = reference_files(args.references)
        benchmark, digest = os.pathsep.join(str(f.resolve()) for f in files), files_sha256(files)
    else:
        benchmark, digest = str(args.benchmark.resolve()), file_sha256(args.benchmark)
    return EvalConfig(
        model=str(model.resolve()),
        benchmark=benchmark,
        benchmark_sha256=digest,
        video_root=str(args.video_root.resolve()),
        protocol=args.protocol,
        judge=_judge_config(args),
        limit=args.limit,
        fps=float(args.fps),
        window_turns=args.window_turns or default_window(args.protocol),
        max_new_tokens=args.max_new_tokens,
        response_threshold=args.response_threshold,
        max_pixels=args.max_pixels,
        shuffle_frames=args.shuffle_frames,
        suite=args.benchmark_suite,
        engine=args.engine,
        activation_model=str(args.activation_model.resolve()) if args.activation_model is not None else None,
        token_budget=(args.token_budget or ACTIVATION_TOKEN_BUDGET) if args.protocol == "activation" else None,
    )


def launch_argv(args) -> list[str]:
    """This command for ``accelerate launch`` (every option spelled out, without --num-processes)."""
    argv = [sys.executable, "-m", "accelerate.commands.launch",
            # --multi_gpu uses torchrun's launcher, which also starts CPU processes when there is no GPU.
            "--multi_gpu", "--num_processes", str(args.num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "-m", "streampro.cli.evaluate"]
    options = {
        "--model": args.model, "--benchmark": args.benchmark, "--benchmark-suite": args.benchmark_suite,
        "--video-root": args.video_root, "--out": args.out,
        "--protocol": args.protocol, "--limit": args.limit, "--fps": args.fps, "--window-turns": args.window_turns,
        "--max-new-tokens": args.max_new_tokens, "--response-threshold": args.response_threshold,
        "--max-pixels": args.max_pixels, "--shuffle-frames": args.shuffle_frames,
        "--plot-samples": args.plot_samples, "--judge": args.judge,
        "--lexical-method": args.lexical_method, "--judge-base-url": args.judge_base_url,
        "--judge-model": args.judge_model, "--judge-api-key-env": args.judge_api_key_env,
        "--judge-cache": args.judge_cache, "--judge-concurrency": args.judge_concurrency,
        "--judge-timeout": args.judge_timeout, "--judge-retries": args.judge_retries,
        "--engine": args.engine, "--vllm-url": args.vllm_url,
        "--activation-model": args.activation_model, "--token-budget": args.token_budget,
    }
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if args.references:
        argv += ["--references", *map(str, args.references)]
    argv += ["--strict"] * args.strict + ["--no-progress"] * args.no_progress
    return argv


def run(args: argparse.Namespace) -> int:
    from streampro.evaluation.harness import (
        RunError,
        check_run_config,
        distributed_state,
        is_qa,
        merge_predictions,
        read_benchmark,
        read_suite,
        run_shard,
        wait_for_all,
    )
    from streampro.evaluation.report import (
        format_markdown,
        format_suite_markdown,
        write_reports,
        write_suite_reports,
    )
    from streampro.metrics import JudgeError
    from streampro.metrics.inputs import judge_from_args
    from streampro.serving.vllm_session import VLLMEngineError

    _check_args(args)
    if args.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        cmd = launch_argv(args)
        logger.info("launching %d processes: %s", args.num_processes, " ".join(cmd))
        return subprocess.run(cmd, check=False).returncode
    try:
        config = build_config(args)
        judge = judge_from_args(args)
        if args.benchmark_suite is not None:
            references = read_suite(reference_files(args.references), args.benchmark_suite, args.limit)
        else:
            references = read_benchmark(args.benchmark, args.limit)
            qa = [str(r["id"]) for r in references if is_qa(r)]
            if qa:
                raise UserError(f"--benchmark {args.benchmark}: {len(qa)} real-time question(s), e.g. {qa[0]!r}, "
                                "are scored by their benchmark's official rules",
                                "run them with --benchmark-suite NAME --references FILE")
        check_run_config(args.out, config)
        dist = distributed_state()
        with _vllm_server(args, config.model) as vllm_url:
            run_shard(config, references, args.out, dist, strict=args.strict, progress=not args.no_progress,
                      batch_streams=args.batch_streams, vllm_url=vllm_url)
        if dist.rank != 0:
            return 0
        wait_for_all(args.out, references)
        records = merge_predictions(args.out, references)
        if args.benchmark_suite is not None:
            report = write_suite_reports(args.out, args.benchmark_suite, records, references, judge, config.to_dict(),
                                         num_timelines=args.plot_samples)
        else:
            report = write_reports(args.out, records, references, judge, config.to_dict(), strict=args.strict,
                                   num_timelines=args.plot_samples)
    except UserError:
        raise
    except VLLMEngineError as e:
        first, *rest = str(e).splitlines()
        raise UserError(first, "start the vLLM server again (or leave out --vllm-url: this command starts one) and "
                               "run the same command: finished samples are kept", details=rest) from e
    except (RunError, ValueError, FileNotFoundError, JudgeError) as e:  # the benchmark, run folder, model, judge
        raise UserError.from_exception(e, "fix the input named above and run the same command again (it resumes)") from e
    if args.benchmark_suite is not None:
        print(format_suite_markdown(report, config.to_dict()))
    else:
        print(format_markdown(report, config.to_dict()))
    print(f"report: {args.out / 'report.json'}, {args.out / 'report.md'}; plots: {args.out / 'plots'}")
    return 0


@contextlib.contextmanager
def _vllm_server(args, model: str):
    """The vLLM server's URL for ``--engine vllm`` (``--vllm-url``, or one started here and stopped after); else None."""
    if args.engine != "vllm" or args.vllm_url:
        yield args.vllm_url
        return
    from streampro.serving.vllm_server import VLLMServer

    with VLLMServer(model, python=args.vllm_python, extra_args=args.vllm_arg) as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    """``python -m streampro.cli.evaluate``: this command without the rest of the ``streampro`` CLI."""
    from streampro.cli import run_command, setup_logging

    parser = argparse.ArgumentParser(prog="streampro evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Log at DEBUG level.")
    parser.add_argument("--debug", action="store_true", help="Show the traceback of a user error.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_command("evaluate", run, args, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
