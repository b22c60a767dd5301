"""StreamPro configuration: a Qwen2.5-VL or Qwen3-VL backbone config plus the decision-token ids.

Self-contained Hub remote code (imports only transformers). The text and vision sub-configs are
the backbone's own config classes, resolved from their saved ``model_type``
(``qwen2_5_vl_text`` / ``qwen3_vl_text`` ...), so one StreamPro config class serves both
backbones and the backbone's modules read it exactly like their native config.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

BACKBONE_MODEL_TYPES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}


class StreamProConfig(PreTrainedConfig):
    r"""Configuration of :class:`StreamProForConditionalGeneration`.

    Args:
        backbone (`str`): ``"qwen2_5_vl"`` or ``"qwen3_vl"``, the architecture of ``text_config`` / ``vision_config``.
        silence_token_id / response_token_id (`int`): ids of ``</Silence>`` and ``</Response>``.
        standby_token_id (`int`, *optional*): id of ``</Standby>`` for a three-state checkpoint
            (docs/engine.md "Three states"); ``None`` (the default) for two states.
        image_token_id, video_token_id, vision_start_token_id, vision_end_token_id: as in the backbone config.
    """

    model_type = "streampro"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl_text"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl_vision"),
    }
    keys_to_ignore_at_inference = ["past_key_values"]

    backbone: str = "qwen2_5_vl"
    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    silence_token_id: int | None = None
    response_token_id: int | None = None
    standby_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.backbone not in BACKBONE_MODEL_TYPES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONE_MODEL_TYPES)}, got {self.backbone!r}")
        # Sub-config dicts without a model_type default to the chosen backbone's classes.
        for key, suffix in (("text_config", "text"), ("vision_config", "vision")):
            value = getattr(self, key)
            if isinstance(value, dict) and "model_type" not in value:
                setattr(self, key, {**value, "model_type": f"{self.backbone}_{suffix}"})
            elif value is None:
                setattr(self, key, {"model_type": f"{self.backbone}_{suffix}"})
        super().__post_init__(**kwargs)

    def to_diff_dict(self) -> dict:
        # A two-state config.json stays as it was before the optional third decision existed.
        out = super().to_diff_dict()
        if out.get("standby_token_id", 0) is None:
            del out["standby_token_id"]
        return out

    @classmethod
    def from_backbone_config(cls, backbone_config, tokenizer=None, **kwargs) -> StreamProConfig:
        """Wrap a native ``Qwen2_5_VLConfig`` / ``Qwen3VLConfig``; decision ids come from ``tokenizer``.

        ``standby_token_id`` is set when the tokenizer has ``</Standby>`` (a three-state checkpoint).
        """
        backbone = backbone_config.model_type
        if backbone not in BACKBONE_MODEL_TYPES:
            raise ValueError(
                f"unsupported backbone model_type {backbone!r}; StreamPro supports {sorted(BACKBONE_MODEL_TYPES)}"
            )
        ids = {}
        if tokenizer is not None:
            vocab = tokenizer.get_vocab()
            missing = [t for t in ("</Silence>", "</Response>") if t not in vocab]
            if missing:
                raise ValueError(
                    f"tokenizer lacks the decision tokens {missing}; add them first with "
                    "streampro.backbones.add_decision_tokens (or `streampro convert-backbone`)"
                )
            ids = {"silence_token_id": vocab["</Silence>"], "response_token_id": vocab["</Response>"]}
            if "</Standby>" in vocab:
                ids["standby_token_id"] = vocab["</Standby>"]
        return cls(
            backbone=backbone,
            text_config=backbone_config.text_config.to_dict(),
            vision_config=backbone_config.vision_config.to_dict(),
            image_token_id=backbone_config.image_token_id,
            video_token_id=backbone_config.video_token_id,
            vision_start_token_id=backbone_config.vision_start_token_id,
            vision_end_token_id=backbone_config.vision_end_token_id,
            tie_word_embeddings=backbone_config.tie_word_embeddings,
            **ids,
            **kwargs,
        )


__all__ = ["StreamProConfig"]

StreamProConfig.register_for_auto_class()
