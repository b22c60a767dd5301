"""The StreamPro Space's logic as plain functions: model loading, input checks, streaming, scoring.

Two backends stream: the model loaded in this process (:class:`LocalBackend`) or a running
``streampro serve`` server spoken to over HTTP (:class:`RemoteBackend`, docs/serve.md#the-space-as-a-client);
both give the same events for the same frames.

Nothing here imports gradio: the UI layer (:mod:`streampro.space.app`) turns the ``ValueError``
raised here into ``gr.Error`` and the message dicts into ``gr.ChatMessage``. Figures are built
with ``matplotlib.figure.Figure`` (no pyplot global state, so concurrent sessions do not share
a figure).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from streampro.modeling_streampro.time_streampro import num_turns, turn_index_for_time, turn_time

logger = logging.getLogger(__name__)

# The Space streams at 1 fps, the rate the model is trained at (docs/method.md §1).
FPS = 1.0
ALLOWED_FORMATS = (".mp4", ".webm", ".mov", ".mkv", ".avi")
# Frames are downscaled to at most this many pixels before the processor sees them: the
# processor resizes again to the checkpoint's own bounds, this only saves decode memory.
FRAME_MAX_PIXELS = 448 * 448
# Judges that run offline inside the Space (no endpoint or extra download needed).
SPACE_JUDGES = ("lexical", "exact", "contains")
MODEL_ENV = "STREAMPRO_MODEL"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Limits:
    """Input limits of the Space; ``from_env`` reads STREAMPRO_MAX_DURATION / STREAMPRO_MAX_FILE_MB."""

    max_duration_s: float = 600.0
    max_file_mb: float = 200.0

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_duration_s=float(os.environ.get("STREAMPRO_MAX_DURATION", cls.max_duration_s)),
            max_file_mb=float(os.environ.get("STREAMPRO_MAX_FILE_MB", cls.max_file_mb)),
        )


# --- ZeroGPU ----------------------------------------------------------------------------------


def gpu(fn: Callable | None = None, *, duration: int | None = None):
    """``spaces.GPU`` when the ``spaces`` package is importable, else the function unchanged.

    ``spaces.GPU`` only requests a GPU on ZeroGPU hardware; elsewhere (a dedicated GPU, a CPU,
    this test machine) it returns the function as is. Usable bare (``@gpu``) or with options.
    """
    if fn is None:
        return functools.partial(gpu, duration=duration)
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn, duration=duration)


# --- model ------------------------------------------------------------------------------------


def resolve_model(name: str | os.PathLike | None) -> Path | None:
    """A checkpoint directory for ``name``: ``None``/"" → ``None`` (the embedded default), an
    existing directory → itself, an ``owner/name`` Hub repo id → its downloaded snapshot."""
    if name is None or str(name).strip() == "":
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not path.exists() and _REPO_ID.match(str(name)):
        from huggingface_hub import snapshot_download

        logger.info("downloading %s from the Hub", name)
        return Path(snapshot_download(str(name)))
    raise FileNotFoundError(
        f"model {str(name)!r} is neither a checkpoint directory nor a Hub repo id (owner/name); "
        f"set {MODEL_ENV} or --model to a StreamPro checkpoint"
    )


def load_model(name: str | os.PathLike | None = None):
    """(model, processor) for ``name`` (see :func:`resolve_model`); ``None`` reads $STREAMPRO_MODEL,
    then falls back to the embedded tiny model. Raises FileNotFoundError with the fix when the
    checkpoint is missing."""
    from streampro.loading import load_model_and_processor

    if name is None:
        name = os.environ.get(MODEL_ENV)
    return load_model_and_processor(resolve_model(name))


# --- input checks -----------------------------------------------------------------------------


def validate_video(path: str | os.PathLike | None, limits: Limits = Limits()):
    """Check an uploaded video against the Space's limits; return its ``VideoInfo``.

    Raises ValueError naming the rule, the value and the fix.
    """
    from streampro.video import VideoReadError, probe_video

    if path is None or str(path) == "":
        raise ValueError("no video: upload a video file first")
    p = Path(path)
    if p.suffix.lower() not in ALLOWED_FORMATS:
        raise ValueError(
            f"{p.name}: format {p.suffix or '(no extension)'} is not supported; "
            f"upload one of {', '.join(ALLOWED_FORMATS)}"
        )
    if not p.is_file():
        raise ValueError(f"{p.name}: the uploaded file is missing; upload it again")
    size_mb = p.stat().st_size / 2**20
    if size_mb > limits.max_file_mb:
        raise ValueError(
            f"{p.name} is {size_mb:.1f} MB, over the {limits.max_file_mb:g} MB limit; "
            "trim or re-encode it at a lower bitrate"
        )
    try:
        info = probe_video(p)
    except VideoReadError as exc:
        raise ValueError(str(exc)) from None
    if info.duration > limits.max_duration_s:
        raise ValueError(
            f"{p.name} lasts {info.duration:.0f} s, over the {limits.max_duration_s:g} s limit; "
            "trim it, e.g. `ffmpeg -i IN -t 600 -c copy OUT.mp4`"
        )
    if num_turns(info.duration, FPS) == 0:
        raise ValueError(f"{p.name} lasts {info.duration:.2f} s, shorter than one {1 / FPS:g} s turn; use a longer video")
    return info


def validate_question(question: str | None, question_time: float | None, duration: float) -> tuple[str, float]:
    """Strip the question and check that its time falls inside the video; ``None`` time → 0 s."""
    question = (question or "").strip()
    if not question:
        raise ValueError("the question is empty: type a question (or give a reference that has one)")
    question_time = 0.0 if question_time is None else float(question_time)
    if not question_time >= 0:
        raise ValueError(f"question time must be >= 0 s, got {question_time:g}")
    turns = num_turns(duration, FPS)
    if turn_index_for_time(question_time, FPS) >= turns:
        raise ValueError(
            f"question time {question_time:g} s is after the last frame ({turn_time(turns - 1, FPS):g} s) "
            f"of this {duration:.1f} s video; ask earlier"
        )
    return question, question_time


def parse_reference(text: str | None = None, path: str | os.PathLike | None = None) -> dict | None:
    """A ground-truth reference (the metric's format, one sample) from pasted text or a file.

    Accepts a JSON object, or a .json/.jsonl file holding exactly one object. Returns the dict
    (validated) or ``None`` when neither is given; raises ValueError saying what is wrong.
    """
    from streampro.metrics import FormatError, validate_reference

    if path:
        source = Path(path).name
        text = Path(path).read_text(encoding="utf-8")
    elif text and text.strip():
        source = "the pasted reference"
    else:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines):
            raise ValueError(
                f"{source} holds {len(lines)} JSON lines; the Space scores one clip: keep the line of this video"
            ) from None
        raise ValueError(f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if isinstance(obj, list):
        if len(obj) != 1:
            raise ValueError(f"{source} holds a list of {len(obj)} references; give the one of this video")
        obj = obj[0]
    try:
        validate_reference(obj)
    except FormatError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return obj


def fit_frame(frame, size: tuple[int, int] | None = None) -> Image.Image:
    """An RGB PIL image from a webcam array / image: resized to ``size`` (w, h) when given,
    else downscaled to at most :data:`FRAME_MAX_PIXELS`."""
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8))
    image = image.convert("RGB")
    if size is not None:
        return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
    w, h = image.size
    if w * h > FRAME_MAX_PIXELS:
        scale = (FRAME_MAX_PIXELS / (w * h)) ** 0.5
        image = image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)
    return image


# --- the transcript of one stream -------------------------------------------------------------


def timestamp_title(t: float) -> str:
    """The chat message title carrying the video time, e.g. ``◷ 12s`` (a clock glyph that common fonts have, unlike the ⏱ emoji)."""
    return f"◷ {t:g}s"


@dataclass
class StreamView:
    """Everything the UI shows about one stream, filled event by event."""

    threshold: float  # the decision threshold on p_response (0.5 = the arg-max decision)
    total_turns: int | None = None  # None for a live stream
    times: list[float] = field(default_factory=list)
    p_response: list[float | None] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)  # [{time, text}], the metric's prediction format
    questions: list[tuple[float, str]] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)  # chat messages (role, content, metadata)

    def add_question(self, t: float, text: str) -> None:
        self.questions.append((t, text))
        self.messages.append({"role": "user", "content": text, "metadata": {"title": f"asked at {t:g}s"}})

    def add(self, event) -> bool:
        """Record one StreamEvent; True when it is a response (a new chat message)."""
        self.times.append(event.time)
        self.p_response.append(event.p_response)
        if event.decision != "response":
            return False
        self.responses.append({"time": event.time, "text": event.text})
        self.messages.append(
            {"role": "assistant", "content": event.text or "(empty answer)", "metadata": {"title": timestamp_title(event.time)}}
        )
        return True

    def status(self, done: bool = False) -> str:
        if not self.times:
            return "waiting for the first frame"
        n = len(self.times)
        progress = f"frame {n}/{self.total_turns}" if self.total_turns else f"frame {n}"
        p = self.p_response[-1]
        p_text = "—" if p is None else f"{p:.2f}"
        head = "done" if done else "streaming"
        return f"{head} · {progress} · t = {self.times[-1]:g}s · p_response {p_text} · {len(self.responses)} response(s)"

    def figure(self):
        return p_response_figure(self.times, self.p_response, self.responses, self.threshold, self.questions)


def p_response_figure(times, probs, responses, threshold: float, questions=()):
    """p_response over time: the curve, the decision threshold, response markers, question times."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.8), dpi=100)
    ax = fig.add_subplot()
    points = [(t, p) for t, p in zip(times, probs) if p is not None]
    if points:
        ax.plot(*zip(*points), color="tab:blue", linewidth=1.5, marker=".", label="p_response")
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    prob_at = dict(zip(times, probs))
    if responses:
        rt = [r["time"] for r in responses]
        ax.plot(rt, [prob_at.get(t) or 0.0 for t in rt], linestyle="none", marker="v", markersize=9,
                color="tab:green", label="response")
    for t, _ in questions:
        ax.axvline(t, color="black", linestyle=":", linewidth=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, max([*times, 1.0]) + 0.5)
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("p_response")
    ax.legend(loc="upper left", fontsize=8, ncols=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --- upload mode ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOptions:
    """Decoding options the UI exposes (the rest keep the engine's defaults)."""

    response_threshold: float = 0.5
    max_new_tokens: int = 64

    def __post_init__(self):
        if not 0.0 <= self.response_threshold <= 1.0:
            raise ValueError(f"response threshold must be in [0, 1], got {self.response_threshold}")
        if not 1 <= self.max_new_tokens <= 1024:
            raise ValueError(f"max new tokens must be in [1, 1024], got {self.max_new_tokens}")


def stream_video(
    model, processor, path, question: str, question_time: float = 0.0,
    options: StreamOptions = StreamOptions(), limits: Limits = Limits(),
) -> tuple[StreamView, Iterator]:
    """Check the inputs now, then return ``(view, events)``: iterating ``events`` streams the video
    through ``model.generate_stream`` one frame per turn, updating ``view`` before each yield."""
    from streampro.video import iter_video_frames

    info = validate_video(path, limits)
    question, question_time = validate_question(question, question_time, info.duration)
    view = StreamView(threshold=options.response_threshold, total_turns=num_turns(info.duration, FPS))

    def events():
        frames = iter_video_frames(path, fps=FPS, max_pixels=FRAME_MAX_PIXELS)
        for event in model.generate_stream(
            frames, question, processor=processor, question_time=question_time, **session_options(options),
        ):
            if event.question is not None:  # shown at the time the user asked, not the turn's time
                view.add_question(question_time, event.question)
            view.add(event)
            yield event

    return view, events()


# --- webcam mode ------------------------------------------------------------------------------


class LiveSession:
    """One webcam stream: every frame the browser sends is one turn (the UI sends one per second).

    Wraps ``model.stream_session``; the first frame fixes the frame size, later frames are
    resized to it (the engine needs one size per stream).
    """

    def __init__(self, model, processor, options: StreamOptions = StreamOptions()):
        self._start(model.stream_session(processor, **session_options(options)), options)

    def _start(self, session, options: StreamOptions) -> None:
        self.session = session
        self.view = StreamView(threshold=options.response_threshold)
        self.size: tuple[int, int] | None = None
        self.started = time.monotonic()

    @property
    def next_time(self) -> float:
        """The video time of the next turn (where a question asked now lands)."""
        return turn_time(len(self.view.times), FPS)

    def ask(self, question: str) -> None:
        question = (question or "").strip()
        if not question:
            raise ValueError("the question is empty: type a question first")
        self.session.ask(question)

    def step(self, frame):
        if frame is None:
            raise ValueError("no webcam frame received; allow camera access and press record")
        image = fit_frame(frame, self.size)
        self.size = image.size
        event = self.session.step(image)
        if event.question is not None:  # a live question lands on the turn after it was asked
            self.view.add_question(event.time, event.question)
        self.view.add(event)
        return event

    def close(self) -> None:
        """Free the session (a server session is deleted there; an in-process one has nothing to free)."""
        close = getattr(self.session, "close", None)
        if close is not None:
            close()


def session_options(options: StreamOptions) -> dict:
    """The session options both backends open a stream with (the engine's names, docs/serve.md#api)."""
    return {"fps": FPS, "max_new_tokens": options.max_new_tokens, "response_threshold": options.response_threshold}


# --- a `streampro serve` server as the backend (docs/serve.md#the-space-as-a-client) ------------

SERVER_ENV = "STREAMPRO_SERVER_URL"
SERVER_TIMEOUT_ENV = "STREAMPRO_SERVER_TIMEOUT"
# Seconds one request may take. A PyTorch server steps its sessions one at a time, so a frame can
# wait behind other visitors' frames; connecting gets at most 5 s (a server that is down fails fast).
SERVER_TIMEOUT_S = 60.0


class ServerError(ValueError):
    """The server refused a request or did not answer; ``status`` is the HTTP status (None: no answer).

    A ValueError, so the UI shows it like any input error (a ``gr.Error``).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def check_server_url(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless it is an http(s) address like http://127.0.0.1:8000."""
    from urllib.parse import urlsplit

    clean = (url or "").strip().rstrip("/")
    parts = urlsplit(clean)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"server URL {url!r} is not an http(s) address; give the address `streampro serve` "
                         "listens on, e.g. http://127.0.0.1:8000")
    return clean


def server_timeout(timeout: float | None = None) -> float:
    """``timeout``, else $STREAMPRO_SERVER_TIMEOUT, else :data:`SERVER_TIMEOUT_S`; ValueError unless > 0."""
    raw = timeout if timeout is not None else os.environ.get(SERVER_TIMEOUT_ENV, SERVER_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"server timeout must be a number of seconds > 0, got {raw!r} (${SERVER_TIMEOUT_ENV})")
    return value


class ServerClient:
    """HTTP client of one ``streampro serve`` server: every failure becomes a :class:`ServerError`
    that names the server, what was being done and the fix (the server's own message for a 4xx/5xx)."""

    def __init__(self, url: str, timeout: float | None = None):
        import httpx

        self.url, self.timeout = check_server_url(url), server_timeout(timeout)
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(self.timeout, connect=min(5.0, self.timeout)))

    def request(self, method: str, path: str, what: str, **kwargs) -> dict:
        """The JSON object the server answers ``method path`` with; ``what`` says what it was for (in errors)."""
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ServerError(f"cannot reach the StreamPro server at {self.url} to {what} ({exc}); start it with "
                              f"`streampro serve MODEL` or fix the address (--server / ${SERVER_ENV})") from None
        except httpx.TimeoutException:
            raise ServerError(f"the StreamPro server at {self.url} did not answer within {self.timeout:g} s to "
                              f"{what}; it may be busy with other sessions: try again, or raise "
                              f"${SERVER_TIMEOUT_ENV}") from None
        except httpx.HTTPError as exc:  # the connection broke mid-request (server stopped, proxy reset, ...)
            raise ServerError(f"the connection to the StreamPro server at {self.url} failed while trying to "
                              f"{what} ({type(exc).__name__}: {exc}); check that the server still runs") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            message = body.get("error") if isinstance(body, dict) else None
            message = message or response.text.strip()[:300] or response.reason_phrase
            raise ServerError(f"the StreamPro server at {self.url} refused to {what} "
                              f"(HTTP {response.status_code}): {message}", response.status_code)
        if not isinstance(body, dict):
            raise ServerError(f"{self.url} answered the request to {what} with something other than a JSON object "
                              f"(HTTP {response.status_code}: {response.text.strip()[:100]!r}); is it a "
                              "`streampro serve` server?", response.status_code)
        return body

    def health(self) -> dict:
        """GET /health: ``{"status", "engine", "sessions", "max_sessions"}``."""
        return self.request("GET", "/health", "report its health")

    def close(self) -> None:
        self.http.close()


@dataclass
class RemoteEvent:
    """A frame's event as ``streampro serve`` sends it (``StreamEvent.to_dict()``): the fields the views use."""

    time: float
    frame_index: int
    decision: str
    text: str
    p_response: float | None
    question: str | None = None
    context_tokens: int = 0

    @classmethod
    def from_dict(cls, data: dict, url: str) -> RemoteEvent:
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except TypeError as exc:  # a field is missing
            raise ServerError(f"the event from {url} lacks a field ({exc}); is it a `streampro serve` server "
                              "of this StreamPro version?") from None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def encode_frame(image: Image.Image) -> bytes:
    """PNG bytes of ``image``: lossless, so the server's model sees the pixels an in-process model would."""
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


class RemoteSession:
    """One session on a ``streampro serve`` server, with the engine session's interface: ``fps``,
    ``ask(text)``, ``step(frame) -> RemoteEvent``, ``close()`` (docs/serve.md#api)."""

    def __init__(self, url: str, options: StreamOptions = StreamOptions(), timeout: float | None = None):
        self.client = ServerClient(url, timeout)
        self.url, self.fps = self.client.url, FPS
        self.closed = False
        try:
            self.id = self.client.request("POST", "/v1/sessions", "open a session",
                                          json=session_options(options))["session_id"]
        except BaseException:
            self.client.close()
            raise

    def ask(self, question: str) -> None:
        self.client.request("POST", f"/v1/sessions/{self.id}/questions", "take the question", json={"text": question})

    def step(self, frame) -> RemoteEvent:
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, dtype=np.uint8))
        body = self.client.request("POST", f"/v1/sessions/{self.id}/frames", "take a frame",
                                   content=encode_frame(image), headers={"content-type": "image/png"})
        return RemoteEvent.from_dict(body, self.url)

    def close(self) -> None:
        """DELETE the session on the server; never raises (a server that is gone expires it by its --idle-timeout)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.client.request("DELETE", f"/v1/sessions/{self.id}", "close the session")
        except ServerError as exc:
            if exc.status != 404:  # 404: the server closed it already (expired, restarted)
                logger.warning("session %s left open on %s: %s", self.id, self.url, exc)
        finally:
            self.client.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_video_remote(
    url: str, path, question: str, question_time: float = 0.0,
    options: StreamOptions = StreamOptions(), limits: Limits = Limits(), timeout: float | None = None,
) -> tuple[StreamView, Iterator]:
    """:func:`stream_video` through a ``streampro serve`` server: the same checks, frames, question turn
    and events. The session opens when iteration starts and is deleted when it ends, fails or is dropped."""
    from streampro.video import iter_video_frames

    info = validate_video(path, limits)
    question, question_time = validate_question(question, question_time, info.duration)
    url, timeout = check_server_url(url), server_timeout(timeout)
    view = StreamView(threshold=options.response_threshold, total_turns=num_turns(info.duration, FPS))
    ask_at = turn_index_for_time(question_time, FPS)  # the turn generate_stream asks on

    def events():
        with RemoteSession(url, options, timeout) as session:
            k = -1
            for k, (_, image) in enumerate(iter_video_frames(path, fps=FPS, max_pixels=FRAME_MAX_PIXELS)):
                if k == ask_at:
                    session.ask(question)
                event = session.step(image)
                if event.question is not None:
                    view.add_question(question_time, event.question)
                view.add(event)
                yield event
            if ask_at > k:  # the file held fewer frames than its header promised
                raise ValueError(f"question time {question_time:g} s is beyond the stream ({k + 1} frames)")

    return view, events()


class RemoteLiveSession(LiveSession):
    """:class:`LiveSession` on a ``streampro serve`` server; ``close()`` deletes the server's session."""

    def __init__(self, url: str, options: StreamOptions = StreamOptions(), timeout: float | None = None):
        self._start(RemoteSession(url, options, timeout), options)


@dataclass
class LocalBackend:
    """The model loaded in the Space's own process."""

    model: object
    processor: object
    name: str
    gpu: bool = True  # its handlers need a GPU (spaces.GPU on ZeroGPU)

    def stream_video(self, path, question, question_time, options, limits):
        return stream_video(self.model, self.processor, path, question, question_time, options, limits)

    def live_session(self, options: StreamOptions) -> LiveSession:
        return LiveSession(self.model, self.processor, options)

    def describe(self) -> str:
        return f"Backend: this process · model `{self.name}` ({self.model.config.backbone})"


@dataclass
class RemoteBackend:
    """A running ``streampro serve`` server; the Space holds no model and needs no GPU."""

    url: str
    timeout: float | None = None
    gpu: bool = False

    def __post_init__(self):
        self.url, self.timeout = check_server_url(self.url), server_timeout(self.timeout)

    def stream_video(self, path, question, question_time, options, limits):
        return stream_video_remote(self.url, path, question, question_time, options, limits, self.timeout)

    def live_session(self, options: StreamOptions) -> RemoteLiveSession:
        return RemoteLiveSession(self.url, options, self.timeout)

    def health(self) -> dict:
        client = ServerClient(self.url, self.timeout)
        try:
            return client.health()
        finally:
            client.close()

    def describe(self) -> str:
        """One line naming the server and what it says of itself now (or why it did not answer)."""
        head = f"Backend: `streampro serve` at {self.url}"
        try:
            h = self.health()
        except ServerError as exc:
            return f"{head} · ⚠️ not answering now: {exc}"
        return f"{head} · engine {h.get('engine')} · {h.get('sessions')}/{h.get('max_sessions')} sessions open"

# --- scoring ----------------------------------------------------------------------------------


def score_clip(predictions: list[dict], reference: dict, judge: str = "lexical"):
    """StreamPro-F1 of this clip's responses against one reference (docs/method.md §3)."""
    from streampro.metrics import streampro_f1_sample

    if judge not in SPACE_JUDGES:
        raise ValueError(f"unknown judge {judge!r}; the Space offers {list(SPACE_JUDGES)}")
    return streampro_f1_sample(predictions, reference, judge=judge)


def score_markdown(score, judge: str) -> str:
    """A short Markdown summary of a clip's score."""
    matched = sum(m is not None for m in score.matched)
    return (
        f"**StreamPro-F1 {100 * score.f1:.1f}** (precision {100 * score.precision:.1f}, "
        f"recall {100 * score.recall:.1f}) · task {score.task} · {score.num_predictions} response(s), "
        f"{matched} inside a ground-truth window · judge `{judge}`"
    )


def timeline_image(predictions: list[dict], reference: dict, score, path: str | os.PathLike) -> Path:
    """The responses against the ground-truth windows, as a PNG (``metrics.plots.plot_timeline``)."""
    from streampro.metrics import validate_predictions, validate_reference
    from streampro.metrics.plots import plot_timeline

    return plot_timeline(validate_reference(reference), validate_predictions(predictions), score, Path(path))
