"""Step-time overhead of the CB-Stream loss over plain cross-entropy in StreamProSFTTrainer.

Run::

    python benchmarks/sft_loss_overhead.py                 # CPU defaults (tiny model, 112 px, 24 turns, batch 4)
    python benchmarks/sft_loss_overhead.py --turns 12 --size 56 --repeats 20 --threads 1

Same process, same model and the same batches for both losses; each repeat times one training
step (fused forward + loss + per-step metrics + backward + optimizer step) per batch for
``cb_stream`` and ``ce`` back to back, alternating which goes first, after warm-up steps.
``cb_over_ce_step_time`` comes from the paired ratios (each pair runs within a few seconds, so a
shared machine's load drifting over minutes cancels): the geometric mean of the median ratio with
CB-Stream first and with CE first (the position in a pair matters). The ratio of median step times is
reported too, and ``loss_only_ms`` times the weighting + reduction alone. ``--control`` runs CE in
both slots (an A/A test: the ratio it prints is the machine's noise floor). The last line of the
output is one JSON object (target ``cb_over_ce_step_time`` <= 1.03).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time

logger = logging.getLogger("sft_loss_overhead")


def synthetic_batches(processor, n_batches: int, batch_size: int, turns: int, size: int, seed: int):
    """Padded batches of streams over random solid-colour frames (no video decoding in the timed loop)."""
    import numpy as np
    from streampro.dataset_scripts.collator import StreamingSFTCollator

    rng = np.random.default_rng(seed)
    collator = StreamingSFTCollator(processor)
    batches = []
    for _ in range(n_batches):
        encodings = []
        for _ in range(batch_size):
            frames = [np.full((size, size, 3), rng.integers(0, 255, size=3), dtype=np.uint8) for _ in range(turns)]
            q = int(rng.integers(0, turns // 2))
            answers = sorted(rng.choice(np.arange(q, turns), size=2, replace=False).tolist())
            record = {
                "id": "bench", "num_turns": turns, "fps": 1.0, "system": None,
                "questions": [{"turn": q, "text": "Tell me when the screen changes colour."}],
                "responses": [{"turn": k, "text": "the red square turned blue"} for k in answers],
            }
            encodings.append(collator.encode(record, frames=frames))
        batches.append(collator.pad(encodings))
    return collator, batches


def loss_only_ms(model, batch: dict, decision_ids, repeats: int = 50) -> dict[str, float]:
    """Milliseconds of the weighting + reduction + its backward alone, per loss, on one batch's log-probs."""
    import torch
    from streampro.trainer.sft_trainer import stream_token_weights

    with torch.no_grad():
        out = model(**batch, fused_lm_head=True)
    targets = batch["labels"][:, 1:]
    result = {}
    for loss_type in ("ce", "cb_stream"):
        log_probs = out.log_probs.detach().clone().requires_grad_(True)
        start = time.perf_counter()
        for _ in range(repeats):
            weights, _ = stream_token_weights(targets, log_probs, out.label_mask, decision_ids, loss_type)
            ((weights * -log_probs).sum() / out.label_mask.sum()).backward()
        result[loss_type] = round((time.perf_counter() - start) / repeats * 1e3, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--text-hidden", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--turns", type=int, default=24)
    parser.add_argument("--size", type=int, default=112, help="frame side in pixels")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=8, help="rounds over all batches; even = balanced orders")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--control", action="store_true",
                        help="A/A control: the 'cb_stream' slot runs 'ce' too, so the ratio shows the noise floor")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (fewer = steadier on a busy machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    from datasets import Dataset
    from streampro.trainer.sft_config import StreamProSFTConfig
    from streampro.trainer.sft_trainer import StreamProSFTTrainer

    from streampro.backbones import build_tiny_backbone

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    tb = build_tiny_backbone(
        args.backbone, seed=0, streampro=True, max_pixels=args.size * args.size,
        text_hidden=args.text_hidden, text_layers=args.text_layers,
    )
    collator, batches = synthetic_batches(tb.processor, args.batches, args.batch_size, args.turns, args.size, seed=0)
    with tempfile.TemporaryDirectory() as out:
        config = StreamProSFTConfig(
            output_dir=out, use_cpu=device == "cpu", bf16=False, gradient_checkpointing=False, report_to="none",
            freeze_vision=False, disable_tqdm=True,
        )
        trainer = StreamProSFTTrainer(
            model=tb.model, args=config, data_collator=collator, train_dataset=Dataset.from_list([{"id": "x"}]),
            processing_class=tb.processor,
        )
        model = trainer.model.to(device).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

        def step(loss_type: str, batch: dict) -> float:
            trainer.args.loss_type = "ce" if args.control else loss_type
            n_items = (batch["labels"][:, 1:] != -100).sum()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        for _ in range(args.warmup):
            for batch in batches:
                step("cb_stream", batch)
                step("ce", batch)
        times: dict[str, list[float]] = {"cb_stream": [], "ce": []}
        # cb / ce of back-to-back steps on the same batch, kept apart by which loss ran first: the
        # second step of a pair runs measurably faster or slower on a busy machine, so the estimate is
        # the geometric mean of the two orders' medians (a plain median picks the larger group's bias).
        ratios: dict[str, list[float]] = {"cb_first": [], "ce_first": []}
        for r in range(args.repeats):
            order = ("cb_stream", "ce") if r % 2 == 0 else ("ce", "cb_stream")
            for batch in batches:
                pair = {loss_type: step(loss_type, batch) for loss_type in order}
                for loss_type, t in pair.items():
                    times[loss_type].append(t)
                ratios["cb_first" if order[0] == "cb_stream" else "ce_first"].append(pair["cb_stream"] / pair["ce"])
            logger.info("repeat %d/%d: median cb %.4fs, ce %.4fs", r + 1, args.repeats,
                        statistics.median(times["cb_stream"]), statistics.median(times["ce"]))
        loss_ms = loss_only_ms(model, batches[0], trainer.decision_ids)
    cb, ce = statistics.median(times["cb_stream"]), statistics.median(times["ce"])
    result = {
        "cb_over_ce_step_time": round(
            (statistics.median(ratios["cb_first"]) * statistics.median(ratios["ce_first"])) ** 0.5, 4
        ),
        "paired_ratio_by_order": {k: round(statistics.median(v), 4) for k, v in ratios.items()},
        "cb_over_ce_median_times": round(cb / ce, 4),
        "cb_stream_step_s": round(cb, 5),
        "ce_step_s": round(ce, 5),
        "steps_per_loss": len(times["ce"]),
        "device": device,
        "backbone": args.backbone,
        "text_hidden": args.text_hidden,
        "text_layers": args.text_layers,
        "batch_size": args.batch_size,
        "turns": args.turns,
        "tokens_per_batch": int(batches[0]["attention_mask"].sum()),
        "loss_only_ms": loss_ms,
        "control": args.control,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
