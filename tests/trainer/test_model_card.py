"""SFT and GRPO write StreamPro's model card (not TRL's generic one) in the output folder and each checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from streampro.dataset_scripts.collator import StreamingSFTCollator
from streampro.modeling_streampro.processing_streampro import turn_time
from streampro.trainer.sft_config import StreamProSFTConfig
from streampro.trainer.sft_trainer import StreamProSFTTrainer

from streampro.backbones import build_tiny_backbone
from streampro.modelcard import write_model_card
from streampro.video import encode_video

SIZE = 56  # 4 image tokens per frame: one step takes well under a second
TURNS = 4
FAST = {
    "use_cpu": True, "bf16": False, "activation_checkpointing": False, "max_steps": 1, "learning_rate": 1e-3,
    "optim": "sgd", "lr_scheduler_type": "constant", "warmup_steps": 0, "logging_steps": 1,
    "save_strategy": "steps", "save_steps": 1, "report_to": "none", "disable_tqdm": True, "seed": 0,
    "dataloader_num_workers": 0,
}
TRL_GENERIC = ("fine-tuned version of", "licence: license", 'pipeline("text-generation"', "generated_from_trainer")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny StreamPro checkpoint whose card names a base model, and two 4-second videos."""
    root = tmp_path_factory.mktemp("cards")
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    tb.model.save_pretrained(root / "model")
    tb.processor.save_pretrained(root / "model")
    write_model_card(root / "model", model_name="model", backbone="qwen2_5_vl", stage="converted",
                     base_model="Qwen/Qwen2.5-VL-3B-Instruct", license="other", license_name="qwen-research")
    (root / "videos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        frames = [np.broadcast_to(c, (SIZE, SIZE, 3)).copy() for c in rng.integers(0, 255, (TURNS, 3), dtype=np.uint8)]
        encode_video(root / f"videos/v{i}.mp4", frames, fps=1)
    return root


def assert_streampro_card(path, stage: str) -> ModelCard:
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "video-text-to-text"
    assert data["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"  # inherited from the starting checkpoint's card
    assert (data["license"], data["license_name"]) == ("other", "qwen-research")
    assert {"streampro", "trl", stage} <= set(data["tags"])
    assert "generate_stream(" in card.text and f"streampro train {stage}" in card.text
    text = path.read_text()
    assert not [phrase for phrase in TRL_GENERIC if phrase in text]
    return card


def test_sft_output_and_checkpoints_carry_the_streampro_card(root, tmp_path):
    from streampro.trainer.sft import load_model, save_final

    model, processor = load_model(str(root / "model"))
    model.train()
    records = [{
        "id": f"v{i}", "task": "OU", "video": f"videos/v{i}.mp4", "duration": float(TURNS), "fps": 1.0,
        "num_turns": TURNS, "system": None,
        "questions": [{"turn": 0, "time": turn_time(0), "text": "Tell me when the screen changes colour."}],
        "responses": [{"turn": 2, "time": turn_time(2), "text": "it changed"}],
    } for i in range(2)]
    out = tmp_path / "sft-run"
    trainer = StreamProSFTTrainer(
        model=model,
        args=StreamProSFTConfig(output_dir=str(out), per_device_train_batch_size=2, **FAST),
        data_collator=StreamingSFTCollator(processor, frames_root=root),
        train_dataset=Dataset.from_list(records),
        processing_class=processor,
    )
    trainer.train()
    save_final(trainer, str(out))
    assert_streampro_card(out / "checkpoint-1" / "README.md", "sft")
    card = assert_streampro_card(out / "README.md", "sft")
    assert card.data.model_name == "sft-run"
    assert "1 optimiser steps" in card.text and "loss `cb_stream`" in card.text


def test_grpo_output_and_checkpoints_carry_the_streampro_card(root, tmp_path):
    from streampro.trainer.grpo import build_trainer
    from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig
    from streampro.trainer.sft import save_final
    from trl import ModelConfig

    samples = [{
        "id": f"s{i}", "task": "OU", "question": "Tell me when the colour changes.", "question_time": 1.0,
        "video": f"videos/v{i}.mp4", "duration": float(TURNS), "fps": 1.0, "system": None, "rubric": None,
        "answers": [{"text": "it changed", "time": 3.0}],
    } for i in range(2)]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = tmp_path / "grpo-run"
    config = StreamProGRPOConfig(
        output_dir=str(out), per_device_train_batch_size=2, num_generations=2, frames_root=str(root),
        max_new_tokens=4, window_turns=8, max_frames_per_rollout=8, rubric_judge="offline", turn_judge="lexical",
        weight_decay=0.0, max_grad_norm=0.0, **FAST,
    )
    script = GRPOScriptArguments(model=str(root / "model"), train_file=str(tmp_path / "rl.jsonl"))
    trainer = build_trainer(script, config, ModelConfig())
    trainer.train()
    save_final(trainer, str(out))
    assert_streampro_card(out / "checkpoint-1" / "README.md", "grpo")
    assert_streampro_card(out / "README.md", "grpo")
