"""Answer-accuracy judges: the offline ones of the ``evaluate`` module plus the LLM judge.

``exact``, ``contains``, ``lexical`` and ``embedding`` live in ``metrics/streampro_f1/judges.py``
(the self-contained module, re-exported here). This file adds ``llm``: the paper's protocol
(docs/method.md §3) on any OpenAI-compatible chat endpoint, through
:class:`streampro.metrics.llm_client.ChatEndpoint` (retries on timeouts, connection errors, 429
and 5xx; ``timeout`` bounds each whole request; up to ``max_concurrency`` in flight; no secret in
a log line). Score = integer 0-5 / 5; a reply that is not such a score (prose, 7, 2.5, inf, NaN,
a list) is asked once more, then is one :class:`JudgeFailure`. A persistent SQLite cache keyed
by model, prompt version and the three texts: re-scoring makes no calls and an interrupted run
resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import time
from pathlib import Path

from streampro.metrics.streampro_f1 import judges as _offline
from streampro.metrics.streampro_f1.judges import (
    EMBEDDING_THRESHOLDS,
    JUDGES,
    ContainsJudge,
    EmbeddingJudge,
    ExactJudge,
    Judge,
    JudgeError,
    JudgeFailure,
    JudgeRequest,
    LexicalJudge,
    normalize_answer,
    token_f1,
)

__all__ = [
    "EMBEDDING_THRESHOLDS",
    "JUDGES",
    "PROMPT_VERSION",
    "ContainsJudge",
    "EmbeddingJudge",
    "ExactJudge",
    "Judge",
    "JudgeError",
    "JudgeFailure",
    "JudgeRequest",
    "LLMJudge",
    "LexicalJudge",
    "make_judge",
    "normalize_answer",
    "parse_judge_output",
    "token_f1",
]

logger = logging.getLogger(__name__)


# --- LLM judge -------------------------------------------------------------------------------

# Bump when the prompt changes: it is part of the cache key, so old scores are not reused.
PROMPT_VERSION = "streampro-judge-v1"

SYSTEM_PROMPT = """\
You grade answers given by an assistant that watches a live video stream. You receive the \
question, the reference answer and the assistant's answer. Judge whether the assistant's answer \
conveys the essential information of the reference. Be lenient: wording, extra correct detail and \
omitted secondary detail do not cost points; only answers that are wrong, irrelevant or too vague \
to be useful lose points.

Scale:
5 = fully accurate and complete
4 = correct, with the key information
3 = partly relevant, but important information is missing
2 = tangential or speculative
1 = factually incorrect
0 = no real attempt, or off-topic

Reply with one JSON object and nothing else: {"explanation": "<one sentence>", "score": <integer 0-5>}"""

USER_TEMPLATE = """\
Question: {question}
Reference answer: {reference}
Assistant's answer: {prediction}"""

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_SCORE_FIELD = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?(\d+(?:\.0+)?)", re.IGNORECASE)


def parse_judge_output(text: str) -> int:
    """The 0-5 score in a judge reply; tolerant of code fences, prose around the JSON and a
    quoted number. Raises ValueError when there is no valid score."""
    score = None
    match = _JSON_OBJECT.search(text)
    if match:
        try:
            obj = json.loads(match.group(0))
            score = obj.get("score") if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            score = None
    if score is None:
        field = _SCORE_FIELD.search(text)
        score = field.group(1) if field else None
    if isinstance(score, str):
        try:
            score = float(score)
        except ValueError:
            score = None
    # inf and NaN are floats too (json reads 1e999 as inf): not a score, and int() of them raises.
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
            or score != int(score):
        raise ValueError(f"no integer 'score' in judge reply: {text[:200]!r}")
    if not 0 <= score <= 5:
        raise ValueError(f"judge score {score} is outside 0-5: {text[:200]!r}")
    return int(score)


def default_cache_path() -> Path:
    """``$STREAMPRO_JUDGE_CACHE`` or ``~/.cache/streampro/llm_judge.sqlite``."""
    env = os.environ.get("STREAMPRO_JUDGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "streampro" / "llm_judge.sqlite"


class _ScoreCache:
    """SQLite file mapping a request key to its 0-5 score. Used by one thread at a time."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # check_same_thread off: inside a running event loop (a notebook) the endpoint hands the
        # results over on its own thread; still one thread at a time.
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score INTEGER NOT NULL, "
            "model TEXT NOT NULL, prompt_version TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, int]:
        found = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[i : i + 500]
            rows = self._db.execute(
                f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update(rows.fetchall())
        return found

    def put(self, key: str, score: int, model: str):
        self._db.execute(
            "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
            (key, score, model, PROMPT_VERSION, time.time()),
        )

    def commit(self):
        self._db.commit()

    def close(self):
        self._db.close()


class LLMJudge(Judge):
    """The paper's 0-5 grading protocol on an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is the API root (``http://localhost:8000/v1`` for vLLM, ``https://api.openai.com/v1``).
    The API key is read from the environment variable ``api_key_env`` at call time and sent as a
    bearer token; it is never logged or stored (local servers need none: leave the variable unset).
    ``timeout`` bounds each whole request, retries aside.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str = "",
        model: str = "",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        cache_path: str | Path | None = None,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        show_progress: bool = True,
    ):
        from streampro.metrics.llm_client import ChatEndpoint

        if not base_url or not model:
            raise ValueError(
                "the 'llm' judge needs a base_url (e.g. http://localhost:8000/v1) and a model name"
            )
        self.endpoint = ChatEndpoint(
            base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_concurrency=max_concurrency,
        )
        self.base_url = self.endpoint.base_url
        self.model = model
        self.cache_path = Path(cache_path) if cache_path is not None else default_cache_path()
        self.show_progress = show_progress

    @property
    def calls_made(self) -> int:
        """HTTP requests sent, retries included (lets tests see cache hits)."""
        return self.endpoint.calls_made

    def describe(self):
        return {
            "name": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "prompt_version": PROMPT_VERSION,
            "cache": str(self.cache_path),
        }

    def cache_key(self, request: JudgeRequest) -> str:
        payload = json.dumps(
            [self.model, PROMPT_VERSION, request.question, request.prediction, request.reference],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def score_batch(self, requests):
        from tqdm.auto import tqdm

        keys = [self.cache_key(r) for r in requests]
        cache = _ScoreCache(self.cache_path)
        try:
            scores: dict[str, int | JudgeFailure] = dict(cache.get_many(sorted(set(keys))))
            todo = {k: r for k, r in zip(keys, requests) if k not in scores}
            if todo:
                logger.info(
                    "LLM judge %s: %d cached, %d to request",
                    self.model,
                    len(set(keys)) - len(todo),
                    len(todo),
                )
                failed = 0
                with tqdm(
                    total=len(todo), desc="LLM judge", disable=not self.show_progress or len(todo) < 2
                ) as bar:

                    def on_done(key, score, error):
                        nonlocal failed
                        if error is not None:
                            score = JudgeFailure(self.endpoint.scrub(str(error)))
                        scores[key] = score
                        if isinstance(score, JudgeFailure):
                            failed += 1
                            # The first reason in full, the rest only at DEBUG: one broken
                            # endpoint must not print thousands of identical lines.
                            logger.log(
                                logging.WARNING if failed == 1 else logging.DEBUG,
                                "LLM judge failure: %s",
                                score.reason,
                            )
                        else:
                            cache.put(key, score, self.model)
                        if len(scores) % 32 == 0:  # commit as we go: an interrupted run keeps its work
                            cache.commit()
                        bar.update()

                    self.endpoint.run(list(todo), lambda key: self._score_one(todo[key]), on_done)
                if failed:
                    logger.warning("LLM judge: %d of %d requests failed", failed, len(todo))
        finally:
            cache.commit()
            cache.close()
        return [s if isinstance(s, JudgeFailure) else s / 5 for s in (scores[k] for k in keys)]

    def _body(self, request: JudgeRequest) -> dict:
        user = USER_TEMPLATE.format(
            question=request.question, reference=request.reference, prediction=request.prediction
        )
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "temperature": 0.0,
            "max_tokens": 256,
        }

    async def _score_one(self, request: JudgeRequest) -> int | JudgeFailure:
        """The 0-5 score of one request, or why there is none (the endpoint raises EndpointError).

        A reply that is not a score is asked once more (sampling may differ); more attempts at
        temperature 0 would only repeat it.
        """
        body = self._body(request)
        for _ in range(2):
            content = await self.endpoint.chat(body)
            try:
                return parse_judge_output(content)
            except ValueError as e:
                reason = f"malformed judge reply: {e}"
        return JudgeFailure(self.endpoint.scrub(reason))


def make_judge(name: str, **options) -> Judge:
    """Build a judge by name; ``options`` go to its constructor (e.g. ``method="rougeL"`` for
    ``lexical``; ``base_url``, ``model``, ``cache_path``, ``max_concurrency`` for ``llm``)."""
    if name == "llm":
        return LLMJudge(**options)
    return _offline.make_judge(name, **options)
