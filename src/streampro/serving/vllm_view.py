"""The view of a StreamPro checkpoint that vLLM serves: the base Qwen-VL architecture, the same weights.

A StreamPro checkpoint is a Qwen2.5-VL / Qwen3-VL model with two (or three) decision tokens in its
vocabulary and remote code for streaming. vLLM knows the base architectures, not the remote code; the served
view is a folder with the base ``config.json`` (the same sizes and token ids), the tokenizer with
the decision tokens, a ``preprocessor_config.json`` with the checkpoint's own frame sizes, and the
weights. Qwen2.5-VL weights are linked, not copied (StreamPro saves the names vLLM reads); Qwen3-VL
weights are written again under the names of Qwen3-VL's released checkpoints (``model.visual.*``,
``model.language_model.*``), the only layout vLLM's Qwen3-VL loader maps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from streampro.errors import UserError

# backbone -> (vLLM / transformers architecture, model_type, processor class)
ARCHITECTURES = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "qwen3_vl", "Qwen3VLProcessor"),
}
# backbone -> (old prefix, new prefix), first match wins: the weight names vLLM's loader expects
WEIGHT_RENAMES = {"qwen3_vl": (("visual.", "model.visual."), ("model.", "model.language_model."))}
VIEW_MARK = "streampro_view.json"  # what the view was made from (a view is refreshed when its source changes)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _weights(checkpoint: Path) -> list[Path]:
    files = sorted(checkpoint.glob("*.safetensors")) + sorted(checkpoint.glob("*.safetensors.index.json"))
    if not files:
        raise UserError(f"{checkpoint} has no *.safetensors weights", "pass a saved StreamPro checkpoint folder")
    return files


def _source_stamp(checkpoint: Path) -> dict:
    return {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in [checkpoint / "config.json", *_weights(checkpoint)]}


def make_vllm_view(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write (or refresh) the served view of ``checkpoint`` in ``out``; return ``out``."""
    checkpoint, out = Path(checkpoint).resolve(), Path(out)
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        raise UserError(f"{checkpoint} has no config.json", "pass a saved StreamPro checkpoint folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "streampro":
        raise UserError(f"{config_path}: model_type is {config.get('model_type')!r}, not 'streampro'",
                        "convert a base checkpoint first: streampro convert-backbone SRC --out DST")
    backbone = config.get("backbone")
    if backbone not in ARCHITECTURES:
        raise UserError(f"{config_path}: backbone {backbone!r} has no vLLM view",
                        f"use a checkpoint with one of {', '.join(ARCHITECTURES)}")
    stamp = {"source": str(checkpoint), "files": _source_stamp(checkpoint)}
    if (out / VIEW_MARK).is_file() and json.loads((out / VIEW_MARK).read_text()) == stamp:
        return out
    architecture, model_type, processor_class = ARCHITECTURES[backbone]

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    streampro_keys = ("auto_map", "backbone", "silence_token_id", "response_token_id", "standby_token_id")
    base = {k: v for k, v in config.items() if k not in streampro_keys}
    base.update(architectures=[architecture], model_type=model_type)
    (tmp / "config.json").write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")
    for weights in _weights(checkpoint):
        if backbone in WEIGHT_RENAMES:
            _write_renamed(weights, tmp / weights.name, WEIGHT_RENAMES[backbone])
        else:
            (tmp / weights.name).symlink_to(weights)
    for name in TOKENIZER_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, tmp / name)
    tok_config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok_config.pop("auto_map", None)
    tok_config["processor_class"] = processor_class
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    processor = json.loads((checkpoint / "processor_config.json").read_text(encoding="utf-8"))
    image_processor = {k: v for k, v in processor["image_processor"].items() if k != "auto_map"}
    image_processor["processor_class"] = processor_class
    (tmp / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2) + "\n", encoding="utf-8")
    (tmp / VIEW_MARK).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _renamed(name: str, renames) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _write_renamed(src: Path, dst: Path, renames) -> None:
    """``src`` (a safetensors shard or its index) with its tensor names renamed, one shard in memory at a time."""
    if src.name.endswith(".index.json"):
        index = json.loads(src.read_text(encoding="utf-8"))
        index["weight_map"] = {_renamed(k, renames): v for k, v in index["weight_map"].items()}
        dst.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        tensors = {_renamed(k, renames): f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    save_file(tensors, str(dst), metadata=metadata)
