"""Streaming latency: KV-cache `generate_stream` vs the naive loop that re-encodes the window every frame.

Both run in this process on the same model, frames and window, so the ratio is robust to a
noisy machine. Per-frame cost is reported as the mean over one eviction period ending at each
checkpoint frame, so the periodic re-prefill of the kept window is included (amortised), not
hidden by a median. The last line is one JSON object.

    python benchmarks/stream_latency.py --quick            # < 1 min on a 2-core CPU
    python benchmarks/stream_latency.py                    # 2,000+ frames, tiny model
    python benchmarks/stream_latency.py --preset 3b --device cuda --max-pixels 200704   # GPU, 3B-shaped, 448 px
    python benchmarks/stream_latency.py --frames 10000 --memory sink_window --naive-frames 0   # hours-long stream
    python benchmarks/stream_latency.py --frames 10000 --memory window --naive-frames 0        # the exact window

Metrics: ms/frame at frames 50, 200, 1000, 2000 (ours), naive ms/frame at a full window,
``speedup_vs_reencode`` (naive ÷ ours, both at a full window), ``flatness`` (ours at the last
checkpoint ÷ at frame 50), ``flatness_full_window`` (ours at the last checkpoint ÷ at frame
window + evict, the first one measured wholly in a full window), ``peak_cache_tokens``, process RSS
and ``rss_growth_full_window_mb`` (RSS at the last frame minus RSS at frame window + evict).
``--memory sink_window`` streams with the sink-and-window policy instead of the exact window;
``--naive-frames 0`` skips the naive loop.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

# A Qwen2.5-VL-3B-shaped config (random weights; the vocabulary stays the tiny tokenizer's).
PRESETS = {
    "tiny": {},
    # About 40 M parameters: enough compute per frame on a CPU for batching across streams to show.
    "small": dict(
        text_hidden=512,
        text_layers=8,
        text_heads=8,
        text_kv_heads=2,
        text_intermediate=1536,
        vision_hidden=256,
        vision_depth=4,
        vision_heads=4,
        vision_intermediate=512,
    ),
    "3b": dict(
        text_hidden=2048,
        text_layers=36,
        text_heads=16,
        text_kv_heads=2,
        text_intermediate=11008,
        vision_hidden=1280,
        vision_depth=32,
        vision_heads=16,
        vision_intermediate=3420,
    ),
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(events, rss_at: dict | None = None):
    """Per-frame wall time (ms) and context sizes of an event iterator; RSS after the frames keyed in ``rss_at``."""
    times, contexts = [], []
    start = time.perf_counter()
    for ev in events:
        now = time.perf_counter()
        times.append(1000 * (now - start))
        contexts.append(ev.context_tokens)
        if rss_at is not None and len(times) in rss_at:
            rss_at[len(times)] = rss_mb()
        start = time.perf_counter()  # the RSS read is not the engine's time
    return times, contexts


def window_mean(times: list[float], frame: int, span: int) -> float:
    lo = max(0, frame - span)
    return statistics.fmean(times[lo:frame])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 frames, short naive run (< 1 min on CPU)")
    parser.add_argument("--frames", type=int, default=2050)
    parser.add_argument("--window-turns", type=int, default=200)
    parser.add_argument("--evict-turns", type=int, default=None, help="default: the engine's (window // 4)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--backbone", choices=["qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl")
    parser.add_argument("--max-pixels", type=int, default=112 * 112, help="frame size cap (448 px = 200704)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--naive-frames", type=int, default=None, help="frames to time the naive loop on (0: skip it)")
    parser.add_argument("--memory", choices=["window", "sink_window"], default="window")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from streampro.backbones import build_tiny_backbone
    from streampro.testing.naive_stream import naive_generate_stream

    if args.quick:
        args.frames = min(args.frames, 600)
    torch.manual_seed(0)
    side = int(args.max_pixels**0.5)
    tb = build_tiny_backbone(args.backbone, streampro=True, max_pixels=args.max_pixels, min_pixels=min(3136, args.max_pixels),
                             **PRESETS[args.preset])
    model = tb.model.to(device=args.device, dtype=getattr(torch, args.dtype))
    rng = np.random.default_rng(0)
    palette = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(16)]
    frames = [palette[i % len(palette)] for i in range(args.frames)]
    question = "Tell me when the red square turns blue."
    evict = args.evict_turns or max(1, args.window_turns // 4)
    # Never respond: this measures frame ingestion (prefill + decision), the steady-state cost.
    common = dict(processor=tb.processor, question_time=0.0, response_threshold=1.0, max_new_tokens=8)

    full = args.window_turns + evict  # first checkpoint whose averaging span lies in a full window
    rss_before = rss_mb()
    rss_at = {full: None, args.frames: None}
    with torch.no_grad():
        ours, contexts = timed(model.generate_stream(frames, question, window_turns=args.window_turns,
                                                     evict_turns=evict, memory=args.memory, **common), rss_at)
    checkpoints = sorted({f for f in (50, 200, full, 1000, 2000) if f <= len(ours)})
    if len(ours) not in checkpoints:
        checkpoints.append(len(ours))
    ours_ms = {f: window_mean(ours, f, evict) for f in checkpoints}

    # Naive: cost per frame is constant once the window is full, so time frames just past it
    # (earlier turns are silent, exactly as in the run above, and are not recomputed).
    naive_count = (5 if args.quick else 20) if args.naive_frames is None else args.naive_frames
    naive_frames = frames[: args.window_turns + naive_count]
    full_window = []
    if naive_count:
        with torch.no_grad():
            full_window, _ = timed(naive_generate_stream(model, tb.processor, naive_frames, question,
                                                         window_turns=args.window_turns, question_time=0.0,
                                                         response_threshold=1.0, max_new_tokens=8,
                                                         start_turn=args.window_turns))
    naive_ms = statistics.fmean(full_window) if full_window else float("nan")
    ours_full = statistics.fmean(ours[args.window_turns:]) if len(ours) > args.window_turns else ours_ms[checkpoints[-1]]

    print(f"model: {args.preset} {args.backbone} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
          f"{side}px frames, {tb.processor.num_image_tokens(tb.processor.process_frames(frames[:1])['image_grid_thw'])[0]} "
          f"tokens/frame, memory {args.memory}, window {args.window_turns} turns, evict {evict}, device {args.device}")
    for f in checkpoints:
        print(f"  ours   ms/frame at frame {f:>5}: {ours_ms[f]:8.2f}  (mean over the {evict} frames before it)")
    print(f"  ours   ms/frame over frames {args.window_turns}-{len(ours)} (full window): {ours_full:8.2f}")
    print(f"  naive  ms/frame at a full window ({len(full_window)} frames timed): {naive_ms:8.2f}")
    result = {
        "memory": args.memory,
        "preset": args.preset,
        "backbone": args.backbone,
        "device": args.device,
        "frames": len(ours),
        "window_turns": args.window_turns,
        "evict_turns": evict,
        "ms_per_frame": {str(f): round(v, 3) for f, v in ours_ms.items()},
        "ms_per_frame_full_window": round(ours_full, 3),
        "naive_ms_per_frame_full_window": round(naive_ms, 3),
        "speedup_vs_reencode": round(naive_ms / ours_full, 2) if full_window else None,
        "flatness": round(ours_ms[checkpoints[-1]] / ours_ms[checkpoints[0]], 3),
        # The same ratio from the first full-window checkpoint: does the cost keep growing once the window is full?
        "flatness_full_window": round(ours_ms[checkpoints[-1]] / ours_ms[full], 3) if full in ours_ms else None,
        "frames_per_second": round(1000 / ours_full, 1),
        "peak_cache_tokens": max(contexts),
        "cache_tokens_last_100": [min(contexts[-100:]), max(contexts[-100:])],
        "rss_mb": round(rss_mb(), 1),
        "rss_growth_mb": round(rss_mb() - rss_before, 1),
        # Growth once the window is full: an unbounded stream must not keep allocating.
        "rss_growth_full_window_mb": round(rss_at[len(ours)] - rss_at[full], 1) if rss_at.get(full) else None,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
