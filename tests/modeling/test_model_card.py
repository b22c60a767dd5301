"""Model cards, the streaming pixel budget of convert-backbone, the context check and the loading dtype."""

import json
import warnings

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoProcessor, PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration

from streampro.backbones import build_image_processor, build_tiny_backbone, build_tiny_tokenizer, tiny_config
from streampro.cli import main as cli_main
from streampro.convert import STREAMING_MAX_PIXELS
from streampro.loading import EMBEDDED_MODEL_DIR, load_model_and_processor
from streampro.modelcard import hub_id_from_path, tokens_per_frame
from streampro.testing.media import random_frames


def assert_streampro_card(path, **expected):
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "video-text-to-text"
    assert data["library_name"] == "transformers"
    assert "streampro" in data["tags"]
    assert "generate_stream(" in card.text
    for key, value in expected.items():
        assert data.get(key) == value, (key, data.get(key))
    return card


def test_embedded_model_card_carries_its_test_scores():
    card = assert_streampro_card(EMBEDDED_MODEL_DIR / "README.md", license="apache-2.0", base_model=None)
    prov = json.loads((EMBEDDED_MODEL_DIR / "PROVENANCE.json").read_text())
    assert f"| **W-Avg** | **{prov['test_w_avg_f1']:.1f}** |" in card.text
    for code in ("EU", "OU", "AA", "TP", "TG", "GP", "RF"):
        assert f"({code}) |" in card.text
    assert prov["recipe"] in card.text


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny base Qwen2.5-VL checkpoint laid out like a Hub download (cache path, card with a licence)."""
    d = tmp_path_factory.mktemp("hub") / "models--Qwen--Qwen2.5-VL-3B-Instruct" / "snapshots" / "abc123"
    tok = build_tiny_tokenizer(decision_tokens=False)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(tiny_config("qwen2_5_vl", tok)).save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>").save_pretrained(d)
    build_image_processor("qwen2_5_vl", max_pixels=12845056).save_pretrained(d)  # the base model's offline budget
    (d / "README.md").write_text("---\nlicense: other\nlicense_name: qwen-research\n"
                                 "license_link: https://example.org/LICENSE\n---\n# Qwen2.5-VL-3B-Instruct\n")
    return d


def test_convert_backbone_writes_a_card_and_a_streaming_budget(base_dir, tmp_path):
    assert hub_id_from_path(base_dir) == "Qwen/Qwen2.5-VL-3B-Instruct"
    out = tmp_path / "streampro-3b"
    assert cli_main(["convert-backbone", str(base_dir), "--out", str(out)]) == 0
    card = assert_streampro_card(out / "README.md", base_model="Qwen/Qwen2.5-VL-3B-Instruct", license="other",
                                 license_name="qwen-research")
    assert "not trained for streaming yet" in card.text
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    ip = processor.image_processor
    assert ip.size["longest_edge"] == STREAMING_MAX_PIXELS == 448 * 448
    assert tokens_per_frame(ip, 448, 448) == 256  # 28-px merged patches: 16 x 16
    assert tokens_per_frame(ip, 1280, 720) == 252
    assert "252 vision tokens" in card.text

    custom = tmp_path / "custom"
    assert cli_main(["convert-backbone", str(base_dir), "--out", str(custom), "--max-pixels", str(224 * 224),
                     "--base-model", "me/base", "--license", "apache-2.0"]) == 0
    assert AutoProcessor.from_pretrained(custom, trust_remote_code=True).image_processor.size["longest_edge"] == 224 * 224
    assert_streampro_card(custom / "README.md", base_model="me/base", license="apache-2.0")


def test_qwen3_vl_tokens_per_frame():
    ip = build_image_processor("qwen3_vl", max_pixels=STREAMING_MAX_PIXELS)
    assert tokens_per_frame(ip, 448, 448) == 196  # 32-px merged patches: 14 x 14
    assert tokens_per_frame(ip, 1280, 720) == 180


def test_session_warns_when_the_window_exceeds_the_context(tiny):
    context = tiny.model.config.get_text_config().max_position_embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.model.stream_session(tiny.processor, window_turns=8)  # fits: no warning
    with pytest.warns(UserWarning, match=f"model's context is {context:,} tokens.*window_turns <= "):
        tiny.model.stream_session(tiny.processor, window_turns=context)


def test_bf16_checkpoint_stays_bf16_on_cpu(tmp_path):
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True)
    tb.model.to(torch.bfloat16).save_pretrained(tmp_path)
    tb.processor.save_pretrained(tmp_path)
    model, processor = load_model_and_processor(tmp_path, device="cpu")
    assert model.dtype == torch.bfloat16
    events = list(model.generate_stream(random_frames(2), "What happens next?", processor=processor, max_new_tokens=2))
    assert len(events) == 2
    assert load_model_and_processor(tmp_path, device="cpu", dtype="float32")[0].dtype == torch.float32
