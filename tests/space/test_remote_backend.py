"""The Space streaming through a running `streampro serve` (docs/serve.md#the-space-as-a-client):
the same events as the model in the Space's process, server errors shown as gr.Error, sessions
deleted on the server afterwards."""

from __future__ import annotations

import argparse
import socket
import time

import gradio as gr
import httpx
import numpy as np
import pytest
from streampro.space import backend
from streampro.space.app import SpaceHandlers, build_demo
from streampro.space.backend import (
    LiveSession,
    LocalBackend,
    RemoteBackend,
    RemoteLiveSession,
    ServerError,
    StreamOptions,
    stream_video_remote,
)

from streampro.loading import load_model_and_processor
from streampro.testing.media import random_frames
from streampro.testing.serve_process import free_port, running_serve

MAX_FRAME_BYTES = 100_000  # a 64x64 frame's PNG is ~12 KB, a 320x320 noise frame's ~300 KB
MAX_SESSIONS = 2


def make_video(path, seconds: int = 6, size: int = 64, seed: int = 1):
    from streampro.video import encode_video

    return encode_video(path, [np.asarray(f) for f in random_frames(seconds, size=size, seed=seed)], fps=1)


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    """`streampro serve` on the tiny checkpoint, on a free loopback port; stopped by its pid."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_serve(tiny_dir, log, "--max-sessions", str(MAX_SESSIONS),
                       "--max-frame-bytes", str(MAX_FRAME_BYTES)) as url:
        yield url


def open_sessions(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=5).json()["sessions"]


@pytest.fixture(scope="module")
def local(tiny_dir):
    model, processor = load_model_and_processor(tiny_dir, device="cpu")
    return LocalBackend(model, processor, "tiny")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def assert_same_events(got: list, want: list) -> None:
    """Decisions, texts, times, questions and context sizes exactly; p_response to 1e-4."""
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        g, w = g.to_dict(), w.to_dict()
        assert {k: v for k, v in g.items() if k != "p_response"} == {k: v for k, v in w.items() if k != "p_response"}
        if w["p_response"] is None:
            assert g["p_response"] is None
        else:
            assert g["p_response"] == pytest.approx(w["p_response"], abs=1e-4)


# --- the same events as the model in this process ------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_uploaded_video_through_the_server_gives_the_local_events(server, local, video, threshold):
    options = StreamOptions(threshold, 4)
    # Asked at 2 s: the question lands mid-stream, on the turn at 2 s, in both backends.
    local_view, local_events = local.stream_video(video, "What changes?", 2.0, options, backend.Limits())
    remote_view, remote_events = RemoteBackend(server).stream_video(video, "What changes?", 2.0, options,
                                                                    backend.Limits())
    want = list(local_events)
    got = []
    for event in remote_events:
        got.append(event)
        assert open_sessions(server) == 1  # one session, open while the stream runs
    assert_same_events(got, want)
    assert [e.question for e in got] == [None, "What changes?", None, None, None, None]
    assert remote_view.messages == local_view.messages and remote_view.responses == local_view.responses
    assert remote_view.status(done=True) == local_view.status(done=True)
    if threshold == 0.0:  # every turn from the question on is an answer: the decoded texts are compared too
        assert [e.time for e in got if e.decision == "response"] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert open_sessions(server) == 0  # deleted at the end


def test_webcam_session_with_a_question_mid_stream_gives_the_local_events(server, local):
    frames = [np.asarray(f) for f in random_frames(5, size=96, seed=3)]
    options = StreamOptions(0.0, 4)
    sessions = [local.live_session(options), RemoteLiveSession(server, options)]
    assert isinstance(sessions[0], LiveSession) and open_sessions(server) == 1
    events = [[], []]
    for i, frame in enumerate(frames):
        for live, out in zip(sessions, events):
            if i == 2:
                live.ask("Is anything moving?")
            out.append(live.step(frame))
    assert_same_events(events[1], events[0])
    assert events[1][2].question == "Is anything moving?" and events[1][2].decision == "response"
    assert sessions[1].view.messages == sessions[0].view.messages
    sessions[1].close()
    sessions[1].close()  # closing twice is harmless
    assert open_sessions(server) == 0


def test_space_handlers_on_the_server_show_the_backend_and_close_sessions(server, video, monkeypatch):
    monkeypatch.setenv(backend.SERVER_ENV, server)
    h = SpaceHandlers()  # $STREAMPRO_SERVER_URL picks the server: no model is loaded here
    assert h.model is None and h.load_error is None and isinstance(h.backend, RemoteBackend)
    assert h.backend.describe() == f"Backend: `streampro serve` at {server} · engine pytorch · 0/{MAX_SESSIONS} sessions open"
    *_, final = h.run_video(str(video), "What changes?", 1, 0.0, 4, "", None, "lexical")
    chat, _, status, _, _ = final
    assert [m.metadata["title"] for m in chat] == ["asked at 1s", "◷ 1s", "◷ 2s", "◷ 3s", "◷ 4s", "◷ 5s", "◷ 6s"]
    assert status.startswith("done · frame 6/6")
    stream = h.run_video(str(video), "What changes?", 1, 0.0, 4, "", None, "lexical")
    next(stream)
    assert open_sessions(server) == 1
    stream.close()  # what Stop does (gradio closes the handler's generator): the session is deleted
    assert open_sessions(server) == 0
    _, _, status, state = h.live_step(np.full((48, 64, 3), 90, np.uint8), None, 0.0, 4)
    assert isinstance(state, RemoteLiveSession) and status.startswith("streaming · frame 1")
    chat, status, state, _ = h.live_ask("Anything?", state, 0.0, 4)
    chat, *_ = h.live_step(np.full((48, 64, 3), 90, np.uint8), state, 0.0, 4)
    assert [m.metadata["title"] for m in chat] == ["asked at 2s", "◷ 2s"]
    assert open_sessions(server) == 1
    assert h.live_reset(state)[3] is None  # New session deletes the old one on the server
    assert open_sessions(server) == 0
    # An explicit model beats the variable; without either, nothing changes (checked in test_app.py).
    with pytest.raises(ValueError, match="not both"):
        SpaceHandlers("some/model", server_url=server)


# --- errors --------------------------------------------------------------------------------------------


def test_a_server_that_is_down_gives_a_clear_error(video):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    _, events = stream_video_remote(url, video, "q", 0.0)
    with pytest.raises(ServerError, match=rf"cannot reach the StreamPro server at {url} to open a session .*"
                                          r"start it with `streampro serve MODEL`"):
        next(events)
    demo = build_demo(server_url=url)  # the page still builds, and says the server does not answer
    h = demo.streampro_handlers
    line = next(b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "backend")
    assert line.startswith(f"Backend: `streampro serve` at {url} · ⚠️ not answering now: cannot reach")
    assert h.load_error is None and h.model is None
    with pytest.raises(gr.Error, match=f"cannot reach the StreamPro server at {url}"):
        list(h.run_video(str(video), "q", 0, 0.5, 4, "", None, "lexical"))
    with pytest.raises(gr.Error, match=f"cannot reach the StreamPro server at {url}"):
        h.live_step(np.zeros((8, 8, 3), np.uint8), None, 0.5, 4)


def test_a_server_that_does_not_answer_times_out_clearly(video):
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        _, events = stream_video_remote(url, video, "q", 0.0, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ServerError, match=r"did not answer within 0.5 s to open a session; .*STREAMPRO_SERVER_TIMEOUT"):
            next(events)
        assert time.monotonic() - start < 10


def test_server_refusals_are_shown_and_the_session_is_closed(server, video, tmp_path):
    h = SpaceHandlers(server_url=server)
    # Full (--max-sessions): the server's 503 and its fix reach the page.
    held = [httpx.post(f"{server}/v1/sessions", timeout=10).json()["session_id"] for _ in range(MAX_SESSIONS)]
    try:
        with pytest.raises(gr.Error, match=r"refused to open a session \(HTTP 503\): the server is full: .*--max-sessions"):
            list(h.run_video(str(video), "q", 0, 0.5, 4, "", None, "lexical"))
    finally:
        for sid in held:
            httpx.delete(f"{server}/v1/sessions/{sid}", timeout=10)
    assert open_sessions(server) == 0
    # A frame over --max-frame-bytes fails after the session opened: the error names the limit and the
    # session is deleted on the server all the same.
    big = make_video(tmp_path / "big.mp4", seconds=3, size=320)
    with pytest.raises(gr.Error, match=r"refused to take a frame \(HTTP 413\): frame of [\d,]+ bytes exceeds .*--max-frame-bytes"):
        list(h.run_video(str(big), "q", 0, 0.5, 4, "", None, "lexical"))
    assert open_sessions(server) == 0
    # A session the server no longer has (closed, expired, restarted): the webcam says to start another.
    live = RemoteLiveSession(server)
    httpx.delete(f"{server}/v1/sessions/{live.session.id}", timeout=10)
    with pytest.raises(gr.Error, match=r"\(HTTP 404\): session .* closed by the client.* — press New session"):
        h.live_step(np.zeros((64, 64, 3), np.uint8), live, 0.5, 4)
    live.close()  # its 404 is not an error: the session is gone already


def test_bad_server_urls_and_cli_arguments(tmp_path, capsys, monkeypatch):
    from streampro.space import app

    from streampro.cli import main
    from streampro.cli import space as space_cli

    with pytest.raises(ValueError, match="not an http"):
        RemoteBackend("localhost:8000")
    monkeypatch.setenv(backend.SERVER_ENV, "ftp://somewhere")
    h = SpaceHandlers()
    assert h.backend is None and h.load_error.startswith("No backend: server URL 'ftp://somewhere' is not an http")
    with pytest.raises(gr.Error, match="No backend"):
        next(h.run_video("clip.mp4", "q", 0, 0.5, 4, "", None, "lexical"))
    monkeypatch.setenv(backend.SERVER_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="server timeout must be a number of seconds > 0, got 'soon'"):
        RemoteBackend("http://127.0.0.1:8000")
    monkeypatch.delenv(backend.SERVER_TIMEOUT_ENV)

    assert main(["space", "--server", "localhost:8000"]) == 2
    assert "streampro space: error: --server localhost:8000: server URL" in capsys.readouterr().err
    assert main(["space", "--server", "http://127.0.0.1:8000", "--model", str(tmp_path)]) == 2
    assert "--model and --server exclude each other" in capsys.readouterr().err
    assert main(["space", "--server", "http://127.0.0.1:8000", "--export", "--out", str(tmp_path / "s")]) == 2
    assert "STREAMPRO_SERVER_URL" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    space_cli.add_arguments(parser)
    launched = {}
    monkeypatch.setattr(app, "launch", lambda model, host, port, server_url=None: launched.update(
        model=model, host=host, port=port, server_url=server_url))
    assert space_cli.run(parser.parse_args(["--server", "http://127.0.0.1:8000/"])) == 0
    assert launched == {"model": None, "host": "127.0.0.1", "port": 7860, "server_url": "http://127.0.0.1:8000"}
