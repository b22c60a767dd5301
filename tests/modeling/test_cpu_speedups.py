"""The opt-in CPU speed-ups of the Qwen2.5-VL vision tower compute the same thing as transformers' code."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from streampro.backbones import build_tiny_backbone
from streampro.cpu_speedups import apply_cpu_speedups


def _inputs(processor, size: int, n: int):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    return processor.process_frames(frames)


@pytest.mark.parametrize("size", [56, 112])  # one window per frame; several windows per frame
def test_vision_tower_outputs_and_gradients_match(size):
    # vision_hidden 32 / 2 heads: the tiny sizes of the engine tests; 3 frames give 3+ equal chunks.
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True, min_pixels=56 * 56, max_pixels=112 * 112)
    ref = tb.model.model.visual
    fast = copy.deepcopy(ref)
    assert apply_cpu_speedups(fast) == 1 + len(fast.blocks)  # patch embed + one attention per block
    assert apply_cpu_speedups(fast) == 0  # idempotent
    batch = _inputs(tb.processor, size, 3)
    outs = []
    for tower in (ref, fast):
        tower.train()
        out = tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        out.pow(2).sum().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters()}))
    (a, ga), (b, gb) = outs
    assert (a - b).abs().max().item() <= 1e-5
    assert ga.keys() == gb.keys()
    for name in ga:
        assert (ga[name] - gb[name]).abs().max().item() <= 1e-5 * max(1.0, ga[name].abs().max().item()), name
    # The weights and their names (hence saved checkpoints) are untouched.
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in fast.named_parameters()]


def test_other_backbones_are_left_alone():
    tb = build_tiny_backbone("qwen3_vl", seed=0, streampro=True)
    assert apply_cpu_speedups(tb.model) == 0
