"""The activation model: a Qwen-VL backbone whose LM head is replaced by a binary score head (docs/activation.md).

Self-contained Hub remote code: imports only torch, transformers and its sibling files.

StreamBridge (docs/method.md §7) decouples *when* to answer from *what* to answer: a compact
model reads the question and the frames since it was asked and scores, after every frame,
whether a response is due. Here that model is a Qwen2.5-VL / Qwen3-VL backbone (the backbone's
own ``*Model``, vision tower + language model, under ``model``: the weight names of a Qwen-VL
checkpoint without its ``lm_head``) plus ``score_head``, a linear layer from the hidden size to
one logit, read at the learnable ``<ACT>`` token that follows each frame
(:mod:`processing_activation` builds the windows). Trained with binary cross-entropy on per-frame
labels (``streampro train activation``). Loading is strict: a missing, unexpected or mismatched
weight raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_activation import StreamProActivationConfig
from .modeling_streampro import _backbone_classes, check_loading_info

AUTO_MAP_ACTIVATION = {
    "AutoConfig": "configuration_activation.StreamProActivationConfig",
    "AutoModel": "modeling_activation.StreamProActivationModel",
    "AutoProcessor": "processing_activation.StreamProActivationProcessor",
}


@dataclass
class StreamProActivationOutput(ModelOutput):
    """``logits``: (B, L) score logits at every position (meaningful at ``<ACT>``); ``loss``: BCE over labelled positions."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class StreamProActivationPreTrainedModel(PreTrainedModel):
    config_class = StreamProActivationConfig
    config: StreamProActivationConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "Qwen2_5_VLDecoderLayer",
        "Qwen2_5_VLVisionBlock",
        "Qwen3VLTextDecoderLayer",
        "Qwen3VLVisionBlock",
    ]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        # The backbone's own initialisation (vision rotary buffers, patch merger, linear layers: the score head too).
        _backbone_classes(self.config.backbone)[1]._init_weights(self, module)


class StreamProActivationModel(StreamProActivationPreTrainedModel):
    """Qwen-VL backbone + a one-logit score head read at ``<ACT>``; strict loading."""

    def __init__(self, config: StreamProActivationConfig):
        super().__init__(config)
        self.model = _backbone_classes(config.backbone)[0](config)
        self.score_head = nn.Linear(config.text_config.hidden_size, 1)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> StreamProActivationOutput:
        """Score logits at every position; with ``labels`` ((B, L) floats, 0/1 at ``<ACT>``, -100 elsewhere) the mean BCE.

        ``mm_encoder_outputs`` (transformers' pre-encoded vision features) replaces ``pixel_values``
        when the frames were encoded once and are scored again in later windows.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs,
            use_cache=False,
            **kwargs,
        )
        hidden = outputs[0]
        logits = self.score_head(hidden).squeeze(-1).float()
        loss = None
        if labels is not None:
            scored = labels >= 0
            if not bool(scored.any()):
                raise ValueError("labels mark no <ACT> position; every window needs at least one labelled frame")
            loss = F.binary_cross_entropy_with_logits(logits[scored], labels[scored].to(logits.dtype))
        return StreamProActivationOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    @torch.no_grad()
    def act_scores(self, input_ids: torch.LongTensor, **inputs) -> list[torch.Tensor]:
        """Per batch row, the sigmoid scores at its ``<ACT>`` tokens in order (one per frame), float32."""
        logits = self(input_ids=input_ids, **inputs).logits
        act = input_ids == self.config.act_token_id
        return [torch.sigmoid(logits[i][act[i]]) for i in range(input_ids.shape[0])]

    # ---- loading / saving -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Strict ``from_pretrained``: a missing, unexpected or mismatched weight is an error.

        transformers only logs missing weights and leaves them randomly initialised; an activation
        model with a random score head would still produce scores.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        check_loading_info(model, info, args, kwargs,
                           fix="Train one with `streampro train activation --config RECIPE.yaml`.")
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights plus remote code, with ``auto_map`` for ``AutoConfig``, ``AutoModel`` and ``AutoProcessor``."""
        self.config.auto_map = dict(AUTO_MAP_ACTIVATION)
        return super().save_pretrained(save_directory, *args, **kwargs)


__all__ = ["StreamProActivationModel", "StreamProActivationOutput", "StreamProActivationPreTrainedModel"]

# save_pretrained copies this file and its siblings next to the weights (Hub remote code).
StreamProActivationModel.register_for_auto_class("AutoModel")
