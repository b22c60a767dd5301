"""StreamPro Space: a proactive streaming video LLM answering as an uploaded or webcam video plays.

Run locally::

    streampro space --model DIR            # or: STREAMPRO_MODEL=DIR python space/app.py
    streampro space --server URL           # or: STREAMPRO_SERVER_URL=URL python space/app.py

On the Hub this file is the Space's ``app_file`` (see space/README.md and docs/space.md). The
checkpoint is $STREAMPRO_MODEL (a local directory or a Hub repo id), else the package's embedded
tiny model; with $STREAMPRO_SERVER_URL the Space loads no model and streams through that running
``streampro serve`` server instead (docs/serve.md#the-space-as-a-client). The logic lives in
:mod:`streampro.space.backend`; this file is the gr.Blocks layout and the thin handlers that turn
backend errors into ``gr.Error``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import gradio as gr
from streampro.space.backend import (
    ALLOWED_FORMATS,
    SERVER_ENV,
    SPACE_JUDGES,
    Limits,
    LiveSession,
    LocalBackend,
    RemoteBackend,
    ServerError,
    StreamOptions,
    gpu,
    load_model,
    parse_reference,
    score_clip,
    score_markdown,
    timeline_image,
)

from streampro.video import VideoReadError

logger = logging.getLogger(__name__)

# Redraw the p_response plot at most this often (seconds of wall time) while streaming; the
# chat and status update on every frame.
PLOT_INTERVAL_S = 1.0
# A webcam stream runs at most this long per press of "record" (seconds).
LIVE_TIME_LIMIT_S = 600
# How many streams run at once (one model, shared); override with $STREAMPRO_CONCURRENCY.
DEFAULT_CONCURRENCY = 2

INTRO = """# StreamPro: proactive answers on streaming video
The model watches the video one frame per second and, after your question, decides on every frame
whether to stay silent or to answer now. Answers appear in the chat with the video time they were
given at; the plot shows the model's probability of responding (`p_response`) on each frame."""


def _chat(messages: list[dict]) -> list[gr.ChatMessage]:
    return [gr.ChatMessage(role=m["role"], content=m["content"], metadata=m["metadata"]) for m in messages]


def server_url_from_env() -> str | None:
    """$STREAMPRO_SERVER_URL, or None when it is unset or blank."""
    return (os.environ.get(SERVER_ENV) or "").strip() or None


class SpaceHandlers:
    """The event handlers, bound to one backend (or to the error that stopped setting it up).

    The backend is the ``streampro serve`` server at ``server_url`` when given, else the model
    ``model_dir`` loaded here when given, else $STREAMPRO_SERVER_URL's server, else $STREAMPRO_MODEL /
    the embedded model loaded here.
    """

    def __init__(self, model_dir=None, limits: Limits | None = None, server_url: str | None = None):
        if model_dir is not None and server_url is not None:
            raise ValueError("give a model or a server URL, not both: the Space streams through one backend")
        self.limits = limits or Limits.from_env()
        self.model = self.processor = None
        self.backend: LocalBackend | RemoteBackend | None = None
        self.load_error: str | None = None
        if model_dir is None and server_url is None:
            server_url = server_url_from_env()
        if server_url is not None:
            self.model_name = None
            if os.environ.get("STREAMPRO_MODEL"):
                logger.warning("STREAMPRO_MODEL is ignored: the Space streams through the server at %s", server_url)
            try:
                self.backend = RemoteBackend(server_url)
            except ValueError as exc:
                self.load_error = f"No backend: {exc}. Or unset {SERVER_ENV} to load a model in this process."
                logger.error(self.load_error)
            return
        self.model_name = str(model_dir or os.environ.get("STREAMPRO_MODEL") or "embedded tiny model")
        try:
            self.model, self.processor = load_model(model_dir)
        except (FileNotFoundError, OSError, ValueError) as exc:
            # The page still opens and says what to fix; every run raises the same message.
            self.load_error = f"No model loaded: {exc}. Or set STREAMPRO_MODEL to a checkpoint directory or Hub repo id."
            logger.error(self.load_error)
            return
        self.backend = LocalBackend(self.model, self.processor, self.model_name)

    def _require_model(self):
        if self.load_error:
            raise gr.Error(self.load_error)

    # ---- upload mode ----------------------------------------------------------------------
    def run_video(self, video, question, question_time, threshold, max_new_tokens,
                  reference_text, reference_file, judge):
        """Stream an uploaded video; yields (chat, plot, status, score, timeline) after every frame."""
        self._require_model()
        try:
            reference = parse_reference(reference_text, reference_file)
            if reference is not None and not (question or "").strip():
                question, question_time = reference["question"], reference["question_time"]
            options = StreamOptions(float(threshold), int(max_new_tokens))
            view, events = self.backend.stream_video(video, question, question_time, options, self.limits)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        last_plot = 0.0
        responses = 0
        try:
            for _ in events:
                now = time.monotonic()
                new_message = len(view.messages) != responses
                responses = len(view.messages)
                plot = gr.skip()
                if now - last_plot >= PLOT_INTERVAL_S:
                    plot, last_plot = view.figure(), now
                chat = _chat(view.messages) if new_message else gr.skip()
                yield chat, plot, view.status(), gr.skip(), gr.skip()
        except (ValueError, VideoReadError) as exc:
            raise gr.Error(str(exc)) from None
        finally:  # Stop closes this generator: end the stream now (a server session is deleted)
            events.close()
        score_md, timeline = "", None
        if reference is not None:
            try:
                score = score_clip(view.responses, reference, judge)
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
            score_md = score_markdown(score, judge)
            timeline = str(timeline_image(view.responses, reference, score,
                                          tempfile.mkdtemp(prefix="streampro-space-") + "/timeline.png"))
        yield _chat(view.messages), view.figure(), view.status(done=True), score_md, timeline

    # ---- webcam mode ----------------------------------------------------------------------
    def _live(self, state, threshold, max_new_tokens) -> LiveSession:
        self._require_model()
        if state is None:
            try:
                state = self.backend.live_session(StreamOptions(float(threshold), int(max_new_tokens)))
            except ValueError as exc:
                raise gr.Error(str(exc)) from None
        return state

    def live_step(self, frame, state, threshold, max_new_tokens):
        """One webcam frame = one turn; returns (chat, plot, status, state)."""
        if frame is None:  # the stream has not delivered an image yet
            return gr.skip(), gr.skip(), gr.skip(), state
        live = self._live(state, threshold, max_new_tokens)
        try:
            live.step(frame)
        except ServerError as exc:
            if exc.status == 404:  # the server closed the session (idle timeout, restart)
                raise gr.Error(f"{exc} — press New session to start another") from None
            raise gr.Error(str(exc)) from None
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return _chat(live.view.messages), live.view.figure(), live.view.status(), live

    def live_ask(self, question, state, threshold, max_new_tokens):
        """Queue a question for the next webcam frame; returns (chat, status, state, cleared box)."""
        self._require_model()
        if state is None:
            # The session is created by the first webcam frame; creating it here too would race
            # with that frame and one of the two sessions (and the question) would be lost.
            raise gr.Error("start the webcam first (press Record), then ask: the question goes into the next frame")
        live = state
        try:
            live.ask(question)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        status = f"question queued for the frame at {live.next_time:g}s: {question.strip()}"
        return _chat(live.view.messages), status, live, ""

    @staticmethod
    def live_reset(state: LiveSession | None = None):
        """Start over: the old session is closed (deleted on the server) and the state emptied."""
        close_live(state)
        return [], None, "new session: press record on the webcam to start", None


def close_live(state: LiveSession | None) -> None:
    """Close a webcam session: on New session, and when gradio drops the state (visitor gone, time to live)."""
    if state is not None:
        state.close()


def _options(prefix: str):
    threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Response threshold on p_response",
                          info="0.5 is the model's own decision; lower answers more often",
                          elem_id=f"{prefix}threshold")
    max_new_tokens = gr.Slider(8, 256, value=64, step=8, label="Max answer tokens", elem_id=f"{prefix}max-tokens")
    return threshold, max_new_tokens


def build_demo(model_dir=None, limits: Limits | None = None, server_url: str | None = None) -> gr.Blocks:
    """The Space's gr.Blocks; the backend is chosen as in :class:`SpaceHandlers`."""
    h = SpaceHandlers(model_dir, limits, server_url)
    # Only a model in this process needs a GPU (spaces.GPU on ZeroGPU); a server backend does not.
    on_gpu = h.backend is None or h.backend.gpu
    run_video = gpu(h.run_video, duration=120) if on_gpu else h.run_video
    live_step = gpu(h.live_step, duration=20) if on_gpu else h.live_step
    # No usage telemetry: the app must run offline (tests, air-gapped machines) without outbound calls.
    with gr.Blocks(title="StreamPro", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        if h.load_error:
            gr.Markdown(f"### ⚠️ {h.load_error}", elem_id="load-error")
        else:
            gr.Markdown(f"{h.backend.describe()} · 1 frame per second", elem_id="backend")
        with gr.Tab("Upload a video"):
            with gr.Row():
                with gr.Column(scale=2):
                    video = gr.Video(label=f"Video ({', '.join(ALLOWED_FORMATS)}; up to "
                                     f"{h.limits.max_duration_s:g} s, {h.limits.max_file_mb:g} MB)",
                                     sources=["upload"], elem_id="video-input")
                    question = gr.Textbox(label="Question", placeholder="Tell me when the person opens the door",
                                          elem_id="question")
                    question_time = gr.Number(value=0, minimum=0, label="Ask at (seconds of video)",
                                              elem_id="question-time")
                    with gr.Accordion("Options", open=False):
                        threshold, max_new_tokens = _options("")
                    with gr.Accordion("Score against ground truth (optional)", open=False):
                        reference_text = gr.Code(label="Reference (one sample, the metric's JSON format)",
                                                 language="json", lines=6)
                        reference_file = gr.File(label="…or upload it (.json / .jsonl with one line)",
                                                 file_types=[".json", ".jsonl"], type="filepath")
                        judge = gr.Dropdown(list(SPACE_JUDGES), value=SPACE_JUDGES[0], label="Answer judge")
                    with gr.Row():
                        run = gr.Button("Stream", variant="primary", elem_id="run")
                        stop = gr.Button("Stop")
                with gr.Column(scale=3):
                    status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                    chat = gr.Chatbot(label="Responses", height=380, elem_id="chat")
                    plot = gr.Plot(label="p_response over time", elem_id="plot")
                    score_md = gr.Markdown(elem_id="score")
                    timeline = gr.Image(label="Responses vs ground-truth windows", type="filepath",
                                        interactive=False, elem_id="timeline")
            event = run.click(
                run_video,
                inputs=[video, question, question_time, threshold, max_new_tokens, reference_text,
                        reference_file, judge],
                outputs=[chat, plot, status, score_md, timeline],
                api_name="stream_video",
            )
            stop.click(None, cancels=[event])
        with gr.Tab("Webcam"):
            live_state = gr.State(None, time_to_live=LIVE_TIME_LIMIT_S * 2, delete_callback=close_live)
            with gr.Row():
                with gr.Column(scale=2):
                    webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", elem_id="webcam")
                    live_question = gr.Textbox(label="Question", placeholder="Tell me when I raise my hand",
                                               elem_id="live-question")
                    with gr.Row():
                        ask = gr.Button("Ask", variant="primary", elem_id="live-ask")
                        reset = gr.Button("New session")
                    with gr.Accordion("Options (apply to a new session)", open=False):
                        live_threshold, live_tokens = _options("live-")
                with gr.Column(scale=3):
                    live_status = gr.Textbox(label="Status", interactive=False, elem_id="live-status")
                    live_chat = gr.Chatbot(label="Responses", height=380, elem_id="live-chat")
                    live_plot = gr.Plot(label="p_response over time", elem_id="live-plot")
            webcam.stream(
                live_step,
                inputs=[webcam, live_state, live_threshold, live_tokens],
                outputs=[live_chat, live_plot, live_status, live_state],
                stream_every=1.0,
                time_limit=LIVE_TIME_LIMIT_S,
                api_name="live_step",
            )
            ask_inputs = [live_question, live_state, live_threshold, live_tokens]
            ask_outputs = [live_chat, live_status, live_state, live_question]
            ask.click(h.live_ask, ask_inputs, ask_outputs, api_name="live_ask")
            live_question.submit(h.live_ask, ask_inputs, ask_outputs, api_visibility="private")
            reset.click(h.live_reset, [live_state], [live_chat, live_plot, live_status, live_state],
                        api_name="live_reset")
    demo.queue(
        default_concurrency_limit=int(os.environ.get("STREAMPRO_CONCURRENCY", DEFAULT_CONCURRENCY)),
        max_size=32,
    )
    demo.streampro_handlers = h  # tests and the CLI read the load state from here
    return demo


def launch(model_dir=None, host: str | None = None, port: int | None = None, server_url: str | None = None,
           **kwargs):
    """Build and serve the app (blocking unless ``prevent_thread_lock=True``)."""
    demo = build_demo(model_dir, server_url=server_url)
    limits = demo.streampro_handlers.limits
    demo.launch(server_name=host, server_port=port, max_file_size=f"{limits.max_file_mb:g}mb", **kwargs)
    return demo


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    launch()
