"""Three-state (Streamo-style) checkpoints: ``</Standby>`` in the turn format, the labels, the checkpoint and the engine.

A three-state tiny model is the two-state one plus ``</Standby>`` (``build_tiny_backbone(standby=True)``).
The engine tests force decisions with a bias on the LM head (set before each step), so every path
(forced silence, standby, silence, response) runs on known turns.
"""

import json

import numpy as np
import pytest
import torch
from streampro.modeling_streampro.processing_streampro import STANDBY_TOKEN, stream_messages, turn_time
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from streampro.backbones import BACKBONES, add_standby_token, build_tiny_backbone
from streampro.testing.media import random_frames as frames
from streampro.testing.naive_stream import naive_generate_stream

QUESTION = "Tell me when it changes."


@pytest.fixture(scope="module", params=BACKBONES)
def tiny3(request):
    return build_tiny_backbone(request.param, streampro=True, standby=True)


@pytest.fixture(scope="module")
def tiny3_25():
    return build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True)


def biased_lm_head(model) -> torch.Tensor:
    """Give ``model`` an LM head with a bias (zero: the same logits) and return the bias to set."""
    old = model.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
    model.lm_head = head
    return head.bias.data


# ---- tokens, config, backbones -----------------------------------------------------------------


def test_decision_token_ids_and_add_standby_token():
    two = build_tiny_backbone("qwen2_5_vl", streampro=True)
    three = build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True)
    p2, p3 = two.processor, three.processor
    assert p2.standby_token_id is None and two.model.config.standby_token_id is None
    assert p2.decision_token_ids == (p2.silence_token_id, p2.response_token_id)
    standby = p3.tokenizer.convert_tokens_to_ids(STANDBY_TOKEN)
    assert p3.decision_token_ids == (p2.silence_token_id, p2.response_token_id, standby)
    assert three.model.config.standby_token_id == standby == len(p2.tokenizer)  # one new id after the others
    assert len(p3.tokenizer.encode(STANDBY_TOKEN, add_special_tokens=False)) == 1
    # The two-state weights are kept; the new rows start at the mean of the old ones (+ 1 % noise).
    for name, old in two.model.state_dict().items():
        new = three.model.state_dict()[name]
        assert torch.equal(new[: old.shape[0]], old), name
    rows = three.model.lm_head.weight.detach()
    assert torch.allclose(rows[standby], rows[:standby].mean(0), atol=0.05 * rows[:standby].std(0).max().item())
    # On a processor's own tokenizer: the processor sees the new token at once.
    fresh = build_tiny_backbone("qwen2_5_vl", streampro=True)
    assert add_standby_token(fresh.processor.tokenizer, fresh.model) == fresh.processor.standby_token_id == standby
    assert fresh.processor.decision_token_ids == p3.decision_token_ids
    # Adding it again is a no-op returning the same id.
    before = three.model.lm_head.weight.detach().clone()
    assert add_standby_token(p3.tokenizer, three.model) == standby
    assert torch.equal(three.model.lm_head.weight, before) and len(p3.tokenizer) == standby + 1


def test_save_and_reload_with_auto_classes_keeps_the_standby_token(tmp_path):
    tb = build_tiny_backbone("qwen2_5_vl", seed=1, streampro=True, standby=True)
    tb.model.save_pretrained(tmp_path / "three")
    tb.processor.save_pretrained(tmp_path / "three")
    standby = tb.processor.standby_token_id
    assert json.loads((tmp_path / "three" / "config.json").read_text())["standby_token_id"] == standby
    assert AutoConfig.from_pretrained(tmp_path / "three", trust_remote_code=True).standby_token_id == standby
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "three", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(tmp_path / "three", trust_remote_code=True)
    assert model.config.standby_token_id == processor.standby_token_id == standby
    assert processor.decision_token_ids == tb.processor.decision_token_ids
    events = list(model.generate_stream(frames(2), QUESTION, processor=processor, max_new_tokens=2))
    assert len(events) == 2
    # A two-state checkpoint's config.json does not mention the standby token at all.
    two = build_tiny_backbone("qwen2_5_vl", seed=1, streampro=True)
    two.model.save_pretrained(tmp_path / "two")
    assert "standby_token_id" not in json.loads((tmp_path / "two" / "config.json").read_text())


def test_convert_backbone_three_state(tmp_path, capsys):
    """``streampro convert-backbone --three-state``: the three tokens, the config id, a card that says so."""
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration

    from streampro.backbones import build_image_processor, build_tiny_tokenizer, tiny_config
    from streampro.cli import main as cli_main

    base_dir, out_dir = tmp_path / "base", tmp_path / "three"
    tok = build_tiny_tokenizer(decision_tokens=False)
    Qwen2_5_VLForConditionalGeneration(tiny_config("qwen2_5_vl", tok)).save_pretrained(base_dir)
    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>").save_pretrained(base_dir)
    build_image_processor("qwen2_5_vl").save_pretrained(base_dir)
    assert cli_main(["convert-backbone", str(base_dir), "--out", str(out_dir), "--three-state"]) == 0
    assert "three-state checkpoint written" in capsys.readouterr().out
    processor = AutoProcessor.from_pretrained(out_dir, trust_remote_code=True)
    config = AutoConfig.from_pretrained(out_dir, trust_remote_code=True)
    assert len(processor.decision_token_ids) == 3 and config.standby_token_id == processor.standby_token_id
    card = (out_dir / "README.md").read_text()
    assert "**Three-state checkpoint**" in card and "- three-state" in card
    assert cli_main(["convert-backbone", str(base_dir), "--out", str(tmp_path / "two")]) == 0
    assert "hree-state" not in (tmp_path / "two" / "README.md").read_text()


# ---- the turn format and the labels ----------------------------------------------------------------


def test_standby_labels_on_a_hand_checked_stream(tiny3_25):
    p = tiny3_25.processor
    questions, responses, standby = {1: QUESTION}, {4: "it turned green"}, [2, 3]
    enc = p.encode_conversation(frames(6), questions, responses, standby=standby)
    ids, labels = enc["input_ids"], enc["labels"]
    supervised = labels != -100
    assert torch.equal(labels[supervised], ids[supervised])
    tokens = p.tokenizer.convert_ids_to_tokens(ids[supervised].tolist())
    answer = p.tokenizer.convert_ids_to_tokens(p.encode_text("it turned green"))
    # Turn 0 is before the question (input only); 1 silent; 2 and 3 standby; 4 responds; 5 silent.
    assert tokens == ["</Silence>", STANDBY_TOKEN, STANDBY_TOKEN, "</Response>", *answer, "<|im_end|>", "</Silence>"]
    positions = enc["decision_positions"]
    s, r, st = p.decision_token_ids
    assert ids[positions].tolist() == [s, st, st, r, s]
    for at in positions[1:3]:  # the <|im_end|> after </Standby> is an input, as after </Silence>
        assert ids[at + 1] == p.end_of_turn_id and labels[at + 1] == -100
    # A training window supervises from label_from on: turn 2's standby stays in the context as an input.
    window = p.encode_conversation(frames(6), questions, responses, standby=standby, turns=[1, 2, 3, 4], label_from=3)
    kept = window["input_ids"]
    assert (kept == st).sum() == 2
    assert p.tokenizer.convert_ids_to_tokens(kept[window["labels"] != -100].tolist()) == [
        STANDBY_TOKEN, "</Response>", *answer, "<|im_end|>"]


def test_standby_turns_that_cannot_be(tiny3_25):
    p = tiny3_25.processor
    with pytest.raises(ValueError, match=r"turns \[3\] are both standby turns and response turns"):
        p.encode_conversation(frames(5), {1: QUESTION}, {3: "now"}, standby=[2, 3])
    with pytest.raises(ValueError, match="before the first question"):
        p.encode_conversation(frames(5), {2: QUESTION}, {}, standby=[1])
    with pytest.raises(ValueError, match="not in the window's turns"):
        p.encode_conversation(frames(5), {1: QUESTION}, {}, standby=[3], turns=[1, 2])
    with pytest.raises(ValueError, match="standby turn or a response"):
        p.assistant_text("now", standby=True)
    with pytest.raises(ValueError, match="both standby turns and response turns"):
        stream_messages(4, {1: QUESTION}, {3: "now"}, standby=[3])
    two = build_tiny_backbone("qwen2_5_vl", streampro=True).processor
    with pytest.raises(ValueError, match=r"standby turns \[2\] given but the tokenizer has no </Standby>"):
        two.encode_conversation(frames(4), {1: QUESTION}, {}, standby=[2])
    with pytest.raises(ValueError, match="no </Standby>"):
        two.conversation_text([1] * 4, {1: QUESTION}, {}, standby=[2])
    # Nothing changes for a two-state processor without standby turns.
    assert two.encode_conversation(frames(3), {1: QUESTION}, {}, standby=())["input_ids"].tolist() == (
        two.encode_conversation(frames(3), {1: QUESTION}, {})["input_ids"].tolist())


def test_whole_stream_with_standby_equals_concatenated_turns(tiny3):
    """Tokenising the whole stream == the per-turn encodings; the chat template renders the same text."""
    p = tiny3.processor
    fs = frames(6)
    questions, responses, standby = {1: "When does the square turn blue?"}, {4: "the red square turned blue"}, {2, 3}
    enc = p.encode_conversation(fs, questions, responses, standby=standby)
    counts = p.num_image_tokens(enc["image_grid_thw"])
    whole_text = p.conversation_text(counts, questions, responses, standby=standby)
    assert whole_text.count(f"{STANDBY_TOKEN}<|im_end|>\n") == 2
    whole = p.tokenizer(whole_text, add_special_tokens=False)["input_ids"]
    pieces = list(p.encode_system()["input_ids"].tolist())
    for k, frame in enumerate(fs):
        pieces += p.encode_user_turn(frame, k, question=questions.get(k))["input_ids"].tolist()
        pieces += p.encode_assistant(responses.get(k), standby=k in standby)
    assert whole == pieces == enc["input_ids"].tolist()
    rendered = p.tokenizer.apply_chat_template(stream_messages(6, questions, responses, standby=standby), tokenize=False)
    assert rendered == p.conversation_text([1] * 6, questions, responses, standby=standby)


# ---- the engine ---------------------------------------------------------------------------------------


def test_engine_standby_turns_match_the_training_format(tiny3):
    """Forced decisions: standby closes the turn with no text, and the context is encode_conversation's, token for token."""
    tb = build_tiny_backbone(tiny3.backbone, streampro=True, standby=True)  # its own copy: the head gets a bias
    model, p = tb.model, tb.processor
    bias = biased_lm_head(model)
    s, r, st = p.decision_token_ids
    fs = frames(7)
    # per turn: which decision the bias forces (None: before the question, no bias needed)
    plan = [None, "standby", "standby", "silence", "response", "standby", "silence"]
    session = model.stream_session(p, max_new_tokens=3)
    events, logits = [], []
    for k, (frame, want) in enumerate(zip(fs, plan)):
        bias.zero_()
        if want == "response":
            bias[r], bias[p.end_of_turn_id] = 20.0, 30.0  # respond, then close the answer at once
        elif want is not None:
            bias[{"standby": st, "silence": s}[want]] = 20.0
        if k == 1:
            session.ask(QUESTION)
        events.append(session.step(frame))
        logits.append(session.last_decision_logits - bias)  # the unbiased model's logits
    assert [e.decision for e in events] == ["silence", "standby", "standby", "silence", "response", "standby", "silence"]
    for e in events:
        if e.decision == "standby":
            assert e.text == "" and e.generated_ids == [st]
    assert events[4].generated_ids == [r, p.end_of_turn_id] and events[4].text == ""
    # The engine's context (system prompt, turns, their closings) is the training format of the same stream.
    enc = p.encode_conversation(fs, {1: QUESTION}, {4: ""}, standby=[1, 2, 5])
    context = list(session.system_ids)
    for turn in session.turns:
        context += turn.head_ids + [p.image_token_id] * turn.num_image_tokens + turn.tail_ids + turn.assistant_ids
    assert context == enc["input_ids"].tolist()
    assert session.context_tokens + len(session.pending_ids) == len(context)
    # ... and its per-turn decision logits are a full forward over that encoding (fp32, <= 1e-4).
    bias.zero_()
    with torch.no_grad():
        full = model(input_ids=enc["input_ids"][None], pixel_values=enc["pixel_values"],
                     image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=enc["mm_token_type_ids"][None]).logits[0]
    at = enc["decision_positions"] - 1  # the logits that predict each supervised decision (turns 1-6)
    assert (full[at] - torch.stack(logits[1:])).abs().max().item() <= 1e-4


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_naive_reencode_loop_decides_like_the_engine_with_three_states(threshold):
    """The reference loop (re-encode every frame) takes the same three decisions as the KV-cache engine."""
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True)
    model, p = tb.model, tb.processor
    bias = biased_lm_head(model)
    s, r, st = p.decision_token_ids
    plan = [None, "standby", "silence", "response", "standby", "standby", "silence"]
    fs = frames(len(plan), seed=5)
    session = model.stream_session(p, max_new_tokens=3, response_threshold=threshold)
    naive = naive_generate_stream(model, p, fs, QUESTION, question_time=turn_time(1, 1.0), max_new_tokens=3,
                                  response_threshold=threshold)
    for k, (frame, want) in enumerate(zip(fs, plan)):
        bias.zero_()  # the bias holds while both compute this frame
        if want == "response":
            bias[r], bias[p.end_of_turn_id] = 20.0, 30.0
        elif want is not None:
            bias[{"standby": st, "silence": s}[want]] = 20.0
        if k == 1:
            session.ask(QUESTION)
        ours, ref = session.step(frame), next(naive)
        assert ours.decision == ref.decision == (want or "silence")
        assert ours.generated_ids == ref.generated_ids and ours.text == ref.text
        assert (ours.p_response is None) == (ref.p_response is None)
        if ref.p_response is not None:
            assert ours.p_response == pytest.approx(ref.p_response, abs=1e-4)


def test_p_response_is_renormalised_over_the_three_decision_tokens(tiny3_25):
    model, p = tiny3_25.model, tiny3_25.processor
    ids = list(p.decision_token_ids)
    for threshold in (None, 1.0):
        session = model.stream_session(p, max_new_tokens=2, response_threshold=threshold)
        session.ask(QUESTION)
        for frame in frames(4, seed=3):
            event = session.step(frame)
            three = session.last_decision_logits[ids].double()
            probs = (three - three.max()).exp() / (three - three.max()).exp().sum()  # by hand
            assert event.p_response == pytest.approx(probs[1].item(), abs=1e-6)
            two_way = torch.softmax(three[:2], 0)[1].item()
            assert event.p_response < two_way  # the standby token takes its share
            if threshold is None:  # arg-max over (silence, response, standby)
                assert event.decision == ("silence", "response", "standby")[int(three.argmax())]
            else:  # never respond; the more probable of silence and standby
                assert event.decision == ("standby" if three[2] > three[0] else "silence")


def test_threshold_picks_the_more_probable_quiet_decision():
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True)
    model, p = tb.model, tb.processor
    bias = biased_lm_head(model)
    s, r, st = p.decision_token_ids
    session = model.stream_session(p, max_new_tokens=2, response_threshold=0.9)
    session.ask(QUESTION)
    decisions = []
    for frame, (b_silence, b_standby) in zip(frames(2), [(0.0, 10.0), (10.0, 0.0)]):
        bias.zero_()
        bias[s], bias[st] = b_silence, b_standby
        decisions.append(session.step(frame).decision)
    assert decisions == ["standby", "silence"]


def test_unconstrained_sampling_counts_a_sampled_standby_as_standby():
    """constrain_decision=False (GRPO rollouts) samples the full vocabulary; </Standby> is a decision, not 'invalid'."""
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True)
    model, p = tb.model, tb.processor
    biased_lm_head(model)[p.standby_token_id] = 30.0
    events = list(model.generate_stream(frames(3), QUESTION, processor=p, question_time=1.5, do_sample=True,
                                        constrain_decision=False, max_new_tokens=2,
                                        generator=torch.Generator().manual_seed(0)))
    assert [e.decision for e in events] == ["silence", "standby", "standby"]
    assert events[1].generated_ids == [p.standby_token_id] and events[1].text == ""


def test_processor_and_model_must_agree_on_the_standby_token(tiny3_25):
    two = build_tiny_backbone("qwen2_5_vl", streampro=True)
    with pytest.raises(ValueError, match="disagree on the standby token.*None"):
        two.model.stream_session(tiny3_25.processor)
    with pytest.raises(ValueError, match="disagree on the standby token"):
        tiny3_25.model.stream_session(two.processor)


def assert_same_events(single, batched):
    assert len(single) == len(batched)
    for a_events, b_events in zip(single, batched):
        assert len(a_events) == len(b_events)
        for a, b in zip(a_events, b_events):
            assert (a.frame_index, a.decision, a.text, a.generated_ids, a.question, a.context_tokens) == (
                b.frame_index, b.decision, b.text, b.generated_ids, b.question, b.context_tokens)
            assert (a.p_response is None) == (b.p_response is None)
            if a.p_response is not None:
                assert b.p_response == pytest.approx(a.p_response, abs=1e-5)


def test_batched_sessions_equal_single_sessions():
    """A three-state model: the batched streams give the single sessions' events, standby turns included.

    One backbone: the decision is backbone-independent code that the batched and single sessions share.
    """
    tb = build_tiny_backbone("qwen2_5_vl", streampro=True, standby=True)
    model, p = tb.model, tb.processor
    # Even out the three decision logits so that the random model mixes all three decisions.
    bias = biased_lm_head(model)
    ids = list(p.decision_token_ids)
    session = model.stream_session(p, max_new_tokens=0)
    session.ask(QUESTION)
    seen = []
    for frame in frames(4, seed=9, size=56):
        session.step(frame)
        seen.append(session.last_decision_logits[ids])
    bias[ids] = -torch.stack(seen).mean(0)
    # small frames (4 vision tokens) keep it fast; stream 1 ends first; the windows slide
    streams = [frames(7, seed=0, size=56), frames(5, seed=1, size=56), frames(8, seed=2, size=56)]
    questions, times = [QUESTION, QUESTION, QUESTION], [0.0, 2.0, 3.0]
    for sample in (False, True):  # greedy, and sampled with one generator per stream (the same seeds both ways)
        options = dict(max_new_tokens=2, window_turns=4, evict_turns=2, do_sample=sample)

        def generators():
            return [torch.Generator().manual_seed(seed) for seed in range(3)] if sample else [None] * 3

        single = [list(model.generate_stream(f, q, processor=p, question_time=t, generator=g, **options))
                  for f, q, t, g in zip(streams, questions, times, generators())]
        batched = model.generate_streams(streams, questions, processor=p, question_times=times,
                                         generators=generators(), **options)
        assert_same_events(single, batched)
    assert {e.decision for events in single for e in events} == {"silence", "response", "standby"}


# ---- the vLLM session's decision (no server: a stand-in answers the decision request) -------------------


class _FakeEngine:
    """Answers a decision request with given probabilities; records the requests."""

    def __init__(self, processor, probs):
        self.processor, self.probs, self.requests = processor, probs, []

    def _generate(self, token_ids, frames, sampling):
        self.requests.append(sampling)
        if sampling["max_tokens"] > 1:  # the answer
            return {"token_ids": [self.processor.end_of_turn_id]}
        top = [{"token_id": t, "logprob": float(np.log(q))} for t, q in zip(self.processor.decision_token_ids, self.probs)]
        return {"token_ids": [top[0]["token_id"]], "logprobs": {"content": [{"top_logprobs": top}]}}


@pytest.mark.parametrize("probs, threshold, decision", [
    ((0.2, 0.3, 0.5), None, "standby"),
    ((0.5, 0.3, 0.2), None, "silence"),
    ((0.2, 0.5, 0.3), None, "response"),
    ((0.3, 0.3, 0.4), 0.25, "response"),
    ((0.3, 0.2, 0.5), 0.3, "standby"),
])
def test_vllm_session_three_state_decision(tiny3_25, probs, threshold, decision):
    from streampro.serving.vllm_session import VLLMStreamSession

    p = tiny3_25.processor
    engine = _FakeEngine(p, probs)
    session = VLLMStreamSession(engine, max_new_tokens=2, response_threshold=threshold)
    session.ask(QUESTION)
    event = session.step(frames(1)[0])
    assert engine.requests[0]["allowed_token_ids"] == list(p.decision_token_ids)
    assert engine.requests[0]["logprobs"] == 3
    assert event.decision == decision and event.p_response == pytest.approx(probs[1])
    s, r, st = p.decision_token_ids
    token = {"silence": s, "response": r, "standby": st}[decision]
    assert session.turns[-1].assistant_ids == [token, p.end_of_turn_id] + p.newline_ids
