"""Plain transformers use of a StreamPro checkpoint: ``generate(**processor(...))`` and the pipeline.

The reference is the backbone's own transformers class (``Qwen2_5_VLForConditionalGeneration`` /
``Qwen3VLForConditionalGeneration``) holding the same weights: greedy generation must give the
same tokens, for an image question and for a clip of frames.
"""

import pytest
import torch
from streampro.modeling_streampro.processing_streampro import time_tag
from transformers import pipeline

from streampro.backbones import build_tiny_backbone
from streampro.testing.media import random_frames

PROMPT = "<|im_start|>user\n{vision}What is this?<|im_end|>\n<|im_start|>assistant\n"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def native(tiny):
    """The backbone's own transformers class with the StreamPro model's weights."""
    model = build_tiny_backbone(tiny.backbone, streampro=False).model
    model.load_state_dict(tiny.model.state_dict(), strict=True)
    return model.eval()


def greedy(model, inputs, n=6):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False)


def test_generate_image_qa_matches_the_backbone_class(tiny, native):
    inputs = tiny.processor(images=random_frames(2, size=84), text=PROMPT.format(vision=IMAGE * 2))
    assert inputs["mm_token_type_ids"].sum() > 0
    out = greedy(tiny.model, inputs)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 6)
    assert torch.equal(out, greedy(native, inputs))


def test_generate_video_qa_writes_time_tagged_frames(tiny, native):
    clip = random_frames(3, size=56, seed=1)
    video = tiny.processor(videos=[clip], text=PROMPT.format(vision="<|vision_start|><|video_pad|><|vision_end|>"))
    tagged = "".join(f"{time_tag(k, 1.0)}{IMAGE}" for k in range(3))  # how a stream shows frames (method §1)
    images = tiny.processor(images=clip, text=PROMPT.format(vision=tagged))
    assert torch.equal(video["input_ids"], images["input_ids"])
    assert torch.equal(video["pixel_values"], images["pixel_values"])
    assert torch.equal(greedy(tiny.model, video), greedy(native, video))


def test_generate_continues_from_its_own_cache(tiny):
    """The decoding steps after the first reuse the cache with text-only positions (rope deltas)."""
    inputs = tiny.processor(images=random_frames(1), text=PROMPT.format(vision=IMAGE))
    cached = tiny.model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=True)
    uncached = tiny.model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_processor_counts_placeholders(tiny):
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> and 0 <\\|video_pad\\|> placeholders but 1 image"):
        tiny.processor(images=random_frames(1), text=PROMPT.format(vision=IMAGE * 2))


def test_image_text_to_text_pipeline_loads_remote_code(tiny_dir):
    pipe = pipeline("image-text-to-text", model=str(tiny_dir), trust_remote_code=True, device="cpu")
    assert type(pipe.model).__name__ == "StreamProForConditionalGeneration"
    image = random_frames(1)[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}]}]
    (result,) = pipe(text=messages, max_new_tokens=5, do_sample=False)
    reply = result["generated_text"][-1]
    assert reply["role"] == "assistant"
    inputs = pipe.processor(images=[image], text=PROMPT.format(vision=IMAGE))
    out = pipe.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = pipe.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply["content"] == expected
