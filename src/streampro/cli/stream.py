"""``streampro stream VIDEO --question TEXT``: watch a video and print responses as the model makes them.

Example::

    streampro stream clip.mp4 --question "Tell me when the red square turns blue." --out events.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="video file (anything PyAV decodes) or a directory of frame images")
    parser.add_argument("--question", required=True, help="the user's question")
    add_streaming_arguments(parser)
    parser.add_argument("--out", help="write one JSON event per frame to this JSONL file")


def add_streaming_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `stream` and `demo`."""
    parser.add_argument("--model", help="StreamPro checkpoint directory (default: the embedded tiny model)")
    parser.add_argument("--question-time", type=float, default=0.0, help="seconds into the video (default 0)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second sampled (default 1)")
    parser.add_argument("--window-turns", type=int, default=200, help="turns kept in context (default 200)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap (default 64)")
    parser.add_argument(
        "--response-threshold", type=float, default=None, help="respond when P(</Response>) >= this (default: arg-max)"
    )
    parser.add_argument("--memory", choices=["window", "round_decay"], default="window")
    parser.add_argument("--token-budget", type=int, default=None, help="context budget for --memory round_decay")
    parser.add_argument("--max-pixels", type=int, default=None, help="downscale frames to at most this many pixels")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def print_events(events, out_path: str | None = None, stream=None) -> list[dict]:
    """Print responses as they happen (silent stretches summarised); optionally write every event as JSONL."""
    stream = stream or sys.stdout
    out = open(out_path, "w", encoding="utf-8") if out_path else None
    records, silent_from = [], None
    try:
        for ev in events:
            rec = ev.to_dict()
            records.append(rec)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if silent_from is not None and (ev.question or ev.decision != "silence"):
                print(f"           (silent {silent_from:g}-{ev.time - 1:g}s)", file=stream)
                silent_from = None
            if ev.question:
                print(f"[{ev.time:7.1f}s] question: {ev.question}", file=stream, flush=True)
            if ev.decision == "silence":
                silent_from = ev.time if silent_from is None else silent_from
                continue
            p = "" if ev.p_response is None else f"  (p={ev.p_response:.2f})"
            print(f"[{ev.time:7.1f}s] {ev.text}{p}", file=stream, flush=True)
        if silent_from is not None:
            print(f"           (silent {silent_from:g}-{records[-1]['time']:g}s)", file=stream)
    finally:
        if out:
            out.close()
    n = sum(r["decision"] == "response" for r in records)
    print(f"{len(records)} frames, {n} responses", file=stream)
    return records


def stream_video(args: argparse.Namespace, video: Path, question: str):
    from streampro.loading import load_model_and_processor
    from streampro.video import iter_image_dir, iter_video_frames

    model, processor = load_model_and_processor(args.model, device=args.device)
    if video.is_dir():
        frames = iter_image_dir(video, fps=args.fps)
    else:
        frames = iter_video_frames(video, fps=args.fps, max_pixels=args.max_pixels)
    return model.generate_stream(
        frames,
        question,
        processor=processor,
        question_time=args.question_time,
        fps=args.fps,
        window_turns=args.window_turns,
        max_new_tokens=args.max_new_tokens,
        response_threshold=args.response_threshold,
        memory=args.memory,
        token_budget=args.token_budget,
    )


def run(args: argparse.Namespace) -> int:
    video = Path(args.video)
    print_events(stream_video(args, video, args.question), args.out)
    return 0
