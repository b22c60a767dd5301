"""StreamProSFTTrainer on a tiny model: gradient accumulation, training, freezing, resume, save → stream."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from streampro.trainer.sft_trainer import freeze_vision_tower, stream_token_weights

from streampro.backbones import build_tiny_backbone
from streampro.testing.sft import colour_stream_records, tiny_sft_trainer

SIZE = 56  # the tiny image processor's min_pixels side: 4 image tokens per frame keeps steps fast
TURNS = 5  # short streams: a step of batch 4 takes well under a second


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 five-turn records over 8 small videos; responses on different turns so batches differ."""
    root = tmp_path_factory.mktemp("sftdata")
    streams = []
    for i in range(8):
        q = i % 2
        answers = {2 + i % 3: "it turned red"} if i % 4 else {1 + q: "a blue square appeared", 4: "it turned green"}
        streams.append((f"c{i}", TURNS, q, answers))
    return root, colour_stream_records(root, streams, seed=0, size=SIZE)


def make_trainer(tmp_path, data, backbone="qwen2_5_vl", n_records=8, **overrides):
    root, records = data
    return tiny_sft_trainer(tmp_path / "out", backbone, records[:n_records], root, **overrides)


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradient_accumulation_equals_one_large_batch(tmp_path, data):
    """CE: 2 micro-batches × 4 with accumulation == one batch of 8 (same update, same loss)."""
    small = make_trainer(tmp_path / "a", data, loss_type="ce", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    large = make_trainer(tmp_path / "b", data, loss_type="ce", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    before = params(small.model)
    assert all(torch.equal(before[n], p) for n, p in params(large.model).items())
    small.train()
    large.train()
    after_small, after_large = params(small.model), params(large.model)
    moved = [n for n in before if not torch.equal(before[n], after_small[n])]
    assert moved  # the step did something
    for n in before:
        torch.testing.assert_close(after_small[n], after_large[n], rtol=1e-5, atol=1e-6, msg=n)
    assert small.state.log_history[0]["loss"] == pytest.approx(large.state.log_history[0]["loss"], rel=1e-5)


@pytest.mark.parametrize("loss_type", ["cb_stream", "focal"])
def test_accumulated_loss_is_normalised_by_global_token_count(tmp_path, data, loss_type):
    """Class weights are per micro-batch (docs/method.md §4); the normaliser N is the global batch's token count.

    The accumulated update equals the gradient of Σ_mb Σ_i w_i(mb)·(−log p_i) / N_global, computed by hand.
    """
    trainer = make_trainer(tmp_path, data, loss_type=loss_type, gradient_accumulation_steps=2)
    reference = copy.deepcopy(trainer.model)  # carries TRL's fused LM head, same weights
    before = params(trainer.model)
    trainer.train()
    collate = trainer.data_collator
    _, records = data
    batches = [collate(records[:4]), collate(records[4:8])]
    n_global = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    reference.zero_grad()
    for b in batches:
        out = reference(**b, fused_lm_head=True)
        w, _ = stream_token_weights(b["labels"][:, 1:], out.log_probs, out.label_mask, trainer.decision_ids, loss_type)
        ((w * -out.log_probs).sum() / n_global).backward()
    for n, p in reference.named_parameters():
        if p.grad is not None:
            expected_step = -1.0 * p.grad  # SGD, lr 1, no clipping, no weight decay
            torch.testing.assert_close(params(trainer.model)[n] - before[n], expected_step, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_tiny_model_trains_with_frozen_vision_tower(tmp_path, data, backbone):
    trainer = make_trainer(
        tmp_path, data, backbone=backbone, n_records=4, max_steps=8, optim="adamw_torch", learning_rate=5e-3,
        freeze_vision=True,
    )
    model = trainer.model
    before = params(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen_vision = {n for n in before if n.startswith("model.visual.") and n not in trainable}
    assert frozen_vision and all(".merger." not in n for n in frozen_vision)  # the projector stays trainable
    assert any(n.startswith("model.visual.merger.") for n in trainable)
    trainer.train()
    after = params(model)
    unchanged = sorted(n for n in trainable if torch.equal(before[n], after[n]))
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    assert all(torch.equal(before[n], after[n]) for n in frozen_vision)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and np.mean(losses[-3:]) < 0.75 * losses[0]  # same 4 records every step: loss falls
    logged = trainer.state.log_history[0]
    for key in ("decision/silence_count", "decision/response_count", "decision/silence_weight",
                "decision/response_weight", "decision/accuracy", "decision/response_recall"):
        assert key in logged, key
    assert logged["decision/silence_weight"] + logged["decision/response_weight"] == pytest.approx(2.0, rel=1e-4)


def test_freeze_vision_tower_keeps_qwen3_deepstack_mergers_trainable():
    model = build_tiny_backbone("qwen3_vl", streampro=True).model
    freeze_vision_tower(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".deepstack_merger_list." in n for n in trainable)
    assert not any(".blocks." in n or ".patch_embed." in n for n in trainable if n.startswith("model.visual."))


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_freeze_projector_freezes_the_whole_vision_tower(backbone):
    model = build_tiny_backbone(backbone, streampro=True).model
    frozen = freeze_vision_tower(model, projector=True)
    assert frozen == len(list(model.model.visual.parameters()))
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())


def test_freeze_projector_needs_freeze_vision(tmp_path, data):
    with pytest.raises(ValueError, match="freeze_projector=True needs freeze_vision=True"):
        make_trainer(tmp_path, data, n_records=2, freeze_vision=False, freeze_projector=True)


def test_save_then_resume_continues_identically(tmp_path, data):
    common = {"max_steps": 4, "optim": "adamw_torch", "learning_rate": 1e-3, "lr_scheduler_type": "linear",
              "n_records": 8, "per_device_train_batch_size": 2}
    straight = make_trainer(tmp_path / "a", data, **common)
    straight.train()
    interrupted = make_trainer(tmp_path / "b", data, save_strategy="steps", save_steps=2, **common)
    interrupted.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").exists()
    resumed = make_trainer(tmp_path / "b", data, **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]
    assert len(losses(straight)) == 4
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)  # steps 1-2 come from the checkpoint
    for n, p in params(straight.model).items():
        torch.testing.assert_close(params(resumed.model)[n], p, rtol=1e-5, atol=1e-7, msg=n)


def test_gradient_checkpointing_gives_the_same_update(tmp_path, data):
    """The paper recipes train with gradient checkpointing and a frozen vision tower: same step as without."""
    plain = make_trainer(tmp_path / "a", data, n_records=4, freeze_vision=True)
    checkpointed = make_trainer(tmp_path / "b", data, n_records=4, freeze_vision=True, activation_checkpointing=True)
    plain.train()
    checkpointed.train()
    for n, p in params(plain.model).items():
        torch.testing.assert_close(params(checkpointed.model)[n], p, rtol=1e-5, atol=1e-6, msg=n)
