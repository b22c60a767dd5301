"""GRPO rewards (docs/method.md §5) on hand-computed trajectories: format, turn-level F1, rubric, combination.

The LLM rubric judge talks to a loopback OpenAI-compatible server started by the test; a failed
call must give ``None``, never 0.
"""

from __future__ import annotations

import math

import pytest
from streampro.trainer.rewards import (
    RubricReward,
    TurnF1Reward,
    build_reward_funcs,
    combine_rewards,
    format_reward,
    trajectory_predictions,
    validate_rubric,
)

from streampro.testing import FakeOpenAI, chat_reply

SAMPLE = {
    "id": "s1",
    "task": "OU",
    "question": "Tell me when the square turns red.",
    "question_time": 3.0,
    "video": "v.mp4",
    "duration": 10.0,
    "answers": [{"text": "it turned red", "time": 5.0}],
}


def turn(k, decision="silence", text="", closed=True, forced=False):
    return {
        "turn": k,
        "time": float(k + 1),
        "decision": decision,
        "text": text,
        "closed": closed,
        "forced": forced,
    }


def trajectory():
    """10 turns at 1 fps, question on turn 2 (t=3 s): turns 0-1 forced silent; a good response at
    6 s, an answer cut off by max_new_tokens at 9 s, and an invalid first token at 10 s."""
    turns = [turn(0, forced=True), turn(1, forced=True)]
    turns += [turn(k) for k in (2, 3, 4)]
    turns.append(turn(5, "response", "it turned red"))
    turns += [turn(6), turn(7)]
    turns.append(turn(8, "response", "blah", closed=False))
    turns.append(turn(9, "invalid", "hello"))
    return turns


def columns(n=1, rubric=None):
    cols = {k: [v] * n for k, v in SAMPLE.items()}
    cols["rubric"] = [rubric] * n
    return cols


RUBRIC = [
    {"rubric_id": 1, "dimension": "granularity", "rubric": "Reports the colour change once."},
    {"rubric_id": 2, "dimension": "granularity", "rubric": "Does not split the change into several reports."},
    {"rubric_id": 3, "dimension": "granularity", "rubric": "Gives exactly one response."},
    {"rubric_id": 4, "dimension": "granularity", "rubric": "Does not repeat the answer."},
    {"rubric_id": 5, "dimension": "coherence", "rubric": "Reports the change after it happens."},
    {"rubric_id": 6, "dimension": "coverage", "rubric": "States that the square turned red."},
]


def test_format_reward_counts_policy_turns_only():
    # policy turns 2..9 (8): silences 2,3,4,6,7 + response 5 are well formed; 8 (cut off) and 9 (invalid) are not.
    assert format_reward(trajectory=[trajectory()]) == [6 / 8]
    assert format_reward(trajectory=[[turn(0, "response", "x </Silence> y")]]) == [
        0.0
    ]  # decision token in the text
    assert format_reward(trajectory=[[turn(0, "response", "  ")]]) == [0.0]  # empty answer
    # a three-state checkpoint's lone </Standby> is well formed, and no decision token may sit in an answer
    assert format_reward(trajectory=[[turn(0, "standby"), turn(1, "response", "a </Standby> b")]]) == [0.5]
    with pytest.raises(ValueError, match="no policy turn"):
        format_reward(trajectory=[[turn(0, forced=True)]])


def test_predictions_are_response_turns():
    assert trajectory_predictions(trajectory()) == [
        {"time": 6.0, "text": "it turned red"},
        {"time": 9.0, "text": "blah"},
    ]


def test_turn_f1_reward_hand_computed():
    # GT t*=5, τ=8. Best in-window prediction: 6 s, S_time = 1 - 1/8, S_acc (token F1) = 1 → S' = 1.875.
    # R_turn = 2 · 1.875 / (N_pred 2 + N_gt 1) = 1.25.
    reward = TurnF1Reward("lexical", tau=8.0)
    (r,) = reward(trajectory=[trajectory()], **columns())
    assert r == pytest.approx(2 * 1.875 / 3)
    # τ = 3: the window [2, 8] keeps only the 6 s answer: S' = (1 - 1/3) + 1; R = 2 S' / 3.
    (r3,) = TurnF1Reward("lexical", tau=3.0)(trajectory=[trajectory()], **columns())
    assert r3 == pytest.approx(2 * (2 - 1 / 3) / 3)
    # A silent trajectory: no prediction → 0 (it is scorable, so 0 is the true value here).
    silent = [turn(0, forced=True)] + [turn(k) for k in range(1, 10)]
    assert reward(trajectory=[silent], **columns()) == [0.0]


def test_offline_rubric_approximation_hand_computed():
    # One GT item covered by the 6 s answer (token F1 1 ≥ 0.5): coverage 1, coherence 1 (N_gt = 1),
    # granularity min(2, 1) / max(2, 1) = 0.5. Items: 4 granularity, 1 coherence, 1 coverage → (4·0.5 + 1 + 1) / 6.
    reward = RubricReward("offline", judge="lexical")
    assert reward(trajectory=[trajectory()], **columns(rubric=RUBRIC)) == [pytest.approx(4 / 6)]
    # No rubric written: one item per dimension → (0.5 + 1 + 1) / 3.
    assert reward(trajectory=[trajectory()], **columns(rubric=None)) == [pytest.approx(2.5 / 3)]


def test_llm_rubric_judge_marks_items_and_failures_are_none(tmp_path):
    def script(n, body):
        user = body["messages"][1]["content"]
        if "Does not repeat" in user:
            return 200, chat_reply('{"explanation": "ok", "score": 0}'), 0
        return 200, chat_reply('{"explanation": "ok", "score": 1}'), 0

    opts = {"cache_path": tmp_path / "c.sqlite", "max_retries": 1, "backoff": 0.01, "show_progress": False}
    with FakeOpenAI(script) as server:
        reward = RubricReward("llm", base_url=server.base_url, model="m", **opts)
        out = reward(trajectory=[trajectory(), trajectory()], **columns(2, rubric=RUBRIC))
        assert out == [pytest.approx(5 / 6)] * 2
        assert server.calls == 6  # identical requests of the two rollouts are sent once
        body = server.bodies[0]
        assert "[6s] it turned red" in body["messages"][1]["content"]
        assert "[5s] it turned red" in body["messages"][1]["content"]  # the reference, with its time
    with FakeOpenAI(lambda n, body: (500, {"error": "down"}, 0)) as server:
        reward = RubricReward("llm", base_url=server.base_url, model="m2", **opts)
        assert reward(trajectory=[trajectory()], **columns(rubric=RUBRIC)) == [None]
    with FakeOpenAI(lambda n, body: (200, chat_reply('{"score": 3}'), 0)) as server:
        reward = RubricReward("llm", base_url=server.base_url, model="m3", **opts)
        assert reward(trajectory=[trajectory()], **columns(rubric=RUBRIC)) == [None]  # a mark must be 0 or 1
    # A sample without a rubric gets no reward from the LLM evaluator (and no request is made).
    assert RubricReward("llm", base_url="http://127.0.0.1:9/v1", model="m", **opts)(
        trajectory=[trajectory()], **columns(rubric=None)
    ) == [None]


def test_combined_reward_default_weights_and_none():
    funcs, weights = build_reward_funcs()
    assert weights == [0.1, 0.45, 0.45]
    traj = [trajectory()]
    values = [
        f(prompts=[""], completions=[""], completion_ids=[[]], trajectory=traj, **columns(rubric=RUBRIC))[0]
        for f in funcs
    ]
    assert values == [pytest.approx(0.75), pytest.approx(1.25), pytest.approx(4 / 6)]
    assert combine_rewards(values, weights) == pytest.approx(0.1 * 0.75 + 0.45 * 1.25 + 0.45 * 4 / 6)
    assert combine_rewards([0.5, None, 1.0], weights) is None  # a failed judge is not a 0
    funcs, weights = build_reward_funcs({"traj": 0.0, "turn": 0.9})
    assert [getattr(f, "__name__", None) for f in funcs] == [
        "format_reward",
        "turn_f1_reward",
    ] and weights == [0.1, 0.9]
    with pytest.raises(ValueError, match="unknown reward weight"):
        build_reward_funcs({"fmt": 1.0})
    with pytest.raises(ValueError, match="unknown rubric judge"):
        RubricReward("gemini")
    assert math.isclose(sum(build_reward_funcs()[1]), 1.0)


@pytest.mark.parametrize(
    "rubric, match",
    [
        (RUBRIC[:5], "has 5 items"),
        ([{**RUBRIC[0], "dimension": "style"}] + RUBRIC[1:], "dimension is 'style'"),
        ([{**RUBRIC[0], "rubric_id": 2}] + RUBRIC[1:], "repeated"),
        ("not a list", "expected a JSON list"),
        ([{"rubric_id": 1, "rubric": "x"}] + RUBRIC[1:], "exactly the keys"),
    ],
)
def test_validate_rubric_errors(rubric, match):
    with pytest.raises(ValueError, match=match):
        validate_rubric(rubric)
