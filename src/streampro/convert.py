"""Turn a base Qwen2.5-VL / Qwen3-VL checkpoint into a StreamPro one (``streampro convert-backbone``).

Steps: load the base model with transformers' own class (which applies its checkpoint key
conversion), add the decision tokens to the tokenizer and resize/initialise the embeddings,
wrap the weights in ``StreamProForConditionalGeneration`` (same parameter names, so the state
dict moves over strictly), and save weights + remote code + processor (tokenizer with the
StreamPro chat template, PIL image processor) and a model card (``streampro.modelcard``) to the
output directory. ``three_state=True`` (``--three-state``) also adds ``</Standby>``: a three-state
checkpoint (docs/engine.md, "Three states (Streamo)"), which the model card says.

Frames get a streaming pixel budget, not the base model's offline one: at most
``STREAMING_MAX_PIXELS`` (448×448) per frame, 256 vision tokens on Qwen2.5-VL (28-px merged
patches) and 196 on Qwen3-VL (32-px), so the default 200-turn window holds about 51 k / 39 k
vision tokens (docs/engine.md, "Frame resolution"). ``max_pixels`` overrides it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# Per-frame pixel budget for streaming (one frame per turn, up to 200 turns in the window).
STREAMING_MAX_PIXELS = 448 * 448


def convert_backbone(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str = "auto",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    overwrite: bool = False,
    base_model: str | None = None,
    license: str | None = None,
    three_state: bool = False,
) -> Path:
    """Convert ``src`` into a StreamPro checkpoint in ``dst``; returns ``dst``.

    ``max_pixels`` defaults to ``STREAMING_MAX_PIXELS``; ``min_pixels`` to the base processor's.
    ``base_model`` is the Hub id the card names (default: read from a Hugging Face cache path).
    ``license`` defaults to the licence in ``src/README.md`` (a Hub download has one), else "other".
    ``three_state`` adds ``</Standby>`` after the two decision tokens (``add_standby_token``).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    from streampro.backbones import add_decision_tokens, add_standby_token
    from streampro.modelcard import frames_note, hub_id_from_path, read_card_data, write_model_card
    from streampro.modeling_streampro.configuration_streampro import BACKBONE_MODEL_TYPES, StreamProConfig
    from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration
    from streampro.modeling_streampro.processing_streampro import CHAT_TEMPLATE, StreamProProcessor

    src, dst = Path(src), Path(dst)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} has no config.json: pass a Qwen2.5-VL / Qwen3-VL checkpoint directory")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} is not empty; choose another directory or pass --overwrite")
    model_type = json.loads((src / "config.json").read_text()).get("model_type")
    if model_type not in BACKBONE_MODEL_TYPES:
        raise ValueError(
            f"{src}/config.json has model_type {model_type!r}; convert-backbone supports "
            f"{sorted(BACKBONE_MODEL_TYPES)} (already a StreamPro checkpoint? then there is nothing to convert)"
        )
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    base = AutoModelForImageTextToText.from_pretrained(src, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(src)
    add_decision_tokens(tokenizer, base)
    if three_state:
        add_standby_token(tokenizer, base)
    tokenizer.chat_template = CHAT_TEMPLATE

    config = StreamProConfig.from_backbone_config(base.config, tokenizer)
    config.text_config.vocab_size = base.get_input_embeddings().weight.shape[0]
    with torch.device("meta"):
        model = StreamProForConditionalGeneration(config)
    # Same parameter names as the base class: a strict load catches any drift.
    model.load_state_dict(base.state_dict(), strict=True, assign=True)
    model.to(base.dtype)
    model.eval()

    image_processor = Qwen2VLImageProcessorPil.from_pretrained(src)
    size = dict(image_processor.size)
    size["shortest_edge"] = min_pixels or size["shortest_edge"]
    size["longest_edge"] = max_pixels or STREAMING_MAX_PIXELS
    if size["shortest_edge"] > size["longest_edge"]:
        raise ValueError(f"min_pixels {size['shortest_edge']} is above max_pixels {size['longest_edge']}")
    image_processor.size = size
    processor = StreamProProcessor(image_processor=image_processor, tokenizer=tokenizer)

    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    base_card = read_card_data(src)
    base_model = base_model or hub_id_from_path(src)
    if base_model is None:
        logger.warning("the model card names no base_model: pass --base-model ORG/NAME (the Hub id of %s)", src)
    if license is None and "license" not in base_card:
        logger.warning("%s has no model card with a licence: the card says 'other'; pass --license", src)
    write_model_card(
        dst,
        model_name=dst.resolve().name,
        backbone=config.backbone,
        stage="converted",
        base_model=base_model,
        license=license or base_card.get("license", "other"),
        license_name=base_card.get("license_name"),
        license_link=base_card.get("license_link"),
        frames=frames_note(image_processor, config.backbone),
        three_state=config.standby_token_id is not None,
    )
    states = "three-state" if config.standby_token_id is not None else "two-state"
    logger.info("wrote %s StreamPro checkpoint (%s backbone) to %s", states, config.backbone, dst)
    return dst
