"""The streaming engine: KV-cache prefill equals a full forward, generate_stream equals the naive loop, memory policies."""

import pytest
import torch

from streampro.backbones import build_tiny_backbone
from streampro.testing.media import random_frames as frames
from streampro.testing.naive_stream import naive_generate_stream

QUESTION = "What happens next?"


@pytest.fixture(scope="module")
def tiny25():
    return build_tiny_backbone("qwen2_5_vl", streampro=True)


def full_forward_decision_logits(model, processor, session, fs):
    """One forward over the session's whole token sequence; logits at each turn's decision position."""
    ids, positions = list(session.system_ids), []
    for turn in session.turns:
        ids += turn.head_ids + [processor.image_token_id] * turn.num_image_tokens + turn.tail_ids
        positions.append(len(ids) - 1)
        ids += turn.assistant_ids
    input_ids = torch.tensor([ids])
    vision = processor.process_frames([fs[t.index] for t in session.turns])
    out = model(
        input_ids=input_ids,
        pixel_values=vision["pixel_values"],
        image_grid_thw=vision["image_grid_thw"],
        mm_token_type_ids=(input_ids == processor.image_token_id).int(),
    )
    return out.logits[0, positions]


@torch.no_grad()
def test_incremental_prefill_equals_full_forward(tiny):
    """Per-turn logits with the KV cache and explicit M-RoPE positions == one full forward (fp32, ≤ 1e-4)."""
    model, p = tiny.model, tiny.processor
    fs = frames(7)
    session = model.stream_session(p, max_new_tokens=4, response_threshold=0.5)
    step_logits = []
    for k, frame in enumerate(fs):
        if k == 2:
            session.ask(QUESTION)
        session.step(frame)
        step_logits.append(session.last_decision_logits)
    assert any(t.assistant_ids[0] == p.response_token_id for t in session.turns)  # answers are in the context too
    full = full_forward_decision_logits(model, p, session, fs)
    assert (full - torch.stack(step_logits)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_generate_stream_equals_naive_reencode_loop(tiny, threshold):
    model, p = tiny.model, tiny.processor
    fs = frames(8, seed=1)
    kw = dict(question_time=2.5, max_new_tokens=4, response_threshold=threshold)
    ours = list(model.generate_stream(fs, QUESTION, processor=p, **kw))
    naive = list(naive_generate_stream(model, p, fs, QUESTION, **kw))
    assert len(ours) == len(naive) == 8
    for a, b in zip(ours, naive):
        assert (a.time, a.frame_index, a.decision, a.text, a.generated_ids) == (
            b.time,
            b.frame_index,
            b.decision,
            b.text,
            b.generated_ids,
        )
        if a.p_response is None:
            assert b.p_response is None
        else:
            assert a.p_response == pytest.approx(b.p_response, abs=1e-5)


def test_events_before_question_are_silent_and_times_follow_convention(tiny25):
    model, p = tiny25.model, tiny25.processor
    events = list(model.generate_stream(frames(5), QUESTION, processor=p, question_time=2.2, response_threshold=0.0,
                                        max_new_tokens=2))
    assert [e.time for e in events] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [e.frame_index for e in events] == [0, 1, 2, 3, 4]
    # Question at 2.2 s goes on turn 2 (time 3 s); before it the model is forced silent.
    assert [e.question for e in events] == [None, None, QUESTION, None, None]
    assert [e.decision for e in events[:2]] == ["silence", "silence"] and events[0].p_response is None
    assert all(e.decision == "response" for e in events[2:])  # threshold 0 → always respond once asked
    assert all(0.0 <= e.p_response <= 1.0 for e in events[2:])


def test_threshold_mode_controls_decisions(tiny25):
    model, p = tiny25.model, tiny25.processor
    fs = frames(6)
    argmax = list(model.generate_stream(fs, QUESTION, processor=p, max_new_tokens=2))
    probs = [e.p_response for e in argmax]
    never = list(model.generate_stream(fs, QUESTION, processor=p, response_threshold=1.0, max_new_tokens=2))
    always = list(model.generate_stream(fs, QUESTION, processor=p, response_threshold=0.0, max_new_tokens=2))
    assert all(e.decision == "silence" for e in never)
    assert all(e.decision == "response" for e in always)
    # Argmax = threshold 0.5 on the renormalised two-way probability.
    assert [e.decision for e in argmax] == ["response" if q > 0.5 else "silence" for q in probs]


def test_answer_stays_in_context_and_respects_max_new_tokens(tiny25):
    model, p = tiny25.model, tiny25.processor
    session = model.stream_session(p, max_new_tokens=3, response_threshold=0.0)
    session.ask(QUESTION)
    ev = session.step(frames(1)[0])
    assert ev.decision == "response"
    assert 1 <= len(ev.generated_ids) <= 4 and ev.generated_ids[0] == p.response_token_id
    turn = session.turns[-1]
    assert turn.assistant_ids[0] == p.response_token_id
    assert turn.assistant_ids[-1 - len(p.newline_ids)] == p.end_of_turn_id  # the loop closes the turn
    before = session.context_tokens
    session.step(frames(1, seed=5)[0])
    assert session.context_tokens > before


def test_multiple_questions_mid_stream(tiny25):
    model, p = tiny25.model, tiny25.processor
    qs = [(0.5, "What colour is it?"), (3.0, "And now?")]
    events = list(model.generate_stream(frames(5), qs, processor=p, max_new_tokens=2, response_threshold=0.9))
    assert [e.question for e in events] == ["What colour is it?", None, "And now?", None, None]
    session_turns = p.tokenizer.decode(p.encode_text(p.user_text(2, 1.0, 1, "And now?")))
    assert "<2s-3s>" in session_turns


def test_window_slide_equals_fresh_run_over_kept_turns(tiny):
    """After the window slides, the state is exactly a fresh prefill of system + kept turns."""
    model, p = tiny.model, tiny.processor
    fs = frames(9, seed=2)
    session = model.stream_session(p, window_turns=4, evict_turns=2, max_new_tokens=3, response_threshold=0.5)
    session.ask(QUESTION)  # the question turn (turn 0) is pinned
    logits = {}
    for k, frame in enumerate(fs):
        session.step(frame)
        logits[k] = session.last_decision_logits
        unpinned = [t for t in session.turns if not t.pinned]
        assert len(unpinned) <= 4
    assert session.num_refreshes >= 2 and session.turns[0].index == 0 and session.turns[0].pinned
    kept = [t.index for t in session.turns]
    assert kept[0] == 0 and kept[-1] == 8 and len(kept) < 9
    # Turns added since the last slide were prefilled incrementally on top of the refreshed cache:
    # their logits must equal one full forward over exactly the kept turns.
    full = full_forward_decision_logits(model, p, session, fs)
    last_slide_turns = [i for i, t in enumerate(session.turns) if t.index >= kept[-1] - 1]
    for i in last_slide_turns:
        assert (full[i] - logits[session.turns[i].index]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_eager_and_sdpa_attention_give_the_same_decisions(tiny25):
    """The session's incremental prefills (masks built by transformers per kernel) agree across kernels."""
    model, p = tiny25.model, tiny25.processor
    fs = frames(7, seed=5)
    kw = dict(processor=p, question_time=0.0, window_turns=3, evict_turns=2, max_new_tokens=3, response_threshold=0.5)
    sdpa = list(model.generate_stream(fs, QUESTION, **kw))
    model.set_attn_implementation("eager")
    try:
        eager = list(model.generate_stream(fs, QUESTION, **kw))
    finally:
        model.set_attn_implementation("sdpa")
    assert [e.decision for e in sdpa] == [e.decision for e in eager]
    for a, b in zip(sdpa, eager):
        assert a.p_response == pytest.approx(b.p_response, abs=1e-5)


def test_window_matches_naive_loop_with_the_same_window(tiny25):
    """With evict_turns=1 the window slides one turn per frame, exactly like the re-encode baseline."""
    model, p = tiny25.model, tiny25.processor
    fs = frames(8, seed=3)
    kw = dict(question_time=1.5, max_new_tokens=3, response_threshold=0.56)
    ours = list(model.generate_stream(fs, QUESTION, processor=p, window_turns=3, evict_turns=1, **kw))
    naive = list(naive_generate_stream(model, p, fs, QUESTION, window_turns=3, **kw))
    assert [(e.decision, e.generated_ids) for e in ours] == [(e.decision, e.generated_ids) for e in naive]
    for a, b in zip(ours, naive):
        assert (a.p_response is None and b.p_response is None) or a.p_response == pytest.approx(b.p_response, abs=1e-5)


def test_cache_length_is_bounded_by_the_window(tiny25):
    model, p = tiny25.model, tiny25.processor
    session = model.stream_session(p, window_turns=6, evict_turns=3, max_new_tokens=2, response_threshold=1.0)
    session.ask(QUESTION)
    lengths, turns_in_context = [], []
    for frame in frames(40, size=56):
        lengths.append(session.step(frame).context_tokens)
        turns_in_context.append(len(session.turns))
    # Once full, the window holds between window - evict + 1 and window unpinned turns (+ the pinned question turn).
    assert set(turns_in_context[10:]) <= {5, 6, 7} and max(turns_in_context) == 7
    # So the cache stops growing: late lengths stay within the early steady-state range
    # (time tags like <38s-39s> are a token or two longer than <8s-9s>).
    assert max(lengths[30:]) <= max(lengths[8:16]) + 2 * 7


def test_round_decay_compression_keeps_context_within_budget(tiny25):
    model, p = tiny25.model, tiny25.processor
    budget = 420
    session = model.stream_session(p, memory="round_decay", token_budget=budget, max_new_tokens=2,
                                   response_threshold=1.0)
    session.ask(QUESTION)
    for frame in frames(25):
        ev = session.step(frame)
        assert ev.context_tokens <= budget
    grids = [t.grid for t in session.turns]
    assert grids[-1] == (4, 4)  # the newest frame is intact
    assert grids[1] != (4, 4)  # older frames were pooled, oldest first
    sizes = [h * w for h, w in grids[1:]]
    assert sizes == sorted(sizes)  # older rounds are compressed at least as much as newer ones
    # The compressed context is a fresh prefill: the next decision equals a full forward over it.
    assert session.num_refreshes >= 1


def test_round_decay_pooling_is_an_average_of_adjacent_tokens(tiny25):
    from streampro.modeling_streampro.modeling_streampro import _Turn

    feats = torch.arange(16 * 2, dtype=torch.float32).reshape(16, 2)  # a 4x4 grid of 2-d features
    turn = _Turn(0, [], [], feats.clone(), None, (4, 4), pinned=False)
    assert turn.pool() and turn.grid == (4, 2)
    assert torch.equal(turn.features[0], (feats[0] + feats[1]) / 2)
    assert turn.pool() and turn.grid == (2, 2)
    while turn.pool():
        pass
    assert turn.grid == (1, 1) and torch.allclose(turn.features[0], feats.mean(0))


def test_bad_input_errors(tiny25, tmp_path):
    model, p = tiny25.model, tiny25.processor
    fs = frames(3)
    with pytest.raises(ValueError, match="beyond the stream"):
        list(model.generate_stream(fs, QUESTION, processor=p, question_time=10.0))
    with pytest.raises(ValueError, match="beyond the stream"):  # unknown length: detected at the end
        list(model.generate_stream(iter(fs), QUESTION, processor=p, question_time=10.0))
    with pytest.raises(ValueError, match="fps must be > 0"):
        list(model.generate_stream(fs, QUESTION, processor=p, fps=0))
    with pytest.raises(ValueError, match="no frames"):
        list(model.generate_stream([], QUESTION, processor=p))
    mixed = [frames(1, size=112)[0], frames(1, size=56)[0]]
    with pytest.raises(ValueError, match="frame 1 is 56x56 but the stream started at 112x112"):
        list(model.generate_stream(mixed, QUESTION, processor=p))
    with pytest.raises(ValueError, match="frame 1 has time 5"):
        list(model.generate_stream([(1.0, fs[0]), (5.0, fs[1])], QUESTION, processor=p))
    with pytest.raises(ValueError, match="expected a PIL image"):
        list(model.generate_stream(["not a frame"], QUESTION, processor=p))
    with pytest.raises(ValueError, match="question text is empty"):
        list(model.generate_stream(fs, "  ", processor=p))
    with pytest.raises(ValueError, match="token_budget"):
        model.stream_session(p, memory="round_decay")


def test_checkpoint_without_decision_tokens_is_rejected(tiny25):
    from streampro.modeling_streampro.configuration_streampro import StreamProConfig
    from streampro.modeling_streampro.modeling_streampro import StreamProForConditionalGeneration

    config = StreamProConfig.from_dict(tiny25.model.config.to_dict())
    config.silence_token_id = config.response_token_id = None
    model = StreamProForConditionalGeneration(config)
    with pytest.raises(ValueError, match="no decision tokens"):
        list(model.generate_stream(frames(2), QUESTION, processor=tiny25.processor))


def test_sampling_is_reproducible_with_a_generator(tiny25):
    model, p = tiny25.model, tiny25.processor
    fs = frames(6)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [(e.decision, e.generated_ids) for e in model.generate_stream(
            fs, QUESTION, processor=p, do_sample=True, temperature=1.0, max_new_tokens=3, generator=g)]

    assert run(0) == run(0)
