"""Configuration of the StreamBridge-style activation model (docs/activation.md).

Self-contained Hub remote code (imports only transformers). Like ``StreamProConfig`` it wraps a
Qwen2.5-VL / Qwen3-VL backbone's text and vision configs (resolved from their saved
``model_type``), so the backbone's modules read it like their native config; instead of the
decision tokens it records the id of the learnable ``<ACT>`` token whose hidden state the score
head reads.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

ACTIVATION_BACKBONES = ("qwen2_5_vl", "qwen3_vl")


class StreamProActivationConfig(PreTrainedConfig):
    r"""Configuration of :class:`StreamProActivationModel`.

    Args:
        backbone (`str`): ``"qwen2_5_vl"`` or ``"qwen3_vl"``, the architecture of ``text_config`` / ``vision_config``.
        act_token_id (`int`): id of ``<ACT>``, the token after each frame whose hidden state is scored.
        image_token_id, video_token_id, vision_start_token_id, vision_end_token_id: as in the backbone config.
    """

    model_type = "streampro_activation"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl_text"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl_vision"),
    }

    backbone: str = "qwen2_5_vl"
    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    act_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.backbone not in ACTIVATION_BACKBONES:
            raise ValueError(f"backbone must be one of {list(ACTIVATION_BACKBONES)}, got {self.backbone!r}")
        # Sub-config dicts without a model_type default to the chosen backbone's classes.
        for key, suffix in (("text_config", "text"), ("vision_config", "vision")):
            value = getattr(self, key)
            if isinstance(value, dict) and "model_type" not in value:
                setattr(self, key, {**value, "model_type": f"{self.backbone}_{suffix}"})
            elif value is None:
                setattr(self, key, {"model_type": f"{self.backbone}_{suffix}"})
        super().__post_init__(**kwargs)

    @classmethod
    def from_backbone_config(cls, backbone_config, act_token_id: int, **kwargs) -> StreamProActivationConfig:
        """Wrap a native ``Qwen2_5_VLConfig`` / ``Qwen3VLConfig`` (or a ``StreamProConfig``: same fields)."""
        backbone = getattr(backbone_config, "backbone", None) or backbone_config.model_type
        if backbone not in ACTIVATION_BACKBONES:
            raise ValueError(
                f"unsupported backbone model_type {backbone!r}; the activation model supports {list(ACTIVATION_BACKBONES)}"
            )
        return cls(
            backbone=backbone,
            text_config=backbone_config.text_config.to_dict(),
            vision_config=backbone_config.vision_config.to_dict(),
            image_token_id=backbone_config.image_token_id,
            video_token_id=backbone_config.video_token_id,
            vision_start_token_id=backbone_config.vision_start_token_id,
            vision_end_token_id=backbone_config.vision_end_token_id,
            act_token_id=act_token_id,
            **kwargs,
        )


__all__ = ["StreamProActivationConfig"]

StreamProActivationConfig.register_for_auto_class()
