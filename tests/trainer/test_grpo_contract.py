"""Contract with TRL's private GRPO hooks (pinned trl==1.16.0): a TRL upgrade that breaks the override fails here.

StreamProGRPOTrainer overrides ``_generate_and_score_completions`` and relies on TRL's
``_prepare_inputs`` calling it, on ``_calculate_rewards`` / ``_get_per_token_logps_and_entropies``
keeping their signatures, on ``_compute_loss`` honouring ``tool_mask``, and on the engine's
``StreamSession._pick``. The one-step test checks the behaviour, not just the names: with the
policy mask zeroed the loss and every gradient are exactly zero.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import trl
from streampro.modeling_streampro.modeling_streampro import StreamSession
from streampro.trainer.grpo import build_trainer
from streampro.trainer.grpo_config import GRPOScriptArguments, StreamProGRPOConfig
from trl import GRPOTrainer

from streampro.backbones import build_tiny_backbone
from streampro.video import encode_video

PINNED = "1.16.0"


def test_trl_version_is_the_pinned_one():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'"trl=={PINNED}"' in pyproject
    assert trl.__version__ == PINNED, (
        f"trl {trl.__version__} is installed but StreamProGRPOTrainer was written against {PINNED}; re-check the "
        "overridden hooks (see trainer/grpo_trainer.py docstring) before changing the pin"
    )


def test_private_hooks_keep_their_shape():
    params = lambda f: list(inspect.signature(f).parameters)
    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    logps = params(GRPOTrainer._get_per_token_logps_and_entropies)
    for name in (
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "pixel_values",
        "image_grid_thw",
        "num_images",
        "mm_token_type_ids",
    ):
        assert name in logps
    assert "self._generate_and_score_completions(generation_batch)" in inspect.getsource(
        GRPOTrainer._prepare_inputs
    )
    loss_src = inspect.getsource(GRPOTrainer._compute_loss)
    assert re.search(r'completion_mask \* inputs\["tool_mask"\]', loss_src)
    assert params(StreamSession._pick) == ["self", "logits"]
    # Attributes the override reads from GRPOTrainer.__init__.
    init_src = inspect.getsource(GRPOTrainer.__init__)
    for attr in (
        "self.reward_weights",
        "self.num_generations",
        "self.scale_rewards",
        "self._metrics",
        "self._logs",
        "self._pending_metrics",
        "self._pending_extra_logs",
        "self.reward_func_names",
    ):
        assert attr in init_src, attr


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    with torch.no_grad():  # decision / end-of-turn tokens likely (see test_grpo_trainer.py)
        tb.model.model.language_model.embed_tokens.weight[:, 0] += 0.05
        for t in (tb.processor.silence_token_id, tb.processor.response_token_id, tb.processor.end_of_turn_id):
            tb.model.lm_head.weight[t, 0] = 4.0
    tb.model.save_pretrained(root / "model")
    tb.processor.save_pretrained(root / "model")
    frames = [np.full((56, 56, 3), 40 * k, dtype=np.uint8) for k in range(4)]  # 56 px: 4 tokens per frame
    encode_video(root / "v.mp4", frames, fps=1)
    sample = {
        "id": "s",
        "task": "OU",
        "question": "When does it get brighter?",
        "question_time": 1.0,
        "video": "v.mp4",
        "duration": 4.0,
        "fps": 1.0,
        "system": None,
        "rubric": None,
        "answers": [{"text": "now", "time": 3.0}],
    }
    (root / "rl.jsonl").write_text(json.dumps(sample) + "\n")
    args = StreamProGRPOConfig(
        output_dir=str(root / "out"),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=1,
        report_to="none",
        disable_tqdm=True,
        frames_root=str(root),
        max_new_tokens=3,
        window_turns=4,
        max_frames_per_rollout=4,
        rubric_judge="offline",
        save_strategy="no",
        seed=0,
    )
    script = GRPOScriptArguments(model=str(root / "model"), train_file=str(root / "rl.jsonl"))
    from trl import ModelConfig

    return build_trainer(script, args, ModelConfig())


def test_one_step_through_trl_honours_the_policy_mask(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this test bypasses
    batch = [dict(x) for x in trainer.train_dataset] * 2  # what TRL's RepeatSampler hands over: G copies
    inputs = trainer._prepare_inputs(batch)  # TRL: generate (our hook), split, buffer
    for key in (
        "prompt_ids",
        "completion_ids",
        "completion_mask",
        "tool_mask",
        "advantages",
        "pixel_values",
        "image_grid_thw",
        "mm_token_type_ids",
        "num_images",
        "num_items_in_batch",
    ):
        assert key in inputs, key
    assert inputs["advantages"].shape == (2,)
    inputs["advantages"] = torch.tensor([1.0, -1.0])  # force a learning signal whatever the rewards were
    loss = trainer.compute_loss(trainer.model, inputs)
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad.abs().sum() for p in trainer.model.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0
    trainer.model.zero_grad(set_to_none=True)

    masked = {**inputs, "tool_mask": torch.zeros_like(inputs["tool_mask"])}
    loss = trainer.compute_loss(trainer.model, masked)
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trainer.model.parameters())
    trainer.model.zero_grad(set_to_none=True)
