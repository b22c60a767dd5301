"""One report of the engine on an accelerator: batched streams, 10,000-frame streams, 3B-shaped ingestion at 448 px.

    python benchmarks/gpu_report.py                      # on a CUDA device (~10 min on one H100)
    python benchmarks/gpu_report.py --device cpu --quick # a smoke run of the same steps on the CPU

Runs, each in its own process (its own peak memory), and collects their JSON lines:

1. ``engine_throughput.py``: 8 StreamPro-Synth streams batched vs one by one (tiny model).
2. ``stream_latency.py --memory sink_window`` and ``--memory window``: 10,000 frames, ms/frame at
   the last frame ÷ frame 250 (``flatness_full_window``) and RSS growth once the window is full.
3. ``grpo_rollouts.py``: GRPO step time of the tiny recipe with the G = 4 rollouts batched vs one by one.
4. A Qwen2.5-VL-3B-shaped model (random weights, bfloat16) at 448 px (256 tokens per frame), in
   this process: ms/frame and frames/s of one stream with a full 200-turn window, the re-prefill
   of the kept 150 turns after a slide (the exact window's periodic cost), the same stream with the
   sink window, and B streams batched (streams × frames/s).

Prints one table and, last, one JSON object. Record the figures with the device named in
docs/engine.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def run_script(name: str, *args: str) -> dict:
    """Run a benchmark script in a fresh process; its last stdout line is its JSON result."""
    proc = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": f"{name} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def big_model_figures(args) -> dict:
    """3B-shaped ingestion at 448 px: one stream (window and sink window), the re-prefill, B streams batched."""
    import numpy as np
    import torch
    from PIL import Image

    from streampro.backbones import build_tiny_backbone

    sys.path.insert(0, str(HERE))
    from stream_latency import PRESETS

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    preset = "tiny" if args.quick else "3b"
    pixels = 112 * 112 if args.quick else 448 * 448
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True, max_pixels=pixels, min_pixels=min(3136, pixels),
                             **PRESETS[preset])
    model, processor = tb.model.to(device=args.device, dtype=dtype), tb.processor
    side = int(pixels**0.5)
    rng = np.random.default_rng(0)
    palette = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(8)]
    window = 20 if args.quick else 200
    frames = [palette[i % len(palette)] for i in range(window + 10)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed_steps(session, count):
        sync()
        start = time.perf_counter()
        for frame in frames[window: window + count]:
            session.step(frame)
        sync()
        return 1000 * (time.perf_counter() - start) / count

    out = {"preset": preset, "pixels": pixels, "dtype": str(dtype).replace("torch.", ""),
           "tokens_per_frame": processor.num_image_tokens(processor.process_frames(frames[:1])["image_grid_thw"])[0]}
    with torch.no_grad():
        for memory in ("window", "sink_window"):
            session = model.stream_session(processor, window_turns=window, memory=memory, response_threshold=1.0)
            session.ask("Tell me when the red square turns blue.")
            for frame in frames[:window]:
                session.step(frame)
            out[f"{memory}_context_tokens"] = session.context_tokens
            out[f"{memory}_ms_per_frame_full_window"] = round(timed_steps(session, 10), 2)
            if memory == "window":
                sync()
                start = time.perf_counter()
                session._run(session._refresh())  # the kept window prefilled again, as after a slide
                sync()
                out["reprefill_s"] = round(time.perf_counter() - start, 3)
                out["reprefill_tokens"] = session.context_tokens
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        count = 10 if args.quick else 60
        batch = [[palette[(i + s) % len(palette)] for i in range(count)] for s in range(args.batch_streams)]
        sync()
        start = time.perf_counter()
        model.generate_streams(batch, ["Tell me when the red square turns blue."] * len(batch), processor=processor,
                               response_threshold=1.0)
        sync()
        elapsed = time.perf_counter() - start
        out["batched_streams"] = len(batch)
        out["batched_frames_per_s"] = round(len(batch) * count / elapsed, 2)
        out["batched_frames_per_s_per_stream"] = round(count / elapsed, 2)
        if args.device.startswith("cuda"):
            out["batched_peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run; CPU is fine)")
    parser.add_argument("--frames", type=int, default=10000, help="frames of the long-stream runs")
    parser.add_argument("--batch-streams", type=int, default=4, help="3B-shaped streams batched")
    args = parser.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_report: no CUDA device here; run it on a GPU machine (or --device cpu --quick for a smoke run)")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    frames = str(min(args.frames, 200) if args.quick else args.frames)
    report = {"device": device_name}
    report["throughput"] = run_script("engine_throughput.py", "--device", args.device,
                                      *(["--quick", "--streams", "2"] if args.quick else ["--frames", "100"]))
    window = ["--window-turns", "40"] if args.quick else []  # quick: full window (+ evict) at frame 50
    for memory in ("sink_window", "window"):
        report[f"long_stream_{memory}"] = run_script("stream_latency.py", "--device", args.device, "--frames", frames,
                                                     "--memory", memory, "--naive-frames", "0", *window)
    report["grpo_rollouts"] = run_script("grpo_rollouts.py", "--device", args.device, *(["--quick"] if args.quick else []))
    report["big_model"] = big_model_figures(args)

    t, big = report["throughput"], report["big_model"]
    rows = [
        ("tiny, 8 Synth streams: frames/s one by one / batched (ratio)",
         f"{t.get('frames_per_s_single')} / {t.get('frames_per_s_batched')} ({t.get('speedup_batched')}x)"),
    ]
    for memory in ("sink_window", "window"):
        r = report[f"long_stream_{memory}"]
        rows.append((f"tiny, {frames} frames, {memory}: ms/frame last ÷ full window; RSS growth MB",
                     f"{r.get('flatness_full_window')}; {r.get('rss_growth_full_window_mb')}"))
    g = report["grpo_rollouts"]
    rows.append(("tiny GRPO step, G = 4: s batched / one by one (speedup)",
                 f"{g.get('step_time_batched_s')} / {g.get('step_time_sequential_s')} ({g.get('speedup')}x)"))
    rows += [
        (f"{big['preset']} @ {big['pixels']} px ({big['tokens_per_frame']} tok/frame): ms/frame, full window",
         f"{big['window_ms_per_frame_full_window']} (window), {big['sink_window_ms_per_frame_full_window']} (sink)"),
        ("re-prefill of the kept window: s (tokens)", f"{big['reprefill_s']} ({big['reprefill_tokens']})"),
        (f"{big['batched_streams']} streams batched: frames/s (per stream)",
         f"{big['batched_frames_per_s']} ({big['batched_frames_per_s_per_stream']})"),
    ]
    print(f"device: {device_name}")
    for name, value in rows:
        print(f"  {name:<75} {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
