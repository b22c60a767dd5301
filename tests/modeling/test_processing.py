"""The streaming turn format: time convention, per-turn vs whole-stream encoding, SFT labels, tiny backbones."""

import pytest
import torch
from streampro.modeling_streampro.processing_streampro import (
    DECISION_TOKENS,
    StreamProProcessor,
    num_turns,
    stream_messages,
    time_tag,
    turn_index_for_time,
    turn_time,
)

from streampro.backbones import BACKBONES, add_decision_tokens, build_tiny_backbone, build_tiny_tokenizer
from streampro.testing.media import random_frames as frames


def test_time_convention():
    # Turn k is tagged <ks-(k+1)s>, shows the frame at k+1 s; a time t goes on the first turn with time >= t.
    assert [turn_time(k) for k in range(3)] == [1.0, 2.0, 3.0]
    assert time_tag(0) == "<0s-1s>" and time_tag(11) == "<11s-12s>"
    assert [turn_index_for_time(t) for t in (0.0, 0.3, 1.0, 1.2, 2.0, 2.0001)] == [0, 0, 0, 1, 1, 2]
    # fps scales the grid: at 2 fps turn 3 covers [1.5, 2] s.
    assert time_tag(3, fps=2.0) == "<1.5s-2s>" and turn_time(3, fps=2.0) == 2.0
    assert turn_index_for_time(1.75, fps=2.0) == 3
    assert num_turns(5.3) == 5 and num_turns(13.0) == 13 and num_turns(0.4) == 0
    with pytest.raises(ValueError, match="time must be"):
        turn_index_for_time(-1.0)
    with pytest.raises(ValueError, match="time must be"):
        turn_index_for_time(float("nan"))


def test_tokenizer_is_deterministic_and_has_special_tokens():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = "<|im_start|>user\n<3s-4s>What happens next?<|im_end|></Silence></Response>"
    ids = a(text, add_special_tokens=False)["input_ids"]
    for tok in ("<|im_start|>", "<|im_end|>") + DECISION_TOKENS:
        assert a.convert_tokens_to_ids(tok) in ids  # each special token is one id
    assert a.decode(ids) == text


def test_tiny_tokenizer_v2_keeps_synth_words_whole_and_digits_as_in_time_tags():
    """v2 tokenises like a real Qwen tokenizer: whole words, single digits; v1 still rebuilds older models' tokenizer."""
    import hashlib
    import json

    tok = build_tiny_tokenizer(version="v2")
    for word in ("user", "assistant", "green", "yellow", "triangle", "shrank", "appeared", "block"):
        assert len(tok.tokenize(word if word in ("user", "assistant") else " " + word)) == 1, word
    tag, answer = tok.tokenize("<13s-14s>"), tok.tokenize("13s - 18s")
    assert tag[tag.index("-") + 1:][:2] == ["1", "4"] and answer[:2] == tag[1:3] == ["1", "3"]
    # v1 is the vocabulary of the models built before v2 (e.g. the embedded model until 2026-12): pinned
    v1 = sorted(build_tiny_tokenizer(version="v1").get_vocab().items())
    assert hashlib.sha256(json.dumps(v1).encode()).hexdigest() == (
        "06fa96606b5b16a356c9c20e7fc414c17d32e91c5e740eec21be8337448b12f8")
    with pytest.raises(ValueError, match="unknown tiny tokenizer version"):
        build_tiny_tokenizer(version="v3")


def test_whole_stream_equals_concatenated_turns(tiny):
    """Incremental inference sees exactly what training sees."""
    p = tiny.processor
    fs = frames(5)
    questions, responses = {1: "When does the square turn blue?"}, {3: "the red square turned blue"}
    enc = p.encode_conversation(fs, questions, responses)
    counts = p.num_image_tokens(enc["image_grid_thw"])
    whole_text = p.conversation_text(counts, questions, responses)
    whole = p.tokenizer(whole_text, add_special_tokens=False)["input_ids"]
    pieces = list(p.encode_system()["input_ids"].tolist())
    for k, frame in enumerate(fs):
        turn = p.encode_user_turn(frame, k, question=questions.get(k))
        pieces += turn["input_ids"].tolist() + p.encode_assistant(responses.get(k))
        assert torch.equal(turn["mm_token_type_ids"].bool(), turn["input_ids"] == p.image_token_id)
    assert whole == pieces == enc["input_ids"].tolist()
    # The chat template renders the same stream (before image-pad expansion).
    rendered = p.tokenizer.apply_chat_template(stream_messages(5, questions, responses), tokenize=False)
    assert rendered == p.conversation_text([1] * 5, questions, responses)


def test_labels_supervise_exactly_the_assistant_tokens():
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True)
    p = tb.processor
    enc = p.encode_conversation(frames(4), {1: "Tell me when it changes."}, {2: "it turned green"})
    ids, labels = enc["input_ids"], enc["labels"]
    supervised = labels != -100
    assert torch.equal(labels[supervised], ids[supervised])  # labels are the tokens themselves
    tokens = p.tokenizer.convert_ids_to_tokens(ids[supervised].tolist())
    # Turn 0 is before the question (input only); turn 1 silent; turn 2 responds; turn 3 silent.
    answer = p.tokenizer.convert_ids_to_tokens(p.encode_text("it turned green"))
    assert tokens == ["</Silence>", "</Response>", *answer, "<|im_end|>", "</Silence>"]
    # Decision positions point at the supervised decision tokens, in turn order.
    decisions = ids[enc["decision_positions"]].tolist()
    assert decisions == [p.silence_token_id, p.response_token_id, p.silence_token_id]
    # The <|im_end|> after </Silence> is an input: the inference loop closes silent turns itself.
    silence_at = enc["decision_positions"][0]
    assert ids[silence_at + 1] == p.end_of_turn_id and labels[silence_at + 1] == -100
    # Frame tokens are never supervised.
    assert not supervised[ids == p.image_token_id].any()


def test_label_builder_rejects_bad_conversations(tiny):
    p = tiny.processor
    with pytest.raises(ValueError, match="before the first question"):
        p.encode_conversation(frames(3), {2: "q"}, {1: "too early"})
    with pytest.raises(ValueError, match="outside the stream"):
        p.encode_conversation(frames(3), {0: "q"}, {5: "late"})
    with pytest.raises(ValueError, match="at least one question"):
        p.encode_conversation(frames(3), {}, {})


def test_frame_resolution_is_configurable():
    small = build_tiny_backbone("qwen2_5_vl", max_pixels=56 * 56).processor
    large = build_tiny_backbone("qwen2_5_vl", max_pixels=112 * 112).processor
    img = frames(1, size=112)
    assert small.num_image_tokens(small.process_frames(img)["image_grid_thw"]) == [4]
    assert large.num_image_tokens(large.process_frames(img)["image_grid_thw"]) == [16]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_tiny_backbone_forward_save_reload(backbone, tmp_path):
    a = build_tiny_backbone(backbone, seed=3)
    b = build_tiny_backbone(backbone, seed=3)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), f"{name} differs between two builds with the same seed"
    enc = a.processor.encode_conversation(frames(2), {0: "q"}, {1: "yes"})
    batch = dict(
        input_ids=enc["input_ids"][None],
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        mm_token_type_ids=enc["mm_token_type_ids"][None],
    )
    logits = a.model(**batch).logits
    assert logits.shape == (1, enc["input_ids"].shape[0], len(a.processor.tokenizer))
    a.model.save_pretrained(tmp_path)
    a.processor.save_pretrained(tmp_path)
    reloaded = type(a.model).from_pretrained(tmp_path)
    assert torch.equal(reloaded(**batch).logits, logits)
    p2 = StreamProProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert p2.encode_conversation(frames(2), {0: "q"}, {1: "yes"})["input_ids"].tolist() == enc["input_ids"].tolist()


def test_add_decision_tokens_to_a_base_tokenizer_and_model():
    # A "real" Qwen-VL tokenizer + model: Qwen special tokens, no decision tokens.
    from transformers import Qwen2_5_VLForConditionalGeneration

    from streampro.backbones import tiny_config

    tok = build_tiny_tokenizer(decision_tokens=False)
    assert not any(t in tok.get_vocab() for t in DECISION_TOKENS)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config("qwen2_5_vl", tok))
    emb_before = model.get_input_embeddings().weight.detach().clone()
    ids = add_decision_tokens(tok, model, seed=0)
    assert [tok.convert_tokens_to_ids(t) for t in DECISION_TOKENS] == ids
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in DECISION_TOKENS)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == emb_before.shape[0] + 2  # resized for the two new ids
    # Old rows untouched; new rows near the mean of the old rows (1 % noise), distinct from each other.
    assert torch.equal(emb[: emb_before.shape[0]], emb_before)
    mean, std = emb_before.mean(0), emb_before.std(0)
    for i in ids:
        assert (emb[i] - mean).abs().max() <= 0.05 * std.max()
    assert not torch.equal(emb[ids[0]], emb[ids[1]])
    # Idempotent: a second call adds nothing.
    assert add_decision_tokens(tok, model) == ids and model.get_input_embeddings().weight.shape[0] == emb.shape[0]
