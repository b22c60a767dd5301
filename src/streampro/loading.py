"""Load a StreamPro checkpoint and its processor; the embedded tiny model is the offline default."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The default checkpoint shipped inside the package (a tiny model trained on StreamPro-Synth,
# see docs/reproduce.md). Every command that takes --model uses it when none is given.
EMBEDDED_MODEL_DIR = Path(__file__).parent / "assets" / "streampro-tiny-synth"
DTYPES = ("float32", "bfloat16", "float16")


def default_model_dir() -> Path:
    if not (EMBEDDED_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"the embedded default model is missing at {EMBEDDED_MODEL_DIR}; pass --model DIR "
            "(a StreamPro checkpoint, e.g. from `streampro convert-backbone` or `streampro train sft`)"
        )
    return EMBEDDED_MODEL_DIR


def load_model_and_processor(model_dir: str | Path | None = None, *, device: str | None = None, dtype=None):
    """(model, processor) from a StreamPro checkpoint directory (``None`` → the embedded default).

    Loads through the checkpoint's own remote code path classes (``StreamProForConditionalGeneration``),
    strictly: a missing weight is an error. ``dtype`` (a ``torch.dtype`` or its name) defaults to
    the checkpoint's own (``config.json``'s ``dtype``): a bf16 checkpoint stays bf16 on the CPU too
    (half the memory of float32).
    """
    from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration
    from streampro.modeling_streampro.processing_streampro import StreamProProcessor

    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json); pass a StreamPro checkpoint")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None or dtype == "auto":
        dtype = "auto"
    elif isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose one of {['auto', *DTYPES]}")
        dtype = getattr(torch, dtype)
    model = StreamProForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
    processor = StreamProProcessor.from_pretrained(path, trust_remote_code=True)
    logger.info("loaded %s (%s backbone, %s) on %s", path, model.config.backbone, model.dtype, device)
    return model, processor


def load_processor(model_dir: str | Path | None = None):
    """The processor of a StreamPro checkpoint alone (clients of a served model need no weights)."""
    from streampro.modeling_streampro.processing_streampro import StreamProProcessor

    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (path / "processor_config.json").exists():
        raise FileNotFoundError(f"{path} has no processor_config.json; pass a StreamPro checkpoint")
    return StreamProProcessor.from_pretrained(path, trust_remote_code=True)
