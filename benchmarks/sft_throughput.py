"""SFT throughput: supervised tokens/s and peak memory, padded vs packed micro-batches, on a realistic length mix.

Run::

    python benchmarks/sft_throughput.py                                   # CPU, tiny model, ~6 min on 2 cores
    python benchmarks/sft_throughput.py --device cuda --preset 3b         # GPU: 3B-shaped, 448 px, 200-turn windows

The streams are real annotations converted and built as ``streampro data build sft`` does
(default: ActivityNet Captions val_1 from ``../shared/data``, EU, 1 fps, cut into 200-turn
training windows 50 turns apart), with their real questions and answers; the frames are solid
colours at the ``--max-pixels`` size (no video decoding: the model step is what is timed).
``--streams`` records are drawn at random (seeded) and grouped ``--batch-size`` at a time; every
group is one micro-batch *padded* (B rows) and the same group *packed* (one row, per-stream
positions, docs/training.md); with ``--budget`` (default: batch size × the mean record length) a
third mode packs micro-batches filled up to that many tokens (``TokenBudgetBatchSampler``). One
step = fused forward, CB-Stream loss, backward, AdamW step; the modes alternate step by step in
this process, so a shared machine's load hits them alike, and only the ratios are comparable.

Reported per mode: supervised tokens/s (labels the loss trains on), real tokens/s (stream tokens,
padding excluded), padded share, and peak memory — CUDA's peak allocation per step, or on a CPU
the largest RSS growth during a step (an approximate high-water mark from a 2 ms sampler).
``packed_over_padded`` is the ratio of supervised tokens/s (goal on the CPU: >= 1.5). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger("sft_throughput")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ANNOTATIONS = ROOT.parent / "shared" / "data" / "annotations" / "activitynet_captions_val_1.json"


def real_records(annotations: Path, fmt: str, task: str, window_turns: int, window_stride: int | None) -> list[dict]:
    """SFT records (training windows included) of a converted annotation file, as `data build sft` writes them."""
    from streampro.dataset_scripts.builders import build_records
    from streampro.dataset_scripts.converters import convert
    from streampro.dataset_scripts.schema import read_raw

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.jsonl"
        convert(fmt, annotations, raw, task=task, progress=False)
        samples = read_raw(raw)
    return build_records("sft", samples, 1.0, window_turns=window_turns, window_stride=window_stride)


def synth_records(n: int) -> list[dict]:
    """Fallback when the annotations are absent: StreamPro-Synth clips (13-24 turns, far shorter than real data)."""
    from streampro.dataset_scripts.builders import build_sft_record
    from streampro.dataset_scripts.schema import TASKS
    from streampro.dataset_scripts.synth import make_clip

    records = []
    for i in range(n):
        clip = make_clip(TASKS[i % len(TASKS)], i, 0, size=16)
        raw = {"id": f"s{i}", "task": clip.task, "video": "v.mp4", "duration": float(clip.duration),
               "question": clip.question, "question_time": clip.question_time, "answers": clip.answers, "system": None}
        records.append(build_sft_record(raw))
    return [r for r in records if r is not None]


try:
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS growth may then hide memory freed and reused by an earlier step
    _LIBC = None


class RssPeak:
    """Largest RSS growth (MB) during a block, sampled every 2 ms (CPU memory; approximate)."""

    def __init__(self):
        self.peak = 0.0

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # hand freed heap back first, so the growth is this block's own
        self.start, self.high, self.running = self.rss_mb(), self.rss_mb(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.high = max(self.high, self.rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.high, self.rss_mb()) - self.start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="tiny", help="model shape: tiny, small or 3b (benchmarks/stream_latency.py)")
    parser.add_argument("--backbone", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: float32 on a CPU, bfloat16 on CUDA")
    parser.add_argument("--attn", default=None,
                        help="attention implementation (default: sdpa on a CPU, flash_attention_2 on CUDA if installed)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="frame size (default: 56x56 = 4 tokens on a CPU, 448x448 = 200704 with --preset 3b)")
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS)
    parser.add_argument("--format", default="activitynet-captions")
    parser.add_argument("--task", default="EU")
    parser.add_argument("--window-turns", type=int, default=200)
    parser.add_argument("--window-stride", type=int, default=None)
    parser.add_argument("--streams", type=int, default=None, help="records drawn (default 16; 8 with --preset 3b)")
    parser.add_argument("--batch-size", type=int, default=4, help="streams per padded / packed micro-batch")
    parser.add_argument("--budget", type=int, default=None,
                        help="tokens per micro-batch of the token-budget mode (default: batch size x mean length; 0: off)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all micro-batches after the warm-up")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="activation checkpointing (default: on with CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import numpy as np
    import torch
    from datasets import Dataset
    from streampro.dataset_scripts.collator import StreamingSFTCollator, TokenBudgetBatchSampler
    from streampro.trainer.sft_config import StreamProSFTConfig
    from streampro.trainer.sft_trainer import StreamProSFTTrainer

    from streampro.backbones import build_tiny_backbone

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stream_latency import PRESETS

    cuda = args.device.startswith("cuda")
    big = args.preset == "3b"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    max_pixels = args.max_pixels or (448 * 448 if big else 56 * 56)
    n_streams = args.streams or (8 if big else 16)
    checkpointing = cuda if args.checkpointing is None else args.checkpointing
    attn = args.attn
    if attn is None:
        attn = "sdpa"
        if cuda:
            try:
                import flash_attn  # noqa: F401

                attn = "flash_attention_2"
            except ImportError:
                logger.warning("flash_attn is not installed: packed rows use SDPA with a (ΣL)² block-diagonal mask")
    if args.threads:
        torch.set_num_threads(args.threads)

    # ---- the length mix: real records, a random draw ----
    if args.annotations.is_file():
        pool = real_records(args.annotations, args.format, args.task, args.window_turns, args.window_stride)
        source = f"{args.annotations.name} ({args.format}, {args.task})"
    else:
        logger.warning("%s not found: StreamPro-Synth clips instead (short streams)", args.annotations)
        pool = synth_records(200)
        source = "streampro-synth"
    rng = random.Random(args.seed)
    records = rng.sample(pool, min(n_streams, len(pool)))
    turns = [len(r["window"]["turns"]) if r.get("window") else r["num_turns"] for r in records]
    logger.info("%d records from %s: %d-%d turns (mean %.0f)", len(records), source, min(turns), max(turns),
                sum(turns) / len(turns))

    # ---- model, trainer (for its compute_loss: fused head + CB-Stream) ----
    side = int(math.sqrt(max_pixels))
    tb = build_tiny_backbone(args.backbone, seed=0, streampro=True, min_pixels=min(56 * 56, max_pixels),
                             max_pixels=max_pixels, **PRESETS[args.preset])
    processor = tb.processor
    collator = StreamingSFTCollator(processor)
    frames_rng = np.random.default_rng(args.seed)
    encodings = []
    for r in records:
        frame = np.full((side, side, 3), frames_rng.integers(0, 255, size=3), dtype=np.uint8)
        encodings.append(collator.encode(r, frames=[frame] * r["num_turns"]))
    lengths = [len(e["input_ids"]) for e in encodings]
    groups = [list(range(i, min(i + args.batch_size, len(records)))) for i in range(0, len(records), args.batch_size)]
    modes = {
        "padded": [collator.pad([encodings[i] for i in g]) for g in groups],
        "packed": [collator.packed([encodings[i] for i in g]) for g in groups],
    }
    budget = args.budget if args.budget is not None else args.batch_size * round(sum(lengths) / len(lengths))
    if budget:
        sampler = TokenBudgetBatchSampler(lengths, budget, packed=True, seed=args.seed)
        modes["packed_budget"] = [collator.packed([encodings[i] for i in b]) for b in sampler]
    with tempfile.TemporaryDirectory() as out:
        config = StreamProSFTConfig(output_dir=out, use_cpu=not cuda, bf16=False, activation_checkpointing=False,
                                    report_to="none", disable_tqdm=True, freeze_vision=True, pack_streams=True)
        trainer = StreamProSFTTrainer(model=tb.model, args=config, data_collator=collator,
                                      train_dataset=Dataset.from_list([{"id": "x"}]), processing_class=processor)
        model = trainer.model.to(args.device, dtype).train()
        if attn != "sdpa":  # sdpa: the trainer has switched it to per-stream SDPA for packed rows (pack_streams)
            model.set_attn_implementation(attn)  # after the move: FlashAttention checks device and dtype
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
        on_device = {m: [{k: v.to(args.device) for k, v in b.items()} for b in bs] for m, bs in modes.items()}

        def step(batch: dict) -> tuple[float, float]:
            n_items = (batch["labels"][:, 1:] != -100).sum()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            with RssPeak() as rss:
                start = time.perf_counter()
                loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else rss.peak
            return elapsed, peak

        stats = {m: {"time": 0.0, "supervised": 0, "real": 0, "processed": 0, "peak_mb": 0.0, "steps": 0}
                 for m in modes}
        n_batches = max(len(bs) for bs in modes.values())
        for r in range(args.warmup + args.repeats):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for j in range(n_batches):
                for m in order:
                    if j >= len(modes[m]):
                        continue
                    batch = on_device[m][j]
                    elapsed, peak = step(batch)
                    if r < args.warmup:
                        continue
                    s = stats[m]
                    s["time"] += elapsed
                    s["supervised"] += int((batch["labels"][:, 1:] != -100).sum())
                    s["real"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch[
                        "input_ids"].numel()
                    s["processed"] += batch["input_ids"].numel()
                    s["peak_mb"] = max(s["peak_mb"], peak)
                    s["steps"] += 1
            if r >= args.warmup:
                logger.info("round %d/%d: %s", r + 1 - args.warmup, args.repeats, ", ".join(
                    f"{m} {stats[m]['supervised'] / stats[m]['time']:.1f} sup tok/s" for m in modes))
    per_mode = {
        m: {
            "supervised_tokens_per_s": round(s["supervised"] / s["time"], 2),
            "real_tokens_per_s": round(s["real"] / s["time"], 1),
            "padding_share": round(1 - s["real"] / s["processed"], 4),
            "peak_mb": round(s["peak_mb"], 1),
            "micro_batches": len(modes[m]),
            "step_s": round(s["time"] / s["steps"], 4),
        }
        for m, s in stats.items()
    }
    print(f"{'mode':<14}{'sup tok/s':>12}{'tok/s':>12}{'padding':>9}{'peak MB':>10}{'micro-batches':>15}")
    for m, v in per_mode.items():
        print(f"{m:<14}{v['supervised_tokens_per_s']:>12.1f}{v['real_tokens_per_s']:>12.1f}"
              f"{v['padding_share']:>9.1%}{v['peak_mb']:>10.1f}{v['micro_batches']:>15}")
    result = {
        "packed_over_padded": round(per_mode["packed"]["supervised_tokens_per_s"]
                                    / per_mode["padded"]["supervised_tokens_per_s"], 3),
        **({"budget_over_padded": round(per_mode["packed_budget"]["supervised_tokens_per_s"]
                                        / per_mode["padded"]["supervised_tokens_per_s"], 3)} if budget else {}),
        "modes": per_mode,
        "device": args.device,
        "preset": args.preset,
        "backbone": args.backbone,
        "dtype": str(dtype).removeprefix("torch."),
        "attn": attn,
        "activation_checkpointing": checkpointing,
        "max_pixels": max_pixels,
        "lengths_from": source,
        "window_turns": args.window_turns,
        "streams": len(records),
        "turns_min_mean_max": [min(turns), round(sum(turns) / len(turns), 1), max(turns)],
        "tokens_min_mean_max": [min(lengths), round(sum(lengths) / len(lengths), 1), max(lengths)],
        "batch_size": args.batch_size,
        "budget": budget,
        "repeats": args.repeats,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
