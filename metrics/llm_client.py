"""One client for OpenAI-compatible ``/chat/completions`` endpoints: the LLM judge and the rubric writer use it.

:class:`ChatEndpoint` sends chat requests with the policy both share:

- **retries** with exponential backoff and jitter on timeouts, connection errors, 429 and 5xx,
  honouring a numeric ``Retry-After`` (capped at ``max_backoff``); another 4xx is final;
- **a deadline per attempt**: ``timeout`` bounds the whole request (connect, send, the reply to
  its last byte), so a server that trickles its reply cannot hold a request past it;
- **bounded concurrency**: at most ``max_concurrency`` requests in flight;
- **no secret in any message**: the API key is read from the environment at call time, sent as a
  bearer token and never logged; every failure reason goes through :meth:`ChatEndpoint.scrub`,
  which removes the key, ``Authorization`` / bearer values and key-shaped strings
  (the values of ``*KEY*`` / ``*TOKEN*`` / ``*SECRET*`` environment variables), because an
  endpoint may echo the request headers in an error body.

Requests run on an asyncio event loop (httpx's async client) so a deadline can cancel a request
mid-read; the callers stay synchronous: :meth:`ChatEndpoint.run` takes a list of items and an
``async`` function that turns one item into a result (asking :meth:`ChatEndpoint.chat` as often as
it needs) and hands each result to a callback, in completion order, on the calling thread.
The ``openai`` SDK is not used: its retries have a fixed backoff and its timeout is per read.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

_REDACTED = "[redacted]"
_AUTH_VALUE = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',;}]+")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_KEY_SHAPED = re.compile(r"\b(?:sk|hf|rk|pk)[-_][A-Za-z0-9_-]{8,}")
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


class EndpointError(RuntimeError):
    """The endpoint gave no usable reply: retries used up, or a 4xx that retrying cannot fix."""


def secrets_from_environment(extra: tuple[str, ...] = ()) -> list[str]:
    """Values that must never be printed: ``extra`` plus every ``*KEY*``/``*TOKEN*``/``*SECRET*`` variable."""
    found = [v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8]
    return sorted({s for s in (*extra, *found) if s}, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` without the given secrets, authorization values, bearer tokens or key-shaped strings."""
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + _REDACTED, text)
    text = _BEARER.sub("Bearer " + _REDACTED, text)
    return _KEY_SHAPED.sub(_REDACTED, text)


class ChatEndpoint:
    """An OpenAI-compatible API root (``http://localhost:8000/v1``, ``https://api.openai.com/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_concurrency: int = 16,
    ):
        if not base_url:
            raise ValueError("an LLM endpoint needs a base URL, e.g. http://localhost:8000/v1")
        if max_concurrency < 1 or max_retries < 0 or not timeout > 0:
            raise ValueError("max_concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_concurrency = max_concurrency
        self.calls_made = 0  # HTTP requests sent, retries included (lets tests see cache hits)
        self._client = None  # the httpx.AsyncClient of the running batch

    def scrub(self, text: str) -> str:
        """``text`` safe to log: see :func:`scrub` (the endpoint's key included)."""
        return scrub(text, secrets_from_environment((os.environ.get(self.api_key_env, ""),)))

    def _retry_delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * 2**attempt * (0.5 + random.random())  # jitter spreads the retries
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass  # an HTTP-date Retry-After: our own backoff
        return min(delay, self.max_backoff)

    async def chat(self, body: dict) -> str:
        """The first choice's message content for ``body``, with retries; :class:`EndpointError` when it gives up."""
        import httpx

        reason = "no attempt made"
        for attempt in range(self.max_retries + 1):
            self.calls_made += 1  # one event loop: no lock needed
            retry_after = None
            try:
                async with asyncio.timeout(self.timeout):  # the whole request, not one read
                    response = await self._client.post(self.url, json=body)
            except TimeoutError:
                reason = f"timed out after {self.timeout}s"
            except httpx.TransportError as e:
                reason = f"connection error ({type(e).__name__}) to {self.url}"
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    reason = f"HTTP {status} from {self.url}"
                    retry_after = response.headers.get("retry-after")
                elif status >= 400:
                    raise EndpointError(self.scrub(f"HTTP {status} from {self.url}: {response.text[:200]}"))
                else:
                    try:
                        return response.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        reason = f"malformed API reply: {e!r}"
            if attempt < self.max_retries:
                await asyncio.sleep(self._retry_delay(attempt, retry_after))
        raise EndpointError(self.scrub(f"{reason} (after {self.max_retries + 1} attempts)"))

    def run(
        self,
        items: list,
        work: Callable[[Any], Awaitable[Any]],
        on_done: Callable[[Any, Any, BaseException | None], None],
        *,
        concurrency: int | None = None,
    ) -> None:
        """Run ``await work(item)`` for every item, ``concurrency`` (default ``max_concurrency``) at a time.

        ``on_done(item, result, error)`` is called once per item as it finishes (``error`` is the
        exception ``work`` raised, else None), always from one thread. An interrupt (Ctrl-C)
        cancels what is in flight and propagates; what finished was already handed over.
        """
        if not items:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self._run(items, work, on_done, concurrency or self.max_concurrency))
            return
        # Called from inside an event loop (a notebook): run ours on a thread of its own.
        failure: list[BaseException] = []

        def target():
            try:
                asyncio.run(self._run(items, work, on_done, concurrency or self.max_concurrency))
            except BaseException as e:  # re-raised on the calling thread
                failure.append(e)

        thread = threading.Thread(target=target, name="llm-endpoint")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    async def _run(self, items, work, on_done, concurrency: int) -> None:
        import httpx

        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.api_key_env)
        if api_key:  # local servers need none
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        gate = asyncio.Semaphore(concurrency)

        async def one(item):
            async with gate:
                try:
                    return item, await work(item), None
                except (EndpointError, ValueError) as e:  # ValueError: a reply the caller could not use
                    return item, None, e

        # httpx's own timeout is only a fallback: asyncio.timeout above bounds each attempt.
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout * 2, limits=limits) as client:
            self._client = client
            try:
                for finished in asyncio.as_completed([one(item) for item in items]):
                    on_done(*await finished)
            finally:
                self._client = None
