"""How often the sink-and-window memory decides like the exact window, on StreamPro-Synth clips longer than the window.

Both policies stream the same clips with the same model, window and eviction size; the exact
window re-prefills the kept turns after each slide, the sink window drops evicted entries in place
and re-bases the kept ones (docs/engine.md). Agreement = the share of frames after the question
with the same decision; also the share of responding frames with the same answer text. The last
line is one JSON object.

    python benchmarks/sink_window_agreement.py                       # 24 clips, 2 fps, window 8 turns
    python benchmarks/sink_window_agreement.py --clips 8 --fps 1 --window-turns 6
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--window-turns", type=int, default=8)
    parser.add_argument("--evict-turns", type=int, default=None, help="default: the engine's (window // 4)")
    parser.add_argument("--batch-streams", type=int, default=8, help="streams per batched run")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded tiny model)")
    args = parser.parse_args()

    import torch
    from streampro.dataset_scripts.schema import TASKS
    from streampro.dataset_scripts.synth import make_clip

    from streampro.loading import load_model_and_processor

    model, processor = load_model_and_processor(args.model, device="cpu")
    clips = [make_clip(TASKS[i % len(TASKS)], 2000 + i, 7) for i in range(args.clips)]
    streams = [[c.render((k + 1) / args.fps) for k in range(int(c.duration * args.fps))] for c in clips]
    options = dict(fps=args.fps, window_turns=args.window_turns, evict_turns=args.evict_turns, max_new_tokens=16)
    runs = {}
    with torch.no_grad():
        for memory in ("window", "sink_window"):
            events = []
            for lo in range(0, len(clips), args.batch_streams):
                part = slice(lo, lo + args.batch_streams)
                events += model.generate_streams(streams[part], [c.question for c in clips[part]], processor=processor,
                                                 question_times=[c.question_time for c in clips[part]],
                                                 memory=memory, **options)
            runs[memory] = events
    same = total = same_text = responses = 0
    for exact, sink in zip(runs["window"], runs["sink_window"]):
        for a, b in zip(exact, sink):
            if a.p_response is None:
                continue
            total += 1
            same += a.decision == b.decision
            if a.decision == "response" == b.decision:
                responses += 1
                same_text += a.text == b.text
    frames = [len(s) for s in streams]
    print(f"{args.clips} StreamPro-Synth clips at {args.fps:g} fps ({min(frames)}-{max(frames)} frames), "
          f"window {args.window_turns} turns: {total} decisions after the question")
    result = {
        "clips": args.clips,
        "fps": args.fps,
        "frames_min_max": [min(frames), max(frames)],
        "window_turns": args.window_turns,
        "evict_turns": args.evict_turns or max(1, args.window_turns // 4),
        "decisions": total,
        "decision_agreement": round(same / total, 4),
        "responses_exact": sum(e.decision == "response" for s in runs["window"] for e in s),
        "responses_sink": sum(e.decision == "response" for s in runs["sink_window"] for e in s),
        "text_agreement_on_shared_responses": round(same_text / responses, 4) if responses else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
