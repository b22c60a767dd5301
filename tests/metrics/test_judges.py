"""Answer judges: the offline ones on known pairs, the LLM judge against a real HTTP server.

The server is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 speaking the OpenAI chat-completions
shape; each test scripts its replies (success, malformed JSON, 429, 5xx, slow replies).
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from streampro.metrics import JudgeFailure, JudgeRequest, LLMJudge, compute_streampro_f1, make_judge
from streampro.metrics.judges import PROMPT_VERSION, parse_judge_output, token_f1

from streampro.testing import FakeOpenAI, chat_reply

REQ = JudgeRequest(
    question="What did the man open?", prediction="He opened the fridge.", reference="The fridge"
)


GOOD = chat_reply('{"explanation": "Names the fridge.", "score": 4}')


def llm(server, tmp_path, **kw):
    options = {
        "cache_path": tmp_path / "cache.sqlite",
        "timeout": 5.0,
        "max_retries": 3,
        "backoff": 0.01,  # seconds: keeps retry tests fast
        "show_progress": False,
    }
    options.update(kw)
    return LLMJudge(server.base_url, "judge-model", **options)


# --- offline judges ----------------------------------------------------------------------------


def test_exact_and_contains():
    reqs = [
        JudgeRequest("q", "The answer is B.", "B"),
        JudgeRequest("q", "b", "B"),
        JudgeRequest("q", "A bird", "B"),
    ]
    assert make_judge("exact").score_batch(reqs) == [0.0, 1.0, 0.0]
    assert make_judge("contains").score_batch(reqs) == [1.0, 1.0, 0.0]


def test_lexical_token_f1_and_rouge():
    assert token_f1("The cat sat.", "a cat sat") == 1.0
    assert token_f1("cat sat on mat", "cat sat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("dog", "cat") == 0.0
    (score,) = make_judge("lexical", method="rougeL").score_batch(
        [JudgeRequest("q", "cat sat on mat", "cat sat")]
    )
    assert score == pytest.approx(2 * 0.5 * 1 / 1.5)
    with pytest.raises(ValueError, match="token_f1"):
        make_judge("lexical", method="bleu")


def test_embedding_judge_offline():
    judge = make_judge("embedding")
    same, para, other, empty = judge.score_batch(
        [
            JudgeRequest("q", "a man opens the fridge", "a man opens the fridge"),
            JudgeRequest("q", "the person opened the refrigerator", "a man opens the fridge"),
            JudgeRequest("q", "a dog runs in the park", "a man opens the fridge"),
            JudgeRequest("q", "", "a man opens the fridge"),
        ]
    )
    assert same == 1.0
    assert other < para < same  # paraphrase above unrelated, on the 0-5 grid
    assert {same, para, other, empty} <= {i / 5 for i in range(6)}
    assert empty == 0.0


def test_unknown_judge_lists_the_valid_ones():
    with pytest.raises(ValueError, match="exact.*llm"):
        make_judge("gemini")


@pytest.mark.parametrize(
    "text, score",
    [
        ('{"explanation": "ok", "score": 5}', 5),
        ('```json\n{"explanation": "ok", "score": 3}\n```', 3),
        ('Here you go: {"score": "2", "explanation": "vague"} hope it helps', 2),
        ('{"explanation": "fine", "score": 4.0}', 4),
        ("{'explanation': 'single quotes', 'score': 1}", 1),
        ("explanation: wrong, score: 0", 0),
    ],
)
def test_parse_judge_output_is_tolerant(text, score):
    assert parse_judge_output(text) == score


@pytest.mark.parametrize("text", ["looks good", '{"score": 7}', '{"score": 2.5}', '{"score": true}', ""])
def test_parse_judge_output_rejects(text):
    with pytest.raises(ValueError):
        parse_judge_output(text)


# --- LLM judge over HTTP -------------------------------------------------------------------------


def test_llm_success_sends_protocol_and_key(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(lambda n, body: (200, GOOD, 0)) as server:
        judge = llm(server, tmp_path, api_key_env="JUDGE_TEST_KEY")
        assert judge.score_batch([REQ]) == [0.8]
    body = server.bodies[0]
    assert body["model"] == "judge-model"
    user = body["messages"][-1]["content"]
    assert REQ.question in user and REQ.prediction in user and REQ.reference in user
    assert "0-5" in body["messages"][0]["content"]
    assert server.headers[0]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in caplog.text
    assert "sk-secret-123" not in json.dumps(judge.describe())
    assert judge.describe()["prompt_version"] == PROMPT_VERSION


def test_llm_malformed_output_is_a_failure_after_one_retry(tmp_path):
    with FakeOpenAI(lambda n, body: (200, chat_reply("I think it is mostly right."), 0)) as server:
        (result,) = llm(server, tmp_path).score_batch([REQ])
    assert isinstance(result, JudgeFailure)
    assert "malformed" in result.reason
    assert server.calls == 2


def test_llm_malformed_then_good(tmp_path):
    script = lambda n, body: (200, chat_reply("oops") if n == 0 else GOOD, 0)
    with FakeOpenAI(script) as server:
        assert llm(server, tmp_path).score_batch([REQ]) == [0.8]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_llm_retries_429_and_5xx(tmp_path, status):
    script = lambda n, body: (status, {"error": "busy"}, 0) if n < 2 else (200, GOOD, 0)
    with FakeOpenAI(script) as server:
        assert llm(server, tmp_path).score_batch([REQ]) == [0.8]
    assert server.calls == 3


def test_llm_gives_up_after_retries(tmp_path):
    with FakeOpenAI(lambda n, body: (429, {"error": "rate limited"}, 0)) as server:
        (result,) = llm(server, tmp_path, max_retries=2).score_batch([REQ])
    assert isinstance(result, JudgeFailure) and "HTTP 429" in result.reason
    assert server.calls == 3


def test_llm_4xx_is_not_retried(tmp_path):
    with FakeOpenAI(lambda n, body: (404, {"error": "model not found"}, 0)) as server:
        (result,) = llm(server, tmp_path).score_batch([REQ])
    assert isinstance(result, JudgeFailure) and "404" in result.reason
    assert server.calls == 1


def test_llm_timeout_then_success_and_persistent_timeout(tmp_path):
    script = lambda n, body: (200, GOOD, 1.0 if n == 0 else 0)
    with FakeOpenAI(script) as server:
        assert llm(server, tmp_path, timeout=0.2).score_batch([REQ]) == [0.8]
    with FakeOpenAI(lambda n, body: (200, GOOD, 1.0)) as server:
        (result,) = llm(server, tmp_path / "other", timeout=0.2, max_retries=1).score_batch([REQ])
    assert isinstance(result, JudgeFailure) and "timed out" in result.reason
    assert server.calls == 2


def test_llm_cache_makes_the_second_run_free(tmp_path):
    reqs = [REQ, JudgeRequest("q", "other answer", "ref"), REQ]  # a duplicate is sent once
    with FakeOpenAI(lambda n, body: (200, GOOD, 0)) as server:
        first = llm(server, tmp_path).score_batch(reqs)
        assert server.calls == 2
        again = llm(server, tmp_path)
        assert again.score_batch(reqs) == first == [0.8, 0.8, 0.8]
        assert server.calls == 2 and again.calls_made == 0
        # Another model is another cache key.
        LLMJudge(
            server.base_url, "other-model", cache_path=tmp_path / "cache.sqlite", show_progress=False
        ).score_batch([REQ])
        assert server.calls == 3


def test_llm_failures_are_not_cached(tmp_path):
    with FakeOpenAI(lambda n, body: (200, chat_reply("nonsense") if n < 2 else GOOD, 0)) as server:
        assert isinstance(llm(server, tmp_path).score_batch([REQ])[0], JudgeFailure)
        assert llm(server, tmp_path).score_batch([REQ]) == [0.8]


def test_llm_keeps_requests_in_flight(tmp_path):
    reqs = [JudgeRequest("q", f"answer {i}", "ref") for i in range(24)]
    with FakeOpenAI(lambda n, body: (200, GOOD, 0.2)) as server:
        start = time.perf_counter()
        assert llm(server, tmp_path, max_concurrency=8).score_batch(reqs) == [0.8] * 24
        elapsed = time.perf_counter() - start
    assert server.max_in_flight == 8  # bounded, and the bound is reached
    assert elapsed < 24 * 0.2 / 2  # far from sequential


def test_llm_failure_in_compute_excludes_the_sample(tmp_path):
    def script(n, body):
        bad = "WRONG" in body["messages"][-1]["content"]
        return (500, {"error": "down"}, 0) if bad else (200, GOOD, 0)

    references = [
        {
            "id": i,
            "task": "OU",
            "question": "q",
            "question_time": 0.0,
            "video": "v",
            "duration": 30.0,
            "answers": [{"text": "door opens", "time": 10.0}],
        }
        for i in range(2)
    ]
    predictions = [[{"time": 10.0, "text": "the door opens"}], [{"time": 10.0, "text": "WRONG"}]]
    with FakeOpenAI(script) as server:
        out = compute_streampro_f1(predictions, references, judge=llm(server, tmp_path, max_retries=1))
    assert out["num_samples"] == 1 and out["excluded_samples"] == 1 and out["judge_failures"] == 1
    assert out["OU_f1"] == pytest.approx(80.0)  # 0.8 on time; the failed sample is not a 0
