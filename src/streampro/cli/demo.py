"""``streampro demo``: stream a StreamPro-Synth test clip with the embedded tiny model, offline, in seconds.

Prints each response with its time as it happens, then the clip's ground truth and its
StreamPro-F1 (exact-match judge). The clips and their references ship in
``streampro/assets/demo/`` (:mod:`streampro.assets`; written by ``streampro reproduce``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streampro.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="StreamPro checkpoint directory (default: the embedded tiny model)")
    parser.add_argument("--clip", default=None, help="id of a demo clip (default: the first); --list shows them")
    parser.add_argument("--list", action="store_true", help="list the demo clips and exit")
    parser.add_argument("--out", type=Path, help="write one JSON event per frame to this JSONL file (folders are created)")


def run(args: argparse.Namespace) -> int:
    from streampro.assets import DEMO_DIR, demo_references
    from streampro.events import print_events
    from streampro.loading import load_model_and_processor
    from streampro.metrics import streampro_f1_sample
    from streampro.video import iter_video_frames

    try:
        refs = demo_references()
    except FileNotFoundError as e:
        raise UserError.from_exception(e, "reinstall streampro, or stream your own video with `streampro stream`") from e
    if args.list:
        for r in refs:
            print(f"{r['id']:<24} {r['task']}  {r['question']}")
        return 0
    ref = refs[0] if args.clip is None else next((r for r in refs if r["id"] == args.clip), None)
    if ref is None:
        raise UserError(f"--clip {args.clip}: no such demo clip", f"choose one of {[r['id'] for r in refs]}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model, processor = load_model_and_processor(args.model)
    except FileNotFoundError as e:
        raise UserError.from_exception(e, "pass --model DIR, a StreamPro checkpoint directory") from e
    print(f"clip {ref['id']} ({ref['task']}, {ref['duration']:g}s): asks at {ref['question_time']:g}s: {ref['question']}")
    events = model.generate_stream(
        iter_video_frames(DEMO_DIR / ref["video"], fps=1.0),
        ref["question"],
        processor=processor,
        question_time=ref["question_time"],
    )
    records = print_events(events, args.out)
    print("ground truth:")
    for a in ref["answers"]:
        when = f"{a['time']:g}s" if "time" in a else f"{a['start']:g}-{a['end']:g}s"
        print(f"  [{when:>9}] {a['text']}")
    predictions = [{"time": r["time"], "text": r["text"]} for r in records if r["decision"] == "response"]
    score = streampro_f1_sample(predictions, ref, judge="exact")
    print(f"StreamPro-F1 (exact judge): {100 * score.f1:.1f}  (P {100 * score.precision:.1f}, R {100 * score.recall:.1f})")
    return 0
