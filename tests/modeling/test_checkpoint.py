"""Hub remote code, strict weight loading (the silent random-init trap) and convert-backbone."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessorPil,
)

from streampro.backbones import (
    BACKBONES,
    build_image_processor,
    build_tiny_backbone,
    build_tiny_tokenizer,
    tiny_config,
)
from streampro.cli import main as cli_main
from streampro.testing.media import random_frames as frames


def model_inputs(processor):
    enc = processor.encode_conversation(frames(2), {0: "What happens next?"}, {1: "it turned green"})
    return dict(
        input_ids=enc["input_ids"][None],
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        mm_token_type_ids=enc["mm_token_type_ids"][None],
    )


@pytest.fixture(scope="module", params=BACKBONES)
def saved(request, tmp_path_factory):
    tb = build_tiny_backbone(request.param, seed=1, streampro=True)
    path = tmp_path_factory.mktemp(request.param)
    tb.model.save_pretrained(path)
    tb.processor.save_pretrained(path)
    with torch.no_grad():
        logits = tb.model(**model_inputs(tb.processor)).logits
    return path, tb, logits


def test_save_writes_remote_code_and_auto_map(saved):
    path, _, _ = saved
    for name in ("configuration_streampro.py", "modeling_streampro.py", "processing_streampro.py", "time_streampro.py"):
        assert (path / name).exists()
    auto_map = json.loads((path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForCausalLM",
                             "AutoProcessor"}
    assert json.loads((path / "processor_config.json").read_text())["auto_map"]["AutoProcessor"].endswith(
        "StreamProProcessor")


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForImageTextToText, AutoModelForCausalLM])
def test_every_auto_class_reproduces_the_logits(saved, auto_class):
    path, tb, logits = saved
    model = auto_class.from_pretrained(path, trust_remote_code=True)
    assert type(model).__name__ == "StreamProForConditionalGeneration"
    assert type(model).__module__.startswith("transformers_modules")  # the checkpoint's own remote code
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    assert AutoConfig.from_pretrained(path, trust_remote_code=True).backbone == tb.backbone
    with torch.no_grad():
        assert torch.equal(model(**model_inputs(processor)).logits, logits)


def test_remote_code_checkpoint_streams(saved):
    path, tb, _ = saved
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    remote = [e.to_dict() for e in model.generate_stream(frames(4), "What happens next?", processor=processor,
                                                          max_new_tokens=3, response_threshold=0.5)]
    local = [e.to_dict() for e in tb.model.generate_stream(frames(4), "What happens next?", processor=tb.processor,
                                                            max_new_tokens=3, response_threshold=0.5)]
    # Same decisions, answers and contexts; p_response to float32 rounding (the loaded model may take
    # another matmul path than the in-memory one, which moves the last bit or two).
    assert [{**e, "p_response": None} for e in remote] == [{**e, "p_response": None} for e in local]
    assert [e["p_response"] for e in remote] == pytest.approx([e["p_response"] for e in local], abs=1e-6)


def test_legacy_qwen_key_names_load_correctly(saved, tmp_path):
    """Original Qwen checkpoints name weights visual.* / model.layers.*: the conversion must apply to StreamPro."""
    path, tb, logits = saved
    if tb.backbone != "qwen2_5_vl":
        pytest.skip("Qwen3-VL checkpoints were released with the model.language_model.* layout")
    state = load_file(path / "model.safetensors")
    legacy = {}
    for key, value in state.items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        legacy[key] = value
    assert any(k.startswith("visual.") for k in legacy) and any(k.startswith("model.layers.") for k in legacy)
    for f in path.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    save_file(legacy, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = StreamProForConditionalGeneration.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(**model_inputs(tb.processor)).logits, logits)


def test_missing_weight_is_an_error_not_a_random_init(saved, tmp_path):
    path, _, _ = saved
    state = load_file(path / "model.safetensors")
    dropped = next(k for k in state if "visual" in k)
    del state[dropped]
    for f in path.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing"):
        StreamProForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        AutoModelForImageTextToText.from_pretrained(tmp_path, trust_remote_code=True)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_convert_backbone_cli(backbone, tmp_path, capsys):
    """A base checkpoint saved by transformers' own class → a StreamPro checkpoint that streams."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    base_dir, out_dir = tmp_path / "base", tmp_path / "streampro"
    tok = build_tiny_tokenizer(decision_tokens=False)
    torch.manual_seed(0)
    cls = Qwen2_5_VLForConditionalGeneration if backbone == "qwen2_5_vl" else Qwen3VLForConditionalGeneration
    base = cls(tiny_config(backbone, tok)).eval()
    base.save_pretrained(base_dir)
    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>").save_pretrained(base_dir)
    build_image_processor(backbone).save_pretrained(base_dir)

    assert cli_main(["convert-backbone", str(base_dir), "--out", str(out_dir)]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out_dir, trust_remote_code=True)
    assert model.config.silence_token_id == processor.silence_token_id
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    # The base model's behaviour is preserved on its own vocabulary.
    turn = processor.encode_user_turn(frames(1)[0], 0, question="What happens next?")  # no decision tokens
    plain = dict(input_ids=turn["input_ids"][None], pixel_values=turn["pixel_values"],
                 image_grid_thw=turn["image_grid_thw"], mm_token_type_ids=turn["mm_token_type_ids"][None])
    with torch.no_grad():
        new = model(**plain).logits
        old = base(**plain).logits
    assert torch.allclose(new[..., : old.shape[-1]], old, atol=1e-5)
    events = list(model.generate_stream(frames(3), "What happens next?", processor=processor, max_new_tokens=2))
    assert len(events) == 3
    assert cli_main(["convert-backbone", str(base_dir), "--out", str(out_dir)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["convert-backbone", str(out_dir), "--out", str(tmp_path / "again")]) == 2
    assert "nothing to convert" in capsys.readouterr().err
