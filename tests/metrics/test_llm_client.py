"""The shared OpenAI-compatible client against misbehaving loopback servers.

A reply that cannot be a score is one judge failure (not an abort), a 4xx body that echoes the
key never reaches a log line or a failure reason, and ``timeout`` bounds the whole request even
when the server trickles its reply.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from streampro.metrics import JudgeFailure, JudgeRequest, LLMJudge
from streampro.metrics.llm_client import scrub

from streampro.testing import FakeOpenAI, chat_reply
from streampro.testing.raw_server import RawSocketServer

GOOD = chat_reply('{"explanation": "ok", "score": 4}')


def judge(server_url, tmp_path, **kw):
    options = {"cache_path": tmp_path / "cache.sqlite", "timeout": 5.0, "max_retries": 1, "backoff": 0.01,
               "show_progress": False}
    return LLMJudge(server_url, "judge-model", **{**options, **kw})


@pytest.mark.parametrize("score", ["1e999", "-1e999", "NaN", '"inf"', '"nan"', "7", "-1", "[4]", '{"a": 4}', "null"])
def test_a_reply_that_is_not_a_score_is_one_judge_failure(tmp_path, score):
    def script(n, body):
        bad = "BAD" in body["messages"][-1]["content"]
        return 200, chat_reply(f'{{"score": {score}}}') if bad else GOOD, 0

    reqs = [JudgeRequest("q", "BAD answer", "ref"), JudgeRequest("q", "fine answer", "ref")]
    with FakeOpenAI(script) as server:
        bad, good = judge(server.base_url, tmp_path).score_batch(reqs)
    assert isinstance(bad, JudgeFailure) and "malformed judge reply" in bad.reason
    assert good == 0.8


def test_an_echoed_key_never_reaches_logs_or_reasons(tmp_path, monkeypatch, caplog):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("JUDGE_TEST_KEY", key)
    caplog.set_level(logging.DEBUG)
    echo = {"error": "bad request", "headers": {"Authorization": f"Bearer {key}"}, "raw": f"key={key}"}
    with FakeOpenAI(lambda n, body: (401, echo, 0)) as server:
        (result,) = judge(server.base_url, tmp_path, api_key_env="JUDGE_TEST_KEY").score_batch(
            [JudgeRequest("q", "a", "r")]
        )
    assert server.headers[0]["Authorization"] == f"Bearer {key}"  # it was sent
    assert isinstance(result, JudgeFailure) and "HTTP 401" in result.reason
    assert key not in result.reason and key not in caplog.text
    assert "[redacted]" in result.reason


def test_scrub_removes_authorization_values_and_key_shaped_strings(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-abcdefgh12345")
    text = scrub('{"authorization": "Bearer abc.def"} Bearer xyz123 sk-abcdefghijkl hf_abcdefghijkl tok', ())
    assert "abc.def" not in text and "xyz123" not in text and "sk-abcdefghijkl" not in text
    assert "hf_abcdefghijkl" not in text and text.endswith(" tok")
    from streampro.metrics.llm_client import secrets_from_environment

    assert "tok-abcdefgh12345" not in scrub("x tok-abcdefgh12345 y", secrets_from_environment())


class TricklingServer(RawSocketServer):
    """Answers every request with a valid reply, one byte every ``interval`` seconds (headers included)."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval


    def _answer(self, conn):
        body = json.dumps(GOOD).encode()
        reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        with conn:
            try:
                conn.recv(65536)
                for i in range(len(reply)):
                    if self.stop.is_set():
                        return
                    conn.sendall(reply[i : i + 1])
                    time.sleep(self.interval)
            except OSError:
                pass  # the client gave up


def test_timeout_bounds_the_whole_request_against_a_trickling_server(tmp_path):
    # Each byte arrives well within the 0.5 s timeout, the whole reply takes ~20 s.
    with TricklingServer(interval=0.1) as server:
        start = time.perf_counter()
        (result,) = judge(server.base_url, tmp_path, timeout=0.5, max_retries=1).score_batch(
            [JudgeRequest("q", "a", "r")]
        )
        elapsed = time.perf_counter() - start
    assert isinstance(result, JudgeFailure) and "timed out after 0.5s" in result.reason
    assert elapsed < 3.0  # two attempts of 0.5 s and a short backoff, not the ~20 s the server takes
