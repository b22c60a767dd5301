"""The sink-and-window memory policy: evicted turns dropped from the cache in place, kept keys re-based by rotation.

Where a fresh run must be reproduced exactly: (1) re-basing keys equals a fresh forward at
uniformly shifted M-RoPE positions, on every layer (both backbones: Qwen2.5-VL's sectioned and
Qwen3-VL's interleaved M-RoPE); (2) with one decoder layer (cached keys and values then depend on
their own token and position only) every decision after evictions equals a fresh forward over the
system prompt and the kept turns. With more layers it is an approximation (docs/engine.md).
"""

import pytest
import torch
from streampro.modeling_streampro.modeling_streampro import _rebase_keys, _rope_inv_freq, _run_model
from transformers.cache_utils import DynamicCache

from streampro.backbones import build_tiny_backbone
from streampro.testing.media import random_frames as frames

QUESTION = "What happens next?"


def first_prefill(session):
    """The system prompt + the session's turns as one prefill request (ids, (3, L) positions, frames)."""
    requests = session._prefill_context()
    next(requests)  # the reset
    return requests.send(None)


@torch.no_grad()
@pytest.mark.parametrize("shift", [-37, 5, 1000])
def test_rebased_keys_equal_a_fresh_forward_at_shifted_positions(tiny, shift):
    model, p = tiny.model, tiny.processor
    session = model.stream_session(p, max_new_tokens=2, response_threshold=1.0)
    session.ask(QUESTION)
    for frame in frames(3, seed=4):
        session.step(frame)
    request = first_prefill(session)
    ids = torch.tensor([request.ids])
    base = 100  # room for negative shifts
    caches, logits = [], []
    for offset in (base, base + shift):
        cache = DynamicCache(config=model.config.get_text_config())
        positions = (request.positions + offset)[:, None, :]  # all three axes move together
        logits.append(_run_model(model, ids, positions, request.images, cache))
        caches.append(cache)
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-4  # attention only sees relative positions
    inv_freq = _rope_inv_freq(model)
    moved = torch.full((ids.shape[1],), shift)
    for before, after in zip(caches[0].layers, caches[1].layers):
        rebased = _rebase_keys(before.keys, moved, inv_freq)
        scale = after.keys.abs().max().item()
        # float32 angles: at positions ~1,000 rad one ulp is 6e-5, so agreement is to ~1e-4 of the key scale.
        assert (rebased - after.keys).abs().max().item() <= 2e-4 * scale
        assert (before.keys - after.keys).abs().max().item() > 1e-2 * scale  # the rotation is not a no-op
        assert torch.allclose(before.values, after.values, atol=1e-5)


def full_forward_last_decision(model, processor, session, fs):
    ids = list(session.system_ids)
    for turn in session.turns:
        ids += turn.head_ids + [processor.image_token_id] * turn.num_image_tokens + turn.tail_ids
        position = len(ids) - 1
        ids += turn.assistant_ids
    input_ids = torch.tensor([ids])
    vision = processor.process_frames([fs[t.index] for t in session.turns])
    out = model(input_ids=input_ids, pixel_values=vision["pixel_values"], image_grid_thw=vision["image_grid_thw"],
                mm_token_type_ids=(input_ids == processor.image_token_id).int())
    return out.logits[0, position]


@torch.no_grad()
@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("window, evict", [(4, 2), (3, 1), (1, 1)])
def test_one_layer_sink_window_equals_a_fresh_run_over_the_kept_turns(backbone, window, evict):
    tb = build_tiny_backbone(backbone, streampro=True, text_layers=1)  # one layer: keys depend on their token only
    model, p = tb.model, tb.processor
    fs = frames(11, seed=3)
    session = model.stream_session(p, memory="sink_window", window_turns=window, evict_turns=evict,
                                   max_new_tokens=3, response_threshold=0.5)
    for k, frame in enumerate(fs):
        if k in (2, 6):
            session.ask(QUESTION)  # two pinned turns: the sink has gaps between its parts
        session.step(frame)
        full = full_forward_last_decision(model, p, session, fs)
        assert (full - session.last_decision_logits).abs().max().item() <= 1e-4, f"frame {k}"
    assert session.num_evictions >= 2 and session.num_refreshes == 0
    assert [t.index for t in session.turns if t.pinned] == [2, 6]
    assert sum(not t.pinned for t in session.turns) <= window


def test_sink_window_cost_stays_bounded_without_refreshes(tiny):
    model, p = tiny.model, tiny.processor
    session = model.stream_session(p, memory="sink_window", window_turns=6, evict_turns=3, max_new_tokens=2,
                                   response_threshold=1.0)
    session.ask(QUESTION)
    lengths, positions = [], []
    for frame in frames(40, size=56):
        lengths.append(session.step(frame).context_tokens)
        positions.append(session.next_position)
    assert session.num_refreshes == 0 and session.dropped_turns > 0
    assert max(lengths[30:]) <= max(lengths[8:16]) + 2 * 7  # time tags grow by a token or two
    assert max(positions[30:]) <= max(positions[8:16]) + 2 * 7  # positions are re-based, not ever-growing
    # The kept entries are exactly the kept turns' tokens (minus the closing still pending).
    expected = len(session.system_ids) + sum(t.num_tokens() for t in session.turns) - len(session.pending_ids)
    assert session.context_tokens == expected


def test_sink_window_needs_default_rope(tiny):
    model, p = tiny.model, tiny.processor
    rope = model.config.get_text_config().rope_parameters
    saved = dict(rope)
    rope["rope_type"] = "dynamic"
    try:
        with pytest.raises(ValueError, match="rope_type 'default'"):
            model.stream_session(p, memory="sink_window")
    finally:
        rope.clear()
        rope.update(saved)
    with pytest.raises(ValueError, match="memory must be one of"):
        model.stream_session(p, memory="sink")
