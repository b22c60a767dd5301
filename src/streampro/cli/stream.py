"""``streampro stream VIDEO --question TEXT``: watch a video and print responses as the model makes them.

Example::

    streampro stream clip.mp4 --question "Tell me when the red square turns blue." --out events.jsonl

The video and the options are checked before the model loads, so a wrong path or a question
time past the end of the clip is reported at once (``streampro stream: error: ... — ...``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from streampro.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file (anything PyAV decodes) or a directory of frame images")
    parser.add_argument("--question", required=True, help="the user's question")
    parser.add_argument("--model", help="StreamPro checkpoint directory (default: the embedded tiny model)")
    parser.add_argument("--question-time", type=float, default=0.0, help="seconds into the video (default 0)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second sampled (default 1)")
    parser.add_argument("--window-turns", type=int, default=200, help="turns kept in context (default 200)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap (default 64)")
    parser.add_argument(
        "--response-threshold", type=float, default=None, help="respond when P(</Response>) >= this (default: arg-max)"
    )
    parser.add_argument("--memory", choices=["window", "sink_window", "round_decay"], default="window",
                        help="window: exact sliding window; sink_window: the same turns without re-prefill, for "
                             "unbounded streams (docs/engine.md); round_decay: pool old frames to --token-budget")
    parser.add_argument("--token-budget", type=int, default=None, help="context budget for --memory round_decay")
    parser.add_argument("--max-pixels", type=int, default=None, help="downscale frames to at most this many pixels")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype (default auto: the checkpoint's own, bf16 stays bf16 on CPU)")
    parser.add_argument("--out", type=Path, help="write one JSON event per frame to this JSONL file (folders are created)")


def check_options(args: argparse.Namespace) -> None:
    """Raise :class:`UserError` for an option out of range (named by its flag)."""
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps {args.fps:g}: must be a number > 0", "pass e.g. --fps 1 (one frame per second)")
    if not (math.isfinite(args.question_time) and args.question_time >= 0):
        raise UserError(f"--question-time {args.question_time:g}: must be a number of seconds >= 0",
                        "pass the time into the video at which the question is asked, e.g. --question-time 0")
    for flag, value in (("--window-turns", args.window_turns), ("--max-new-tokens", args.max_new_tokens),
                        ("--token-budget", args.token_budget), ("--max-pixels", args.max_pixels)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be >= 1", f"pass a positive {flag} or leave it out")
    if args.response_threshold is not None and not 0 <= args.response_threshold <= 1:
        raise UserError(f"--response-threshold {args.response_threshold:g}: must be a probability in [0, 1]",
                        "pass e.g. --response-threshold 0.5, or leave it out for the arg-max decision")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out}: is a directory", "pass a file path, e.g. --out events.jsonl")


def open_frames(args: argparse.Namespace):
    """The video's frame iterator, opened and checked (question time within the clip) before any model loads."""
    from streampro.modeling_streampro.time_streampro import num_turns, turn_index_for_time
    from streampro.video import VideoReadError, iter_image_dir, iter_video_frames, probe_video

    video: Path = args.video
    try:
        if video.is_dir():
            return iter_image_dir(video, fps=args.fps)
        info = probe_video(video)
        frames = iter_video_frames(video, fps=args.fps, max_pixels=args.max_pixels)
    except VideoReadError as e:
        raise UserError.from_exception(e, "pass a readable video file or a folder of frame images") from e
    n = num_turns(info.duration, args.fps)
    if turn_index_for_time(args.question_time, args.fps) >= n:
        raise UserError(
            f"--question-time {args.question_time:g}: beyond the end of {video} "
            f"({info.duration:g} s, {n} frame(s) at --fps {args.fps:g})",
            f"pass a question time of at most {n / args.fps:g} s",
        )
    return frames


def run(args: argparse.Namespace) -> int:
    from streampro.events import print_events
    from streampro.loading import load_model_and_processor
    from streampro.video import VideoReadError

    check_options(args)
    frames = open_frames(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    except FileNotFoundError as e:
        raise UserError.from_exception(e, "pass --model DIR, a StreamPro checkpoint directory") from e
    events = model.generate_stream(
        frames,
        args.question,
        processor=processor,
        question_time=args.question_time,
        fps=args.fps,
        window_turns=args.window_turns,
        max_new_tokens=args.max_new_tokens,
        response_threshold=args.response_threshold,
        memory=args.memory,
        token_budget=args.token_budget,
    )
    try:
        print_events(events, args.out)
    except VideoReadError as e:  # a frame past the header check could not be decoded (truncated, corrupt)
        raise UserError.from_exception(e, "repair or re-encode the video") from e
    except ValueError as e:  # the engine: a question time past the last frame of a folder of images
        if "question time" not in str(e):
            raise
        raise UserError(str(e), "pass a --question-time within the stream") from e
    return 0
