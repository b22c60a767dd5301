"""``streampro demo``: stream a StreamPro-Synth test clip with the embedded tiny model, offline, in seconds.

Prints each response with its time as it happens, then the clip's ground truth and its
StreamPro-F1 (exact-match judge). The clips and their references ship in
``streampro/assets/demo/`` (written by ``streampro reproduce``; see docs/reproduce.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEMO_DIR = Path(__file__).parent / "assets" / "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="StreamPro checkpoint directory (default: the embedded tiny model)")
    parser.add_argument("--clip", default=None, help="id of a demo clip (default: the first); --list shows them")
    parser.add_argument("--list", action="store_true", help="list the demo clips and exit")
    parser.add_argument("--out", help="write one JSON event per frame to this JSONL file")


def demo_references() -> list[dict]:
    path = DEMO_DIR / "references.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"the demo clips are missing ({path}); they are produced by `streampro reproduce` "
            "(docs/reproduce.md) — or stream your own video with `streampro stream VIDEO --question ...`"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace) -> int:
    from streampro.loading import load_model_and_processor
    from streampro.metrics import streampro_f1_sample
    from streampro.cli.stream import print_events
    from streampro.video import iter_video_frames

    refs = demo_references()
    if args.list:
        for r in refs:
            print(f"{r['id']:<24} {r['task']}  {r['question']}")
        return 0
    ref = refs[0] if args.clip is None else next((r for r in refs if r["id"] == args.clip), None)
    if ref is None:
        raise SystemExit(f"no demo clip {args.clip!r}; choose one of {[r['id'] for r in refs]}")
    model, processor = load_model_and_processor(args.model)
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
