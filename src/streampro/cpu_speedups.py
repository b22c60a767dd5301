"""Two numerically equivalent CPU speed-ups for transformers' Qwen2.5-VL vision tower (opt-in).

On CPU the vision tower of a tiny model is ~60 % of
a training step, for two reasons that have nothing to do with the maths:

1. ``Qwen2_5_VisionPatchEmbed`` runs a Conv3d whose kernel equals its stride, i.e. a plain matrix
   product on flattened patches; the Conv3d path is several times slower than ``F.linear`` on CPU.
2. ``Qwen2_5_VLVisionAttention`` without flash-attention loops in Python over the attention
   chunks (windows / images), one small attention call each. When every chunk has the same
   length (frames of one size, the common case) one batched call computes the same thing.

:func:`apply_cpu_speedups` replaces the ``forward`` of those module *instances* in one model
(the weights, their names and the saved checkpoint are untouched; the remote-code model files are
not modified). It is applied explicitly, e.g. by ``streampro reproduce``; nothing calls it
silently. ``tests/modeling/test_cpu_speedups.py`` checks the outputs and gradients match the original
(max abs diff ≤ 1e-5). Qwen3-VL's tower is left alone (a different module family).
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def _patch_embed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """Conv3d with kernel == stride == one patch is a linear map of the flattened patch."""
    weight = self.proj.weight  # (E, C, T, P, P)
    flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)  # (N, C*T*P*P), same order as Conv3d
    return F.linear(flat, weight.reshape(weight.shape[0], -1))  # (N, E)


def _vision_attention_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """One batched SDPA over equal-length chunks; otherwise the original per-chunk loop."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if self.config._attn_implementation not in ("sdpa", "eager") or bool((lengths != lengths[0]).any()):
        return self._streampro_original_forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    seq_length = hidden_states.shape[0]
    n, chunk = lengths.numel(), int(lengths[0])
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)  # (S, H, D)
    # (S, H, D) -> (n, H, L, D): chunks are consecutive runs of `chunk` positions.
    q, k, v = (t.reshape(n, chunk, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=self.attention_dropout if self.training else 0.0, scale=self.scaling
    )  # (n, H, L, D)
    out = out.transpose(1, 2).reshape(seq_length, -1)
    return self.proj(out)


def apply_cpu_speedups(model: torch.nn.Module) -> int:
    """Swap in the equivalent fast forwards on every Qwen2.5-VL patch-embed / vision-attention module.

    Returns the number of modules changed (0 for other backbones). Idempotent.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionPatchEmbed,
        Qwen2_5_VLVisionAttention,
    )

    changed = 0
    for module in model.modules():
        if getattr(module, "_streampro_cpu_speedup", False):
            continue
        if isinstance(module, Qwen2_5_VisionPatchEmbed):
            module.forward = types.MethodType(_patch_embed_forward, module)
        elif isinstance(module, Qwen2_5_VLVisionAttention):
            module._streampro_original_forward = module.forward
            module.forward = types.MethodType(_vision_attention_forward, module)
        else:
            continue
        module._streampro_cpu_speedup = True
        changed += 1
    logger.info("cpu speed-ups: replaced the forward of %d vision modules", changed)
    return changed
