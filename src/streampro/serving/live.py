"""The live session server of ``streampro serve``: streaming sessions over HTTP and WebSocket (docs/serve.md).

The server does not know which engine it runs. It holds sessions made by an :class:`Engine`'s
``open_session(options) -> session``, where a session has ``ask(text)``, ``step(frame) ->
StreamEvent`` and optionally ``close()``: :func:`pytorch_engine` (the model in this process; one
lock, since steps of different sessions share the model) and :func:`vllm_engine` (a client of a vLLM
server; sessions run concurrently). Every error a client can cause is an HTTP 4xx with a JSON body
``{"error": "..."}`` that names the rule, and the server flag that sets it when there is one.
Frame bytes are never logged.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request, WebSocket) at runtime.

import asyncio
import contextlib
import io
import json
import logging
import math
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Session options a client may set (POST /v1/sessions): name -> (JSON type, may be null).
# The values' ranges are the engine's to check (SessionOptions, docs/engine.md).
SESSION_OPTIONS: dict[str, tuple[str, bool]] = {
    "fps": ("number", False),
    "window_turns": ("integer", False),
    "evict_turns": ("integer", True),
    "max_new_tokens": ("integer", False),
    "response_threshold": ("number", True),
    "memory": ("string", False),
    "token_budget": ("integer", True),
    "system_prompt": ("string", True),
}
FRAME_FORMATS = ("PNG", "JPEG")
WS_CLOSE_NO_SESSION = 4404  # WebSocket close code: the session expired, was closed or never existed
_GONE_REMEMBERED = 4096  # closed ids remembered, so a late request hears why its session is gone


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Limits:
    """What one server accepts; each field is a ``streampro serve`` flag (docs/serve.md#limits)."""

    max_sessions: int = 8  # --max-sessions
    max_frame_bytes: int = 8 * 1024 * 1024  # --max-frame-bytes
    idle_timeout: float = 300.0  # --idle-timeout, seconds without a request before a session is closed

    @property
    def sweep_interval(self) -> float:
        """How often idle sessions are looked for: a quarter of the timeout, between 50 ms and 30 s."""
        return min(30.0, max(0.05, self.idle_timeout / 4))


@dataclass
class Engine:
    """Opens sessions. ``serial``: steps of different sessions must not overlap (one model in this process)."""

    name: str
    open_session: Callable[[dict], Any]
    serial: bool = True
    lock: Any = field(init=False, repr=False)

    def __post_init__(self):
        self.lock = threading.Lock() if self.serial else contextlib.nullcontext()


def pytorch_engine(model, processor) -> Engine:
    """The PyTorch engine: ``model.stream_session(processor, **options)``, one session step at a time."""
    import torch

    def open_session(options: dict):
        with torch.no_grad():  # opening prefills the system prompt
            return model.stream_session(processor, **options)

    return Engine("pytorch", open_session, serial=True)


def vllm_engine(base_url: str, model_dir: str | Path) -> Engine:
    """The vLLM engine: sessions on a running vLLM server (docs/vllm.md); they step concurrently."""
    from streampro.serving.vllm_session import VLLMEngine

    engine = VLLMEngine(base_url, model_dir)
    return Engine("vllm", lambda options: engine.session(**options), serial=False)


# --- request checks ---------------------------------------------------------------------------


def check_session_options(body: Any) -> dict:
    """The session options of a POST /v1/sessions body (``None``: the defaults); ApiError 400 names the field."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object of session options, got {type(body).__name__}")
    for name, value in body.items():
        if name not in SESSION_OPTIONS:
            raise ApiError(400, f"unknown session option {name!r}; known options: {', '.join(SESSION_OPTIONS)}")
        kind, nullable = SESSION_OPTIONS[name]
        if value is None:
            if not nullable:
                raise ApiError(400, f"session option {name!r} may not be null")
            continue
        if kind == "string":
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if kind == "integer":
                ok = ok and float(value).is_integer()
                value = int(value) if ok else value
        if not ok:
            raise ApiError(400, f"session option {name!r} must be {'an' if kind == 'integer' else 'a'} {kind}, "
                                f"got {json.dumps(value)}")
        if kind == "integer" and value < 1:
            raise ApiError(400, f"session option {name!r} must be >= 1, got {value}")
        body[name] = value
    return dict(body)


def decode_frame(data: bytes, max_bytes: int):
    """The RGB PIL image in ``data`` (PNG or JPEG bytes); ApiError 413 over ``max_bytes``, 400 when unreadable."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise frame_too_large(len(data), max_bytes)
    if not data:
        raise ApiError(400, "empty frame: send the image's PNG or JPEG bytes")
    try:
        with warnings.catch_warnings():  # a decompression bomb is refused, not only warned about
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FRAME_FORMATS)
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ApiError(400, f"the frame ({len(data):,} bytes) is not a PNG or JPEG image; "
                            "send one encoded image per frame") from None
    except Exception as e:  # truncated or corrupt data: PIL raises OSError, SyntaxError, ValueError, ...
        raise ApiError(400, f"the frame ({len(data):,} bytes) could not be decoded as PNG or JPEG "
                            f"({type(e).__name__}: {str(e)[:200]}); send one complete encoded image") from None


def frame_too_large(size: int | str, max_bytes: int) -> ApiError:
    return ApiError(413, f"frame of {size if isinstance(size, str) else f'{size:,}'} bytes exceeds the limit of "
                         f"{max_bytes:,} bytes (--max-frame-bytes); send smaller frames (JPEG, downscaled) "
                         "or restart the server with a larger --max-frame-bytes")


# --- sessions ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    session: Any
    last_used: float
    lock: threading.Lock = field(default_factory=threading.Lock)  # one request on a session at a time
    busy: int = 0  # requests using or waiting for the session (the idle sweep skips a busy session)
    frames: int = 0
    closed: bool = False


class SessionHub:
    """The open sessions of one server: limits, per-session locks, the engine lock, idle expiry.

    Every method is blocking (the engine's work runs inside); the app calls them from worker threads.
    """

    def __init__(self, engine: Engine, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic):
        self.engine, self.limits, self.clock = engine, limits or Limits(), clock
        self._lock = threading.Lock()  # guards the tables below, never held while the engine works
        self._entries: dict[str, _Entry] = {}
        self._opening = 0  # sessions being opened: they count against --max-sessions already
        self._gone: OrderedDict[str, str] = OrderedDict()  # closed id -> why

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ---- open / close ----
    def open(self, options: dict) -> str:
        with self._lock:
            if len(self._entries) + self._opening >= self.limits.max_sessions:
                raise ApiError(503, f"the server is full: {self.limits.max_sessions} session(s) open, the limit "
                                    "(--max-sessions); close one with DELETE /v1/sessions/{id}, wait for idle "
                                    "ones to expire (--idle-timeout) or restart with a larger --max-sessions")
            self._opening += 1
        try:
            with self.engine.lock:
                try:
                    session = self.engine.open_session(dict(options))
                except (ValueError, TypeError) as e:  # the engine's own option checks
                    raise ApiError(400, f"bad session options: {e}") from None
            sid = secrets.token_urlsafe(12)
            with self._lock:
                self._entries[sid] = _Entry(session, self.clock())
                n = len(self._entries)
        finally:
            with self._lock:
                self._opening -= 1
        shown = {k: (f"<{len(v)} chars>" if k == "system_prompt" and v else v) for k, v in options.items()}
        logger.info("session %s opened (%d/%d open; options %s)", sid, n, self.limits.max_sessions,
                    json.dumps(shown) if shown else "default")
        return sid

    def close(self, sid: str, reason: str = "closed by the client") -> dict:
        """Close ``sid`` (waits for a request running on it); the summary of the closed session."""
        with self._use(sid) as entry:
            self._retire(sid, entry, reason)
            return {"session_id": sid, "closed": True, "frames": entry.frames}

    def close_all(self, reason: str) -> None:
        with self._lock:
            entries = list(self._entries.items())
        for sid, entry in entries:
            with entry.lock:
                if not entry.closed:
                    self._retire(sid, entry, reason)

    def sweep(self) -> int:
        """Close the sessions idle for longer than ``--idle-timeout``; how many were closed."""
        now, timeout, idle = self.clock(), self.limits.idle_timeout, []
        with self._lock:
            for sid, entry in list(self._entries.items()):
                if entry.busy == 0 and now - entry.last_used > timeout:
                    entry.busy += 1  # held by the sweep: no request can start on it meanwhile
                    idle.append((sid, entry))
        for sid, entry in idle:
            with entry.lock:
                if not entry.closed:
                    self._retire(sid, entry, self._expired_reason())
            with self._lock:
                entry.busy -= 1
        return len(idle)

    def _expired_reason(self) -> str:
        return f"expired after {self.limits.idle_timeout:g} s idle (--idle-timeout)"

    def _retire(self, sid: str, entry: _Entry, reason: str) -> None:
        """Close the session (caller holds ``entry.lock``) and forget it, remembering why."""
        entry.closed = True
        with self._lock:
            self._entries.pop(sid, None)
            self._gone[sid] = reason
            while len(self._gone) > _GONE_REMEMBERED:
                self._gone.popitem(last=False)
            n = len(self._entries)
        close = getattr(entry.session, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                logger.exception("session %s: close() failed", sid)
        logger.info("session %s closed (%s; %d frames, %d open)", sid, reason, entry.frames, n)

    # ---- use ----
    def _not_found(self, sid: str) -> ApiError:
        why = self._gone.get(sid)
        if why is None:
            return ApiError(404, f"no session {sid!r}: it expired (--idle-timeout), was closed or never existed; "
                                 "open one with POST /v1/sessions")
        return ApiError(404, f"session {sid!r} {why}; open a new one with POST /v1/sessions")

    @contextlib.contextmanager
    def _use(self, sid: str):
        """The session's entry, its lock held; ApiError 404 when it is gone or idle past the timeout."""
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None:
                raise self._not_found(sid)
            expired = entry.busy == 0 and self.clock() - entry.last_used > self.limits.idle_timeout
            entry.busy += 1
        try:
            with entry.lock:
                if expired and not entry.closed:  # the sweep has not come round yet: same rule, same answer
                    self._retire(sid, entry, self._expired_reason())
                if entry.closed:
                    with self._lock:
                        raise self._not_found(sid)
                try:
                    yield entry
                finally:
                    entry.last_used = self.clock()
        finally:
            with self._lock:
                entry.busy -= 1

    def check(self, sid: str) -> None:
        """ApiError 404 unless ``sid`` is open (counts as a use: it resets the idle clock)."""
        with self._use(sid):
            pass

    def ask(self, sid: str, text: Any) -> dict:
        with self._use(sid) as entry:
            if not isinstance(text, str) or not text.strip():
                raise ApiError(400, "the question must be a non-empty string")
            try:
                entry.session.ask(text)
            except ValueError as e:
                raise ApiError(400, str(e)) from None
        return {"session_id": sid, "question": text}

    def step(self, sid: str, data: bytes) -> dict:
        """Decode one frame and step the session on it: the event as a dict."""
        from streampro.serving.vllm_session import VLLMEngineError  # an engine is loaded: torch is imported anyway

        self.check(sid)  # a request on a missing session hears that first, whatever its bytes
        image = decode_frame(data, self.limits.max_frame_bytes)
        with self._use(sid) as entry:
            with self.engine.lock:
                try:
                    event = entry.session.step(image)
                except ValueError as e:  # the engine's frame checks (a frame of another size, ...)
                    raise ApiError(400, str(e)) from None
                except VLLMEngineError as e:  # the vLLM server behind the engine failed: a gateway error
                    logger.error("session %s: the vLLM server failed on frame %d: %s", sid, entry.frames, e)
                    raise ApiError(502, f"the vLLM server failed on frame {entry.frames} of session {sid!r} ({e}) "
                                        "— check that it is running (its log says why it failed)") from None
                except Exception as e:
                    logger.exception("session %s: step failed on frame %d", sid, entry.frames)
                    raise ApiError(500, f"the engine failed on frame {entry.frames} of session {sid!r} "
                                        f"({type(e).__name__}: {e})") from None
            entry.frames += 1
        return event.to_dict()


# --- the ASGI app -----------------------------------------------------------------------------


def create_app(engine: Engine, limits: Limits | None = None):
    """The FastAPI app serving ``engine``'s sessions under ``limits`` (endpoints: docs/serve.md#api)."""
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    hub = SessionHub(engine, limits)
    limits = hub.limits

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def sweep_forever():
            while True:
                await asyncio.sleep(limits.sweep_interval)
                try:
                    await run_in_threadpool(hub.sweep)
                except Exception:
                    logger.exception("idle-session sweep failed")

        task = asyncio.create_task(sweep_forever())
        try:
            yield
        finally:
            task.cancel()
            await run_in_threadpool(hub.close_all, "server stopped")

    app = FastAPI(title="StreamPro live sessions", lifespan=lifespan)
    app.state.hub = hub

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse({"error": f"{exc.detail} ({request.method} {request.url.path})"}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return JSONResponse({"error": str(exc.errors())}, status_code=400)

    async def json_body(request: Request):
        data = await request.body()
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None

    async def frame_body(request: Request) -> bytes:
        """The raw body, refused once it passes --max-frame-bytes (without reading the rest)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_frame_bytes:
            raise frame_too_large(int(length), limits.max_frame_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_frame_bytes:
                raise frame_too_large(f"more than {limits.max_frame_bytes:,}", limits.max_frame_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    def health():
        return {"status": "ok", "engine": engine.name, "sessions": len(hub), "max_sessions": limits.max_sessions}

    @app.post("/v1/sessions", status_code=201)
    async def open_session(request: Request):
        options = check_session_options(await json_body(request))
        return {"session_id": await run_in_threadpool(hub.open, options)}

    @app.post("/v1/sessions/{session_id}/questions")
    async def ask(session_id: str, request: Request):
        body = await json_body(request)
        if not isinstance(body, dict) or set(body) != {"text"}:
            raise ApiError(400, 'the body must be a JSON object {"text": "<the question>"}')
        return await run_in_threadpool(hub.ask, session_id, body["text"])

    @app.post("/v1/sessions/{session_id}/frames")
    async def frame(session_id: str, request: Request):
        return await run_in_threadpool(hub.step, session_id, await frame_body(request))

    @app.delete("/v1/sessions/{session_id}")
    async def close(session_id: str):
        return await run_in_threadpool(hub.close, session_id)

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def websocket(ws: WebSocket, session_id: str):
        """Binary messages are frames (one event or error each); text messages are {"question": ...}."""
        await ws.accept()
        try:
            await run_in_threadpool(hub.check, session_id)
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    if message.get("bytes") is not None:
                        await ws.send_json(await run_in_threadpool(hub.step, session_id, message["bytes"]))
                    else:
                        await run_in_threadpool(hub.ask, session_id, _ws_question(message.get("text")))
                except ApiError as e:
                    if e.status == 404:
                        raise
                    await ws.send_json({"error": e.message, "status": e.status})
        except ApiError as e:  # the session is gone: say why, then close
            await ws.send_json({"error": e.message, "status": e.status})
            await ws.close(code=WS_CLOSE_NO_SESSION)
        except WebSocketDisconnect:
            return

    return app


def _ws_question(text: str | None) -> str:
    """The question of a WebSocket text message ``{"question": "..."}``."""
    try:
        body = json.loads(text or "")
    except json.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or set(body) != {"question"}:
        raise ApiError(400, 'a text message must be JSON {"question": "<the question>"}; send frames as binary messages')
    return body["question"]
