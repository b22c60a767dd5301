"""Engine throughput: B StreamPro-Synth streams stepped together (``generate_streams``) vs one by one.

Both runs use the same model, clips and options in this process; with ``--repeats R`` (default 3)
the two modes alternate R times each (S B, B S, S B, ...) and each mode's figure is its median
time, so a burst of load on a shared machine slows both alike rather than one of them. Frames/s counts every frame of every stream (vision encoding, prefill, decisions and
the answers the model gives). Events are checked to agree (decisions and texts). The last line is
one JSON object.

    python benchmarks/engine_throughput.py --quick        # 8 clips, ~20 frames each
    python benchmarks/engine_throughput.py                 # 8 clips looped to 100 frames each
    python benchmarks/engine_throughput.py --device cuda --streams 8 --frames 300
    python benchmarks/engine_throughput.py --quick --engine vllm   # + the streams in flight at once on vLLM
    python benchmarks/engine_throughput.py --quick --engine vllm --preset small --size 224   # a 40 M model
    python benchmarks/engine_throughput.py --device cuda --engine vllm --preset 3b --size 448   # on a GPU

``--engine vllm`` adds a third run: the same streams through a vLLM server all at once (one thread
per stream; the server batches their requests; docs/vllm.md), started here in vLLM's environment
(``--vllm-python``, default .venv-vllm) unless ``--vllm-url`` names one serving the same checkpoint.
It reports the ratio to the PyTorch engine one by one and the prefix-cache hit fraction from vLLM's
own counters (cached prompt tokens / prompt tokens looked up during the run).

Default model: the embedded tiny StreamPro-Synth checkpoint (``--model DIR`` for another). The
clips are StreamPro-Synth's (``dataset_scripts/synth.py``), one per task, rendered at 1 fps;
``--frames N`` loops each clip to N frames (the question stays at its time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def synth_streams(n: int, frames: int | None, size: int, seed: int = 7):
    """n StreamPro-Synth clips (tasks in turn), rendered at 1 fps: (frames, question, question_time) each."""
    from streampro.dataset_scripts.schema import TASKS
    from streampro.dataset_scripts.synth import make_clip

    out = []
    for i in range(n):
        clip = make_clip(TASKS[i % len(TASKS)], 1000 + i, seed, size)
        images = [clip.render(float(k + 1)) for k in range(clip.duration)]  # turn k shows time k + 1 s
        if frames is not None:
            images = [images[k % len(images)] for k in range(frames)]
        out.append((images, clip.question, clip.question_time))
    return out


def save_preset(preset: str, max_pixels: int) -> str:
    """A random-weight StreamPro model of ``preset``'s shape, saved (vLLM serves a folder); its path."""
    import sys
    import tempfile
    from pathlib import Path

    from streampro.backbones import build_tiny_backbone

    sys.path.insert(0, str(Path(__file__).parent))
    from stream_latency import PRESETS

    tb = build_tiny_backbone("qwen2_5_vl", streampro=True, max_pixels=max_pixels, min_pixels=min(3136, max_pixels),
                             **PRESETS[preset])
    folder = tempfile.mkdtemp(prefix=f"streampro-{preset}-")
    tb.model.save_pretrained(folder)
    tb.processor.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the clips as they are (12-24 frames each)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode, alternating (median)")
    parser.add_argument("--frames", type=int, default=None, help="frames per stream (clips looped); default 100")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded tiny model)")
    parser.add_argument("--preset", default=None, choices=["small", "3b"],
                        help="instead of --model: a random-weight model of that shape (stream_latency.PRESETS), "
                             "saved to a temporary folder; frames up to --max-pixels")
    parser.add_argument("--max-pixels", type=int, default=448 * 448, help="with --preset: the frame size cap")
    parser.add_argument("--size", type=int, default=112, help="clip side in px")
    parser.add_argument("--window-turns", type=int, default=200)
    parser.add_argument("--memory", default="window", choices=["window", "sink_window"])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=[None, "float32", "bfloat16"])
    parser.add_argument("--engine", default="pytorch", choices=["pytorch", "vllm"],
                        help="vllm: also stream on a vLLM server, all streams in flight at once")
    parser.add_argument("--vllm-url", default=None, help="a running vLLM server for --engine vllm")
    parser.add_argument("--vllm-python", default=None, help="vLLM's python (default .venv-vllm/bin/python)")
    parser.add_argument("--vllm-arg", action="append", default=[], help="one more argument for the vLLM server")
    args = parser.parse_args()

    import torch

    from streampro.loading import load_model_and_processor

    torch.manual_seed(0)
    if args.preset is not None:
        args.model = save_preset(args.preset, args.max_pixels)
    model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    frames = None if args.quick else (args.frames or 100)
    streams = synth_streams(args.streams, frames, args.size)
    options = dict(window_turns=args.window_turns, memory=args.memory, max_new_tokens=args.max_new_tokens)
    total = sum(len(f) for f, _, _ in streams)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        # Warm-up (allocator, kernels) on one short stream each way.
        list(model.generate_stream(streams[0][0][:3], None, processor=processor, **options))
        model.generate_streams([s[0][:3] for s in streams[:2]], [None, None], processor=processor, **options)
        sync()

        def run_single():
            return [list(model.generate_stream(f, q, processor=processor, question_time=t, **options))
                    for f, q, t in streams]

        def run_batched():
            return model.generate_streams([f for f, _, _ in streams], [q for _, q, _ in streams],
                                          processor=processor, question_times=[t for _, _, t in streams], **options)

        times, events = {"single": [], "batched": []}, {}
        for r in range(max(1, args.repeats)):
            order = (("single", run_single), ("batched", run_batched))
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                events[name] = fn()
                sync()
                times[name].append(time.perf_counter() - start)
                print(f"  run {r + 1}: {name:8s} {times[name][-1]:.2f} s", flush=True)
        single_s, batched_s = statistics.median(times["single"]), statistics.median(times["batched"])
        single, batched = events["single"], events["batched"]
    agree = sum(a.decision == b.decision and a.text == b.text
                for sa, sb in zip(single, batched) for a, b in zip(sa, sb)) / total
    responses = sum(e.decision == "response" for s in single for e in s)
    print(f"model: {model.config.backbone} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), "
          f"{args.streams} streams, {total} frames, {responses} responses, device {args.device}")
    print(f"  one by one: {total / single_s:8.1f} frames/s  ({single_s:.2f} s, median of {len(times['single'])})")
    print(f"  batched:    {total / batched_s:8.1f} frames/s  ({batched_s:.2f} s, median of {len(times['batched'])})")
    result = {
        "streams": args.streams,
        "frames": total,
        "responses": responses,
        "device": args.device,
        "memory": args.memory,
        "frames_per_s_single": round(total / single_s, 2),
        "frames_per_s_batched": round(total / batched_s, 2),
        "speedup_batched": round(single_s / batched_s, 2),
        "repeats": max(1, args.repeats),
        "event_agreement": round(agree, 4),
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.engine == "vllm":
        result.update(run_vllm(args, processor, streams, options, single, single_s, total))
    print(json.dumps(result))


def run_vllm(args, processor, streams, options, single, single_s: float, total: int) -> dict:
    """The streams on a vLLM server at once; figures against the PyTorch one-by-one run."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from streampro.loading import default_model_dir
    from streampro.serving.vllm_server import VLLMServer
    from streampro.serving.vllm_session import VLLMEngine, prefix_cache_hit_fraction

    model_dir = args.model or default_model_dir()
    server = (contextlib.nullcontext(args.vllm_url) if args.vllm_url else
              VLLMServer(model_dir, python=args.vllm_python, extra_args=args.vllm_arg))
    with server as url:
        engine = VLLMEngine(url, model_dir, processor=processor)
        list(engine.generate_stream(streams[0][0][:3], "warm-up", **options))  # first requests, encoder warm-up
        before = engine.client.metrics()
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(streams)) as pool:
            events = list(pool.map(lambda s: list(engine.generate_stream(s[0], s[1], question_time=s[2], **options)),
                                   streams))
        vllm_s = time.perf_counter() - start
        after = engine.client.metrics()
        engine.close()
    agree = sum(a.decision == b.decision and a.text == b.text
                for sa, sb in zip(single, events) for a, b in zip(sa, sb)) / total
    p_gap = max((abs(a.p_response - b.p_response) for sa, sb in zip(single, events) for a, b in zip(sa, sb)
                 if a.p_response is not None), default=0.0)
    hit = prefix_cache_hit_fraction(before, after)
    print(f"  vLLM, {len(streams)} at once: {total / vllm_s:8.1f} frames/s  ({vllm_s:.2f} s), "
          f"{single_s / vllm_s:.2f}x the PyTorch engine one by one; prefix-cache hits {hit:.1%} of prompt tokens")
    return {
        "frames_per_s_vllm": round(total / vllm_s, 2),
        "throughput_ratio_vs_pytorch": round(single_s / vllm_s, 2),
        "prefix_cache_hit_fraction": round(hit, 4) if hit is not None else None,
        "event_agreement_vllm": round(agree, 4),
        "max_p_response_gap_vllm": round(p_gap, 6),
        "vllm_server_args": args.vllm_arg,
    }


if __name__ == "__main__":
    main()
