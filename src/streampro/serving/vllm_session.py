"""Streaming sessions on a vLLM server: the PyTorch engine's interface and events, vLLM's batching and caches.

A StreamPro stream is a chat that grows by one user turn (one frame) and one assistant turn per
frame. A session here keeps the same turns as :class:`StreamSession` and sends, per frame, one
request with the whole kept context as **token ids** (the PyTorch engine's own ids, not text
rendered again) plus its frames, to vLLM's tokens endpoint (``/inference/v1/generate``, served
with ``--enable-scale-out``). vLLM's automatic prefix caching then computes only the new tokens;
when the window slides, the front of the prompt changes and vLLM computes the kept context again
— the ``"window"`` memory's semantics exactly (docs/engine.md). Many sessions share one server,
whose scheduler batches their requests.

Per frame (docs/vllm.md):

- before the question the decision is silence (forced) and nothing is sent;
- the decision: ``max_tokens=1`` restricted to the checkpoint's decision tokens (two, or three with
  ``</Standby>``: docs/engine.md, "Three states (Streamo)"), with the server's
  ``--logprobs-mode processed_logprobs``, so the log-probs returned are renormalised over them:
  ``p_response``. The decision rule is the engine's (threshold, arg-max, or sampling from the
  restricted distribution with temperature / top-p); a standby decision closes the turn like silence;
- after ``</Response>`` the answer is decoded by vLLM up to ``<|im_end|>`` or ``max_new_tokens``.

Frames are sent as PNG once; later requests name them by their content hash (vLLM's multimodal
cache serves them), and a frame the server no longer holds is sent again. Memory ``"window"`` and
``"sink_window"`` both send the kept turns (sink_window's in-place eviction is the PyTorch engine's
way of avoiding the recomputation vLLM's prefix cache decides on its own); ``"round_decay"`` pools
vision features, which a token-id request cannot express, and is refused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streampro.modeling_streampro.modeling_streampro import (
    SessionOptions,
    StreamEvent,
    StreamSession,
    _normalise_questions,
    _options,
    drive_stream,
    threshold_decision,
)
from streampro.modeling_streampro.time_streampro import turn_time

GENERATE_PATH = "/inference/v1/generate"
VLLM_MEMORIES = ("window", "sink_window")
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


class VLLMEngineError(RuntimeError):
    """The vLLM server failed or cannot be reached: the run stops, finished samples are kept."""


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


class VLLMClient:
    """One vLLM server: the tokens endpoint, ``/metrics`` and ``/health`` (thread-safe; sessions share it).

    Connection failures and 5xx are retried ``retries`` times (1 s, 2 s, ...) and then raise
    :class:`VLLMEngineError`; a 400 (e.g. a prompt longer than the server's ``--max-model-len``)
    is the request's own fault and raises ``ValueError``.
    """

    def __init__(self, base_url: str, *, timeout: float = 600.0, retries: int = 2):
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"a vLLM server URL starts with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs):
        import httpx

        url = self.base_url + path
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                if response.status_code < 500:
                    return response
                reason = f"HTTP {response.status_code}: {_error_message(response)}"
            if attempt < self.retries:
                time.sleep(2**attempt)
        raise VLLMEngineError(f"vLLM server {self.base_url} failed {self.retries + 1} time(s): {reason}")

    def health(self) -> bool:
        try:
            return self._request("GET", "/health").status_code == 200
        except VLLMEngineError:
            return False

    def generate(self, token_ids: list[int], images: list[dict], sampling: dict) -> dict:
        """One prompt of token ids and its images (``content_parts`` items); the first choice of the reply."""
        body = {"token_ids": token_ids, "sampling_params": sampling, "output_mode": "tokens"}
        if images:
            body["content_parts"] = images
        response = self._request("POST", GENERATE_PATH, json=body)
        if response.status_code == 404:
            raise VLLMEngineError(f"{self.base_url} has no {GENERATE_PATH}: start vLLM with --enable-scale-out "
                                  "(streampro.serving.vllm_server does)")
        if response.status_code == 403:
            raise VLLMEngineError(f"{self.base_url}: {_error_message(response)}")
        if response.status_code != 200:
            raise ValueError(f"vLLM refused the request (HTTP {response.status_code}): {_error_message(response)}")
        return response.json()["choices"][0]

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters and gauges, summed over labels: ``{"vllm:prefix_cache_hits_total": ...}``."""
        text = self._request("GET", "/metrics").text
        values: dict[str, float] = {}
        for line in text.splitlines():
            m = _METRIC_LINE.match(line.strip())
            if m and not line.startswith("#"):
                values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
        return values


def _error_message(response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    error = data.get("error", data) if isinstance(data, dict) else data
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or error)[:500]


def prefix_cache_hit_fraction(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Cached prompt tokens / prompt tokens looked up between two :meth:`VLLMClient.metrics` readings."""
    hits = after.get("vllm:prefix_cache_hits_total", 0.0) - before.get("vllm:prefix_cache_hits_total", 0.0)
    queries = after.get("vllm:prefix_cache_queries_total", 0.0) - before.get("vllm:prefix_cache_queries_total", 0.0)
    return hits / queries if queries > 0 else None


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    uuid: str  # content hash: vLLM's multimodal cache key
    url: str  # PNG data URL


@dataclass
class _Turn:
    index: int
    head_ids: list[int]  # up to and including <|vision_start|>
    tail_ids: list[int]  # from <|vision_end|> to the assistant header
    num_image_tokens: int
    frame: _Frame
    pinned: bool
    assistant_ids: list[int] = field(default_factory=list)

    def num_tokens(self) -> int:
        return len(self.head_ids) + self.num_image_tokens + len(self.tail_ids) + len(self.assistant_ids)


class VLLMEngine:
    """A vLLM server serving the view of one StreamPro checkpoint (:func:`~streampro.serving.vllm_view.make_vllm_view`).

    ``model_dir`` is the checkpoint itself: the session builds its token ids with the checkpoint's
    own processor, so that they equal the PyTorch engine's.
    """

    def __init__(self, base_url: str, model_dir: str | Path, *, processor=None, timeout: float = 600.0):
        if processor is None:
            from streampro.loading import load_processor

            processor = load_processor(model_dir)
        self.processor = processor
        self.client = VLLMClient(base_url, timeout=timeout)
        self._sent: set[str] = set()  # frames the server has been sent (it may have evicted some since)
        self._lock = threading.Lock()

    def session(self, options: SessionOptions | None = None, *, seed: int | None = None,
                **option_fields) -> VLLMStreamSession:
        return VLLMStreamSession(self, options, seed=seed, **option_fields)

    def generate_stream(self, frames, question, *, question_time: float = 0.0, seed: int | None = None, **options):
        """``model.generate_stream`` on vLLM: one :class:`StreamEvent` per frame."""
        session = self.session(seed=seed, **options)
        yield from drive_stream(session, frames, _normalise_questions(question, question_time))

    def close(self) -> None:
        self.client.close()

    def _generate(self, token_ids: list[int], frames: list[_Frame], sampling: dict) -> dict:
        """A request naming already-sent frames by uuid only; if the server lost one, everything is sent again."""
        with self._lock:
            known = set(self._sent)
        parts = [{"type": "image_url", "uuid": f.uuid, "url": None if f.uuid in known else f.url} for f in frames]
        try:
            choice = self.client.generate(token_ids, parts, sampling)
        except ValueError:
            if all(p["url"] is not None for p in parts):
                raise
            choice = self.client.generate(token_ids, [{"type": "image_url", "uuid": f.uuid, "url": f.url}
                                                      for f in frames], sampling)
        with self._lock:
            self._sent.update(f.uuid for f in frames)
        return choice


class VLLMStreamSession:
    """:class:`StreamSession`'s interface on a vLLM server: ``ask(question)``, ``step(frame) -> StreamEvent``."""

    def __init__(self, engine: VLLMEngine, options: SessionOptions | None = None, *, seed: int | None = None,
                 **option_fields):
        options = _options(options, option_fields)
        if options.memory not in VLLM_MEMORIES:
            raise ValueError(f"memory={options.memory!r} pools vision features in the context, which a vLLM request "
                             f"cannot express; use memory='window' or 'sink_window' on vLLM, or the PyTorch engine")
        if not options.constrain_decision:
            raise ValueError("constrain_decision=False (GRPO rollouts) runs on the PyTorch engine only")
        p = engine.processor
        self.engine, self.processor, self.options = engine, p, options
        self.fps, self.window_turns, self.evict_turns = options.fps, options.window_turns, options.evict_turns
        self.silence_id, self.response_id = p.silence_token_id, p.response_token_id
        self.decision_ids = list(p.decision_token_ids)  # the PyTorch engine's order: index 1 is response
        self.system_ids = p.encode_system(options.system_prompt)["input_ids"].tolist()
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.turns: list[_Turn] = []
        self.dropped_turns = 0
        self.num_refreshes = 0  # window slides (vLLM computes the kept context again)
        self.frame_size: tuple[int, int] | None = None
        self._question: str | None = None
        self.asked = False

    # ---- the PyTorch engine's interface ------------------------------------------------------
    ask = StreamSession.ask  # the same rule: the question goes into the next frame's user turn

    @property
    def next_turn_index(self) -> int:
        return len(self.turns) + self.dropped_turns

    @property
    def context_tokens(self) -> int:
        return len(self.system_ids) + sum(t.num_tokens() for t in self.turns)

    def close(self) -> None:
        """Nothing is held for a session on the server (its cache entries age out)."""

    def step(self, frame) -> StreamEvent:
        """Ingest one frame (one turn) and return the decision for it.

        A step the server fails leaves the session as it was before it, so the frame can be sent again.
        """
        k = self.next_turn_index
        image = StreamSession._check_frame(self, frame, k)  # the same checks and messages (fps, frame size)
        saved = (list(self.turns), self.dropped_turns, self.num_refreshes, self._question, self.asked)
        try:
            question, self._question = self._question, None
            if question is not None:
                self.asked = True
            turn = self._make_turn(k, image, question)
            self._make_room(turn)
            self.turns.append(turn)
            event = self._decide_and_answer(turn)
        except BaseException:
            self.turns, self.dropped_turns, self.num_refreshes, self._question, self.asked = saved
            raise
        event.question = question
        event.context_tokens = self.context_tokens
        return event

    def answer_now(self, frame, question: str) -> StreamEvent:
        """Answer ``question`` on this frame's turn (decision forced to respond), then forget it (real-time QA)."""
        saved = (list(self.turns), self.dropped_turns, self.num_refreshes, self._question, self.asked,
                 self.options.response_threshold)
        try:
            self._question, self.asked = None, False
            self.ask(question)
            self.options.response_threshold = 0.0
            return self.step(frame)
        finally:
            (self.turns, self.dropped_turns, self.num_refreshes, self._question, self.asked,
             self.options.response_threshold) = saved

    # ---- turns --------------------------------------------------------------------------------
    def _make_turn(self, k: int, image, question: str | None) -> _Turn:
        from PIL import Image

        p = self.processor
        head_text, tail_text = p.user_text(k, self.fps, 1, question).split("<|image_pad|>")
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        pil = pil.convert("RGB")
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG", compress_level=1)
        png = buffer.getvalue()
        frame = _Frame(hashlib.sha256(png).hexdigest(), "data:image/png;base64," + base64.b64encode(png).decode())
        return _Turn(k, p.encode_text(head_text), p.encode_text(tail_text), num_image_tokens(p, pil.height, pil.width),
                     frame, pinned=question is not None)

    def _make_room(self, new_turn: _Turn) -> None:
        """Drop the oldest unpinned turns when the window would overflow (the PyTorch engine's rule)."""
        unpinned = [t for t in self.turns if not t.pinned]
        if len(unpinned) + (0 if new_turn.pinned else 1) <= self.window_turns:
            return
        drop = {id(t) for t in unpinned[: self.evict_turns]}
        self.dropped_turns += len(drop)
        self.num_refreshes += 1
        self.turns = [t for t in self.turns if id(t) not in drop]

    def _prompt(self) -> tuple[list[int], list[_Frame]]:
        """The kept context as token ids (one ``<|image_pad|>`` per frame: vLLM expands it) and its frames."""
        ids = list(self.system_ids)
        for turn in self.turns:
            ids += turn.head_ids + [self.processor.image_token_id] + turn.tail_ids + turn.assistant_ids
        return ids, [t.frame for t in self.turns]

    # ---- decisions and answers ------------------------------------------------------------------
    def _decide_and_answer(self, turn: _Turn) -> StreamEvent:
        p, opts = self.processor, self.options
        k, t = turn.index, turn_time(turn.index, self.fps)
        closing = [p.end_of_turn_id] + p.newline_ids
        if not self.asked:  # before the question the model is silent (forced): nothing to ask the server
            turn.assistant_ids = [self.silence_id] + closing
            return StreamEvent(t, k, "silence", "", None, generated_ids=[self.silence_id])
        ids, frames = self._prompt()
        choice = self.engine._generate(ids, frames, {
            "max_tokens": 1, "temperature": 0.0, "allowed_token_ids": list(self.decision_ids),
            "logprobs": len(self.decision_ids),
        })
        probs = _decision_probs(choice, self.decision_ids)
        p_response = probs[1]
        # an index into decision_ids, by the PyTorch engine's rules
        if opts.response_threshold is not None:
            decision = threshold_decision(probs, p_response, opts.response_threshold)
        elif opts.do_sample:
            decision = self._sample_decision(probs)
        elif len(probs) == 2:
            decision = int(p_response > 0.5)  # arg-max over (silence, response): a tie is silence
        else:
            decision = int(np.argmax(probs))  # the first of equal ones, as torch's arg-max
        if decision != 1:
            token = self.decision_ids[decision]
            turn.assistant_ids = [token] + closing
            return StreamEvent(t, k, "silence" if decision == 0 else "standby", "", p_response, generated_ids=[token])
        answer: list[int] = []
        generated = [self.response_id]
        if opts.max_new_tokens > 0:
            sampling = {"max_tokens": opts.max_new_tokens, "stop_token_ids": [p.end_of_turn_id], "ignore_eos": True,
                        "temperature": opts.temperature if opts.do_sample else 0.0}
            if opts.do_sample:
                sampling["top_p"] = opts.top_p
                sampling["seed"] = int(self.rng.integers(2**31))
            out = self.engine._generate(ids + [self.response_id], frames, sampling)["token_ids"]
            generated += out
            answer = out[:-1] if out and out[-1] == p.end_of_turn_id else out
        turn.assistant_ids = [self.response_id] + answer + closing
        text = p.decode(answer, skip_special_tokens=False).strip()
        return StreamEvent(t, k, "response", text, p_response, generated_ids=generated)

    def _sample_decision(self, probs: list[float]) -> int:
        """The PyTorch engine's sampling over the decision logits (temperature, then top-p): an index into them.

        One uniform draw: response below P(response), then standby (three states), else silence —
        with two states exactly the earlier ``draw < P(response)`` rule, so seeded runs are unchanged.
        """
        opts = self.options
        logits = np.log(np.clip(probs if len(probs) > 2 else [1.0 - probs[1], probs[1]], 1e-30, 1.0)) / opts.temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if opts.top_p < 1.0:
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < opts.top_p
            kept = np.zeros_like(probs)
            kept[order[keep]] = probs[order[keep]]
            probs = kept / kept.sum()
        draw = self.rng.random()
        if draw < probs[1]:
            return 1
        return 2 if len(probs) > 2 and draw < probs[1] + probs[2] else 0


def _decision_probs(choice: dict, decision_ids: list[int]) -> list[float]:
    """The decision tokens' probabilities, in ``decision_ids`` order, from the decision request's log-probs.

    The server renormalises them over the allowed tokens (``--logprobs-mode processed_logprobs``);
    a decision token missing from them has probability 0, except ``</Response>`` (index 1), whose
    absence means the server did not restrict the request.
    """
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content:
        raise VLLMEngineError("the vLLM server returned no log-probs for the decision; serve with "
                              "--logprobs-mode processed_logprobs (streampro.serving.vllm_server does)")
    top = {item["token_id"]: item["logprob"] for item in content[0].get("top_logprobs", [])}
    if decision_ids[1] not in top:
        raise VLLMEngineError(f"the decision's log-probs lack the </Response> token ({decision_ids[1]}): {sorted(top)}")
    total = sum(math.exp(v) for v in top.values())
    if abs(total - 1.0) > 1e-3:
        raise VLLMEngineError(f"the {len(decision_ids)} decision log-probs sum to {total:.4f}, not 1: serve with "
                              f"--logprobs-mode processed_logprobs so they are renormalised over the "
                              f"{len(decision_ids)} tokens")
    return [math.exp(top[i]) if i in top else 0.0 for i in decision_ids]


def num_image_tokens(processor, height: int, width: int) -> int:
    """Tokens of one frame after the merger: Qwen-VL's resize rule on the checkpoint's image processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision

    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=ip.size["shortest_edge"],
                        max_pixels=ip.size["longest_edge"])
    return (h // factor) * (w // factor)
