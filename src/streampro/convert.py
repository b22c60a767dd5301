"""Turn a base Qwen2.5-VL / Qwen3-VL checkpoint into a StreamPro one (``streampro convert-backbone``).

Steps: load the base model with transformers' own class (which applies its checkpoint key
conversion), add the decision tokens to the tokenizer and resize/initialise the embeddings,
wrap the weights in ``StreamProForConditionalGeneration`` (same parameter names, so the state
dict moves over strictly), and save weights + remote code + processor (tokenizer with the
StreamPro chat template, PIL image processor) to the output directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def convert_backbone(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str = "auto",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    overwrite: bool = False,
) -> Path:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    from streampro.backbones import add_decision_tokens
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
    if min_pixels or max_pixels:
        size = dict(image_processor.size)
        size["shortest_edge"] = min_pixels or size["shortest_edge"]
        size["longest_edge"] = max_pixels or size["longest_edge"]
        image_processor.size = size
    processor = StreamProProcessor(image_processor=image_processor, tokenizer=tokenizer)

    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    logger.info("wrote StreamPro checkpoint (%s backbone) to %s", config.backbone, dst)
    return dst
