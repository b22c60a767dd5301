"""Tiny SFT setups the trainer tests share: colour-changing streams on disk and a one-step trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# One plain SGD step, nothing saved or logged elsewhere: the update is exactly lr × gradient.
ONE_SGD_STEP = {
    "use_cpu": True, "bf16": False, "activation_checkpointing": False,
    "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "max_steps": 1, "learning_rate": 1.0,
    "optim": "sgd", "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
    "max_grad_norm": 0.0, "train_sampling_strategy": "sequential", "logging_steps": 1, "save_strategy": "no",
    "report_to": "none", "disable_tqdm": True, "seed": 0, "dataloader_num_workers": 0,
}


def colour_stream_records(root: str | Path, streams: list[tuple[str, int, int, dict[int, str]]], seed: int,
                          size: int = 56) -> list[dict]:
    """OU SFT records over videos of one flat colour per turn, written under ``root/videos``.

    ``streams`` holds ``(id, turns, question_turn, {turn: answer})``; the colours come from one
    generator seeded ``seed``, drawn stream after stream. Videos are 2 fps, so turn k at 1 fps shows
    colour k.
    """
    from streampro.modeling_streampro.time_streampro import turn_time
    from streampro.video import encode_video

    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for name, n, q, answers in streams:
        colours = rng.integers(0, 255, size=(n, 3), dtype=np.uint8)
        frames = [np.broadcast_to(colours[j // 2], (size, size, 3)).copy() for j in range(2 * n)]
        encode_video(root / f"videos/{name}.mp4", frames, fps=2)
        records.append({
            "id": name, "task": "OU", "video": f"videos/{name}.mp4", "duration": float(n), "fps": 1.0,
            "num_turns": n, "system": None,
            "questions": [{"turn": q, "time": turn_time(q), "text": "Tell me when the screen changes colour."}],
            "responses": [{"turn": k, "time": turn_time(k), "text": t} for k, t in sorted(answers.items())],
        })
    return records


def tiny_sft_trainer(output_dir: str | Path, backbone: str, records: list[dict], frames_root: str | Path, *,
                     pack: bool = False, **overrides):
    """A ``StreamProSFTTrainer`` of one SGD step (:data:`ONE_SGD_STEP`, then ``overrides``) on a fresh tiny model."""
    from datasets import Dataset

    from streampro.backbones import build_tiny_backbone
    from streampro.dataset_scripts.collator import StreamingSFTCollator
    from streampro.trainer.sft_config import StreamProSFTConfig
    from streampro.trainer.sft_trainer import StreamProSFTTrainer

    tb = build_tiny_backbone(backbone, seed=0, streampro=True)
    tb.model.train()
    args = {**ONE_SGD_STEP, "output_dir": str(output_dir), "pack_streams": pack, **overrides}
    return StreamProSFTTrainer(
        model=tb.model,
        args=StreamProSFTConfig(**args),
        data_collator=StreamingSFTCollator(tb.processor, frames_root=frames_root, pack=pack),
        train_dataset=Dataset.from_list(records),
        processing_class=tb.processor,
    )
