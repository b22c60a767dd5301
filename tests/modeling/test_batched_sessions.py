"""Batched sessions (``StreamSessions`` / ``generate_streams``): the events of B single sessions, in one forward per round.

Decisions, texts and generated tokens must be identical; ``p_response`` equal to float32 rounding
(≤ 1e-5 absolute; measured ≤ 6e-8): the padded, masked batch kernels sum in another order.
"""

import pytest
import torch

from streampro.testing.media import random_frames as frames

QUESTION = "What happens next?"


def single_runs(model, processor, streams, questions, times, generators=None, **options):
    generators = generators or [None] * len(streams)
    return [list(model.generate_stream(f, q, processor=processor, question_time=t, generator=g, **options))
            for f, q, t, g in zip(streams, questions, times, generators)]


def assert_same_events(single, batched):
    assert len(single) == len(batched)
    for a_events, b_events in zip(single, batched):
        assert len(a_events) == len(b_events)
        for a, b in zip(a_events, b_events):
            assert (a.frame_index, a.time, a.decision, a.text, a.generated_ids, a.question, a.context_tokens) == (
                b.frame_index, b.time, b.decision, b.text, b.generated_ids, b.question, b.context_tokens)
            if a.p_response is None:
                assert b.p_response is None
            else:
                assert b.p_response == pytest.approx(a.p_response, abs=1e-5)


@pytest.mark.parametrize("memory", ["window", "sink_window", "round_decay"])
def test_batched_events_equal_single_sessions(tiny, memory):
    """Streams of different lengths and question times, window slides, answers: the single sessions' events."""
    model, p = tiny.model, tiny.processor
    streams = [frames(9, seed=0), frames(6, seed=1), frames(11, seed=2)]  # stream 1 ends first and leaves the batch
    questions = [QUESTION, [(1.0, "What colour is it?"), (4.0, "And now?")], QUESTION]
    times = [0.0, 0.0, 3.0]
    options = dict(max_new_tokens=4, window_turns=4, evict_turns=2, memory=memory,
                   token_budget=300 if memory == "round_decay" else None)
    single = single_runs(model, p, streams, questions, times, **options)
    batched = model.generate_streams(streams, questions, processor=p, question_times=times, **options)
    assert_same_events(single, batched)
    decisions = {e.decision for events in single for e in events}
    assert decisions == {"silence", "response"}  # both paths (prefill and batched answer decoding) are exercised


def test_batched_sampling_with_per_stream_generators(tiny):
    """Sampling: each stream draws from its own generator, so the same seeds give the single sessions' tokens."""
    model, p = tiny.model, tiny.processor
    streams = [frames(6, seed=s) for s in range(3)]
    options = dict(do_sample=True, temperature=1.0, max_new_tokens=3)

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in (0, 1, 2)]

    single = single_runs(model, p, streams, [QUESTION] * 3, [0.0] * 3, generators(), **options)
    batched = model.generate_streams(streams, [QUESTION] * 3, processor=p, generators=generators(), **options)
    assert_same_events(single, batched)
    again = model.generate_streams(streams, [QUESTION] * 3, processor=p, generators=generators(), **options)
    assert [[e.generated_ids for e in s] for s in again] == [[e.generated_ids for e in s] for s in batched]


def test_live_sessions_skip_close_and_bounded_cache(tiny):
    """The live API: a stream with no frame this step waits; a closed stream leaves the batch; holes are squeezed out."""
    model, p = tiny.model, tiny.processor
    fs = frames(30, size=56)
    sessions = model.stream_sessions(p, 3, window_turns=6, evict_turns=3, max_new_tokens=2, response_threshold=0.5)
    alone = model.stream_session(p, window_turns=6, evict_turns=3, max_new_tokens=2, response_threshold=0.5)
    sessions.ask(0, QUESTION)
    alone.ask(QUESTION)
    widths = []
    for k, frame in enumerate(fs):
        batch = [frame, frame if k % 2 else None, frames(1, size=56, seed=100 + k)[0]]
        if k == 20:
            sessions.close(2)
        if k >= 20:
            batch[2] = None
        events = sessions.step(batch)
        expected = alone.step(frame)
        assert events[0].decision == expected.decision and events[0].context_tokens == expected.context_tokens
        assert (events[1] is None) == (k % 2 == 0) and (events[2] is None) == (k >= 20)
        widths.append(sessions.valid.shape[1])
    assert sessions.sessions[1].next_turn_index == 15  # stepped on odd frames only
    assert sessions.valid.shape[0] == 2  # the closed stream's row is gone
    assert max(widths[10:]) <= 2 * max(widths[:10])  # padding holes do not accumulate
    with pytest.raises(ValueError, match="stream 2 is closed"):
        sessions.step([None, None, fs[0]])
    with pytest.raises(ValueError, match="give one per stream"):
        sessions.step([fs[0]])


def test_batched_sessions_need_a_mask_taking_attention(tiny):
    model, p = tiny.model, tiny.processor
    model.set_attn_implementation("eager")
    try:
        streams = [frames(4, seed=s) for s in range(2)]
        eager = model.generate_streams(streams, [QUESTION] * 2, processor=p, max_new_tokens=2)
        assert_same_events(single_runs(model, p, streams, [QUESTION] * 2, [0.0] * 2, max_new_tokens=2), eager)
    finally:
        model.set_attn_implementation("sdpa")
    with pytest.raises(TypeError, match="not both"):
        model.stream_sessions(p, 2, model.stream_session(p).options, fps=2.0)
