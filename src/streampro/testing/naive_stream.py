"""The Streamo-style baseline: re-encode the whole window every frame (no KV-cache reuse).

Used by the tests (the KV-cache engine must make the same decisions) and by
``benchmarks/stream_latency.py`` (the speed baseline). Each frame it rebuilds the chat of the
last ``window_turns`` turns (system prompt and question turns kept) and runs one full forward
over it, vision encoder included, then decides over the processor's decision tokens (two, or three
with ``</Standby>``) and decodes an answer greedily on top of that forward's cache.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from streampro.modeling_streampro.modeling_streampro import StreamEvent, threshold_decision
from streampro.modeling_streampro.processing_streampro import turn_index_for_time, turn_time


@torch.no_grad()
def naive_generate_stream(model, processor, frames, question: str, *, question_time=0.0, fps=1.0,
                          window_turns=200, max_new_tokens=64, response_threshold=None, start_turn=0):
    """Yield one StreamEvent per frame from ``start_turn`` on.

    ``start_turn`` > 0 treats earlier turns as silent without computing them (what a
    never-responding run would have done), so a benchmark can time full-window frames
    without paying for the ramp-up.
    """
    frames = list(frames)
    q_turn = turn_index_for_time(question_time, fps)
    system = processor.encode_text(processor.system_text())
    history: list[tuple[int, list[int]]] = []  # (turn index, assistant ids incl. closing)
    silence, response = processor.silence_token_id, processor.response_token_id
    decision_ids = list(processor.decision_token_ids)  # (silence, response[, standby])
    quiet_names = {silence: "silence", **({decision_ids[2]: "standby"} if len(decision_ids) == 3 else {})}
    eot, newline = processor.end_of_turn_id, processor.newline_ids
    for k in range(start_turn):
        history.append((k, [silence, eot] + newline))
    for k in range(start_turn, len(frames)):
        # The window: the question's turn (pinned) plus the most recent window_turns other turns.
        others = [t for t, _ in history if t != q_turn] + ([] if k == q_turn else [k])
        recent = others[len(others) - window_turns:] if len(others) > window_turns else others
        turns = sorted(set(recent + ([q_turn] if q_turn <= k else [])))
        assistant = dict(history)
        vision = processor.process_frames([frames[t] for t in turns])
        counts = processor.num_image_tokens(vision["image_grid_thw"])
        ids = list(system)
        for t, n in zip(turns, counts):
            question_text = question if t == q_turn else None
            ids += processor.encode_text(processor.user_text(t, fps, n, question_text))
            if t != k:
                ids += assistant[t]
        input_ids = torch.tensor([ids])
        cache = DynamicCache(config=model.config.get_text_config())
        out = model(
            input_ids=input_ids,
            pixel_values=vision["pixel_values"],
            image_grid_thw=vision["image_grid_thw"],
            mm_token_type_ids=(input_ids == processor.image_token_id).int(),
            past_key_values=cache,
            use_cache=True,
        )
        restricted = out.logits[0, -1].float()[decision_ids]
        asked = k >= q_turn
        p = float(torch.softmax(restricted, -1)[1]) if asked else None
        if not asked:
            token = silence
        elif response_threshold is not None:
            token = decision_ids[threshold_decision(restricted, p, response_threshold)]
        else:
            token = decision_ids[int(restricted.argmax())]
        question_here = question if k == q_turn else None
        if token in quiet_names:
            history.append((k, [token, eot] + newline))
            yield StreamEvent(turn_time(k, fps), k, quiet_names[token], "", p, question=question_here,
                              generated_ids=[token])
            continue
        # Greedy answer on top of the full forward's cache, positions continuing the M-RoPE sequence.
        generated, answer = [response], []
        rope_deltas = model.model.rope_deltas
        position = input_ids.shape[1]
        nxt_input = response
        for _ in range(max_new_tokens):
            pos = torch.tensor([[[position]]]).expand(3, 1, 1) + rope_deltas.view(1, -1, 1)
            step = model(input_ids=torch.tensor([[nxt_input]]), position_ids=pos, past_key_values=cache, use_cache=True)
            position += 1
            nxt = int(step.logits[0, -1].argmax())
            generated.append(nxt)
            if nxt == eot:
                break
            answer.append(nxt)
            nxt_input = nxt
        history.append((k, [response] + answer + [eot] + newline))
        text = processor.decode(answer, skip_special_tokens=False).strip()
        yield StreamEvent(turn_time(k, fps), k, "response", text, p, question=question_here, generated_ids=generated)
