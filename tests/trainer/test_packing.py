"""Padding-free packing of streams and token-budget micro-batches: same training, fewer wasted tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streampro.dataset_scripts.collator import (
    StreamingSFTCollator,
    TokenBudgetBatchSampler,
    frame_token_bound,
    mrope_position_ids,
)
from streampro.trainer.sft_config import StreamProSFTConfig
from streampro.trainer.sft_trainer import PACKED_SDPA, use_packed_sdpa

from streampro.backbones import build_tiny_backbone
from streampro.testing.sft import colour_stream_records, tiny_sft_trainer

SIZE = 56  # 4 image tokens per frame
TURNS = (3, 7, 4, 9, 5, 2, 8, 6)  # streams of different lengths: padding really wastes tokens


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packdata")
    streams = []
    for i, n in enumerate(TURNS):
        q = i % 2
        answers = {n - 1: "it turned red"} if i % 3 else {q: "a blue square appeared", n - 1: "it turned green"}
        streams.append((f"p{i}", n, q, answers))
    return root, colour_stream_records(root, streams, seed=1, size=SIZE)


def make_trainer(tmp_path, data, backbone="qwen2_5_vl", pack=False, **overrides):
    root, records = data
    return tiny_sft_trainer(tmp_path / "out", backbone, records, root, pack=pack, **overrides)


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_mrope_positions_equal_get_rope_index(tmp_path, data, backbone):
    tb = build_tiny_backbone(backbone, streampro=True)
    root, records = data
    collator = StreamingSFTCollator(tb.processor, frames_root=root)
    for record in records[:3]:
        e = collator.encode(record)
        expected, _ = tb.model.model.get_rope_index(e["input_ids"][None], e["mm_token_type_ids"][None],
                                                    image_grid_thw=e["image_grid_thw"])
        got = mrope_position_ids(e["input_ids"], e["image_grid_thw"], tb.processor.image_token_id, 2)
        assert torch.equal(got, expected[:, 0])


@pytest.mark.parametrize("backbone, loss_type, attention", [
    ("qwen2_5_vl", "cb_stream", "per-stream"), ("qwen3_vl", "cb_stream", "per-stream"),
    ("qwen2_5_vl", "focal", "block-mask"),
])
def test_packed_and_padded_losses_and_gradients_are_equal(tmp_path, data, monkeypatch, backbone, loss_type, attention):
    """fp32: loss to 1e-6 relative, every gradient to 1e-5 relative / 1e-7 absolute.

    ``per-stream``: pack_streams switches SDPA to one causal call per stream (no mask);
    ``block-mask``: plain SDPA with transformers' block-diagonal mask over the packed row.
    """
    trainer = make_trainer(tmp_path, data, backbone, pack=attention == "per-stream", loss_type=loss_type)
    model = trainer.model
    _, records = data
    batch = records[:4]
    padded = StreamingSFTCollator(trainer.processing_class, data[0], pack=False)(batch)
    packed = StreamingSFTCollator(trainer.processing_class, data[0], pack=True)(batch)
    row = int(padded["attention_mask"].sum())
    assert packed["input_ids"].shape == (1, row) and "attention_mask" not in packed
    assert padded["input_ids"].numel() > packed["input_ids"].numel()  # padding removed
    n_items = int((padded["labels"][:, 1:] != -100).sum())
    assert int((packed["labels"][:, 1:] != -100).sum()) == n_items
    sdpa, longest = torch.nn.functional.scaled_dot_product_attention, []

    def spy(q, k, v, attn_mask=None, **kw):
        longest.append((q.shape[-2], attn_mask is None))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    results = []
    for inputs in (padded, packed):
        longest.clear()
        model.zero_grad()
        with monkeypatch.context() as m:
            m.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
            loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=n_items)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    # The packed row's attention: per stream without a mask, or once over the row with the block mask.
    assert max(longest)[0] < row if attention == "per-stream" else (row, False) in longest
    (loss_pad, grads_pad), (loss_pack, grads_pack) = results
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-6, atol=0)
    assert grads_pad.keys() == grads_pack.keys() and len(grads_pad) > 10
    for n in grads_pad:
        torch.testing.assert_close(grads_pack[n], grads_pad[n], rtol=1e-5, atol=1e-7, msg=n)
    # The class counts and weights logged per micro-batch are the same.
    logged = trainer._metrics["train"]
    assert logged["decision/silence_weight"][0] == pytest.approx(logged["decision/silence_weight"][1], rel=1e-6)
    assert logged["decision/response_count"][0] == logged["decision/response_count"][1] > 0


def test_per_stream_attention_leaves_streaming_inference_unchanged():
    """A model trained with pack_streams keeps its attention setting: the engine must decide exactly as with SDPA."""
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(7)]
    kw = dict(processor=tb.processor, question_time=0.0, window_turns=3, evict_turns=1, max_new_tokens=3,
              response_threshold=0.5)
    before = [e.p_response for e in tb.model.generate_stream(frames, "What changes?", **kw)]
    assert use_packed_sdpa(tb.model) and tb.model.config._attn_implementation == PACKED_SDPA
    after = [e.p_response for e in tb.model.generate_stream(frames, "What changes?", **kw)]
    assert after == before


def test_packed_training_step_equals_padded(tmp_path, data):
    """One SGD step through the Trainer (its own token count N) moves every weight the same way, with
    activation checkpointing on the packed side (the recomputed attention keeps streams apart too)."""
    pad = make_trainer(tmp_path / "a", data, pack=False)
    pack = make_trainer(tmp_path / "b", data, pack=True, activation_checkpointing=True)
    before = {k: v.clone() for k, v in pack.model.state_dict().items()}
    pad.train()
    pack.train()
    assert pack.model.is_activation_checkpointing and not pad.model.is_activation_checkpointing
    for (n, a), b in zip(pad.model.named_parameters(), pack.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=n)
    assert any(not torch.equal(before[k], v) for k, v in pack.model.state_dict().items())  # the step moved weights
    assert pack.state.log_history[0]["loss"] == pytest.approx(pad.state.log_history[0]["loss"], rel=1e-5)


def test_token_budget_sampler_keeps_every_record_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 1000, size=200).tolist() + [2500]  # one record over the budget
    for packed in (True, False):
        sampler = TokenBudgetBatchSampler(lengths, 2000, packed=packed, seed=3)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # what is trained on is unchanged
        assert len(batches) == len(sampler) and sampler.oversized == 1
        for b in batches:
            cost = sum(lengths[i] for i in b) if packed else len(b) * max(lengths[i] for i in b)
            assert cost <= 2000 or b == [200]
        sampler.set_epoch(1)
        again = list(sampler)
        assert sorted(map(sorted, again)) == sorted(map(sorted, batches)) and again != batches  # new order only
    # Sorting by length fills the budget: packed micro-batches average > 90 % full here.
    packed = TokenBudgetBatchSampler(lengths[:200], 2000, packed=True, seed=3)
    fill = sum(lengths[:200]) / (len(packed) * 2000)
    assert fill > 0.9


def test_record_length_is_exact_for_frames_at_the_bound(data):
    root, records = data
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True)
    collator = StreamingSFTCollator(tb.processor, frames_root=root)
    assert frame_token_bound(tb.processor) == 16 and frame_token_bound(tb.processor, SIZE * SIZE) == 4
    for record in records:
        assert collator.record_length(record, frame_token_bound(tb.processor, SIZE * SIZE)) == len(
            collator.encode(record)["input_ids"])


def test_token_budget_training_sees_every_record_once(tmp_path, data):
    root, records = data
    trainer = make_trainer(tmp_path, data, pack=True, max_tokens_per_batch=700, max_steps=-1, num_train_epochs=1)
    trainer.data_collator.max_pixels = SIZE * SIZE  # frames are 56 px: the length bound is exact
    loader = trainer.get_train_dataloader()
    batches = [b["input_ids"].shape[1] for b in loader]
    assert 1 < len(batches) < len(records) and max(batches) <= 700  # several streams per packed micro-batch
    assert sum(batches) == sum(len(trainer.data_collator.encode(r)["input_ids"]) for r in records)  # each once
    trainer.train()
    assert trainer.state.global_step == len(batches)


@pytest.mark.parametrize("kwargs, match", [
    ({"packing": True}, "pack_streams"),
    ({"padding_free": True}, "pack_streams"),
    ({"max_length": 4096}, "--window-turns"),
    ({"max_tokens_per_batch": 0}, "max_tokens_per_batch must be >= 1"),
])
def test_config_points_to_the_streaming_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamProSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kwargs)
