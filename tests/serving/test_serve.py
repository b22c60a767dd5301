"""`streampro serve`: live sessions over HTTP and WebSocket give the engine's own events; limits and errors."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from streampro.cli import main
from streampro.loading import load_model_and_processor
from streampro.serving.live import WS_CLOSE_NO_SESSION, Engine, Limits, SessionHub, create_app, pytorch_engine
from streampro.testing.media import random_frames
from streampro.testing.serve_process import running_serve

# max_new_tokens 2 keeps answers short; threshold 0 makes every frame after the question a response,
# so answer decoding is compared too (the other session uses the arg-max decision).
RESPOND = {"max_new_tokens": 2, "response_threshold": 0.0}
ARGMAX = {"max_new_tokens": 2}


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model_and_processor(tiny_dir, device="cpu")


@pytest.fixture
def make_client(loaded):
    def make(**limits) -> TestClient:
        return TestClient(create_app(pytorch_engine(*loaded), Limits(**limits)))

    return make


def png(image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def solid(size: int = 56, value: int = 90) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), value, np.uint8))


def reference(loaded, frames, questions: dict[int, str], options: dict) -> list[dict]:
    """The engine's own session alone: ``questions`` maps a frame index to the question asked before it."""
    model, processor = loaded
    session = model.stream_session(processor, **options)
    events = []
    for i, frame in enumerate(frames):
        if i in questions:
            session.ask(questions[i])
        events.append(session.step(frame).to_dict())
    return events


def assert_same_events(got: list[dict], want: list[dict]) -> None:
    """Decisions, texts and everything else exactly; p_response to 1e-5."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "p_response"} == {k: v for k, v in w.items() if k != "p_response"}
        if w["p_response"] is None:
            assert g["p_response"] is None
        else:
            assert g["p_response"] == pytest.approx(w["p_response"], abs=1e-5)


def open_session(client, **options) -> str:
    r = client.post("/v1/sessions", json=options)
    assert r.status_code == 201, r.text
    return r.json()["session_id"]


def test_two_interleaved_http_sessions_give_the_engines_events_each_alone(loaded, make_client):
    frames_a, frames_b = random_frames(4, size=56, seed=1), random_frames(4, size=56, seed=2)
    qa, qb = {1: "Tell me when it turns red."}, {0: "What shape is it?"}
    with make_client() as client:
        assert client.get("/health").json() == {"status": "ok", "engine": "pytorch", "sessions": 0, "max_sessions": 8}
        a, b = open_session(client, **RESPOND), open_session(client, **ARGMAX)
        assert a != b and client.get("/health").json()["sessions"] == 2
        got = {a: [], b: []}
        for i in range(4):
            for sid, frames, questions in ((a, frames_a, qa), (b, frames_b, qb)):
                if i in questions:
                    r = client.post(f"/v1/sessions/{sid}/questions", json={"text": questions[i]})
                    assert r.status_code == 200 and r.json() == {"session_id": sid, "question": questions[i]}
                r = client.post(f"/v1/sessions/{sid}/frames", content=png(frames[i]), headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                got[sid].append(r.json())
        assert client.delete(f"/v1/sessions/{a}").json() == {"session_id": a, "closed": True, "frames": 4}
        assert client.get("/health").json()["sessions"] == 1
    assert_same_events(got[a], reference(loaded, frames_a, qa, RESPOND))
    assert_same_events(got[b], reference(loaded, frames_b, qb, ARGMAX))
    assert [e["decision"] for e in got[a]] == ["silence", "response", "response", "response"]
    assert got[a][1]["question"] == qa[1] and got[a][0]["p_response"] is None


def test_websocket_streams_one_event_per_frame_and_reports_bad_frames(loaded, make_client):
    frames = random_frames(3, size=56, seed=3)
    jpeg = io.BytesIO()
    frames[2].save(jpeg, format="JPEG", quality=90)
    decoded_jpeg = Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB")
    with make_client() as client:
        sid = open_session(client, **RESPOND)
        with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
            ws.send_bytes(png(frames[0]))
            first = ws.receive_json()
            ws.send_text('{"question": "Is anything moving?"}')
            ws.send_bytes(b"not an image")  # refused with a message; the stream goes on
            bad = ws.receive_json()
            ws.send_bytes(png(solid(64)))
            other_size = ws.receive_json()
            ws.send_text("hello")
            not_json = ws.receive_json()
            ws.send_bytes(png(frames[1]))
            second = ws.receive_json()
            ws.send_bytes(jpeg.getvalue())
            third = ws.receive_json()
    assert bad["status"] == 400 and "not a PNG or JPEG image" in bad["error"]
    assert other_size["status"] == 400 and "all frames of a stream must have one size" in other_size["error"]
    assert not_json["status"] == 400 and '{"question"' in not_json["error"]
    want = reference(loaded, [frames[0], frames[1], decoded_jpeg], {1: "Is anything moving?"}, RESPOND)
    assert_same_events([first, second, third], want)


def test_session_options_are_checked_naming_the_field(make_client):
    with make_client() as client:
        r = client.post("/v1/sessions", json={"fps": 1, "windw_turns": 10})
        assert r.status_code == 400 and "unknown session option 'windw_turns'" in r.json()["error"]
        r = client.post("/v1/sessions", json={"window_turns": "ten"})
        assert r.status_code == 400 and "'window_turns' must be an integer" in r.json()["error"]
        r = client.post("/v1/sessions", json={"max_new_tokens": 0})
        assert r.status_code == 400 and "'max_new_tokens' must be >= 1" in r.json()["error"]
        r = client.post("/v1/sessions", json={"memory": "forever"})  # the engine's own check
        assert r.status_code == 400 and "memory must be one of" in r.json()["error"]
        r = client.post("/v1/sessions", json=[1, 2])
        assert r.status_code == 400 and "JSON object" in r.json()["error"]
        r = client.post("/v1/sessions", content=b"{oops")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        assert client.get("/health").json()["sessions"] == 0  # nothing was opened by the refused requests
        assert client.post("/v1/sessions").status_code == 201  # no body: the defaults
        sid = open_session(client, fps=2, window_turns=8, evict_turns=2, system_prompt="Be brief.", memory="sink_window")
        r = client.post(f"/v1/sessions/{sid}/questions", json={"text": "  "})
        assert r.status_code == 400 and "non-empty" in r.json()["error"]
        r = client.post(f"/v1/sessions/{sid}/questions", json={"question": "hi"})
        assert r.status_code == 400 and '{"text"' in r.json()["error"]
        assert client.get("/nowhere").status_code == 404


def test_frame_limits_and_errors(make_client):
    small, noisy = png(solid()), png(random_frames(1, size=56, seed=4)[0])
    limit = 2000
    assert len(small) < limit < len(noisy)
    gif = io.BytesIO()
    solid().save(gif, format="GIF")
    with make_client(max_frame_bytes=limit) as client:
        sid = open_session(client, **ARGMAX)
        url = f"/v1/sessions/{sid}/frames"
        assert client.post(url, content=small).json()["frame_index"] == 0
        r = client.post(url, content=noisy)
        assert r.status_code == 413
        assert f"exceeds the limit of {limit:,} bytes (--max-frame-bytes)" in r.json()["error"]
        for body, message in ((b"\x89PNG\r\n\x1a\n garbage", "could not be decoded"), (gif.getvalue(), "not a PNG or JPEG"),
                              (small[: len(small) // 2], "could not be decoded"), (b"", "empty frame")):
            r = client.post(url, content=body)
            assert r.status_code == 400 and message in r.json()["error"], r.text
        r = client.post(url, content=png(solid(64)))
        assert r.status_code == 400
        assert r.json()["error"].startswith("frame 1 is 64x64 but the stream started at 56x56")
        assert client.post(url, content=small).json()["frame_index"] == 1  # the refused frames left no trace
        with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
            ws.send_bytes(noisy)
            assert ws.receive_json()["status"] == 413
            ws.send_bytes(small)
            assert ws.receive_json()["frame_index"] == 2


def test_a_vllm_server_that_fails_is_a_502_and_the_frame_can_be_sent_again(loaded, tiny_dir):
    from streampro.serving.vllm_session import VLLMEngine

    with socket.socket() as s:  # a loopback port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vllm = VLLMEngine(f"http://127.0.0.1:{port}", tiny_dir, processor=loaded[1])
    vllm.client.retries = 0
    engine = Engine("vllm", lambda options: vllm.session(**options), serial=False)
    with TestClient(create_app(engine, Limits())) as client:
        sid = open_session(client, **ARGMAX)
        client.post(f"/v1/sessions/{sid}/questions", json={"text": "What colour is it?"})
        for _ in range(2):  # the failed step left no trace: the retry is frame 0 again
            r = client.post(f"/v1/sessions/{sid}/frames", content=png(solid()))
            assert r.status_code == 502, r.text
            error = r.json()["error"]
            assert f"the vLLM server failed on frame 0 of session {sid!r}" in error
            assert f"127.0.0.1:{port}" in error and "check that it is running" in error
    vllm.close()


def test_max_sessions_refuses_with_503_until_one_closes(make_client):
    with make_client(max_sessions=2) as client:
        a, _ = open_session(client), open_session(client)
        r = client.post("/v1/sessions", json={})
        assert r.status_code == 503 and "2 session(s) open, the limit (--max-sessions)" in r.json()["error"]
        assert client.delete(f"/v1/sessions/{a}").status_code == 200
        open_session(client)


def test_deleted_unknown_and_expired_sessions_are_404_and_logged(make_client, caplog):
    caplog.set_level(logging.INFO, logger="streampro.serving.live")
    with make_client(idle_timeout=0.3) as client:
        r = client.post("/v1/sessions/nope/frames", content=png(solid()))
        assert r.status_code == 404 and "never existed" in r.json()["error"]
        deleted = open_session(client)
        client.delete(f"/v1/sessions/{deleted}")
        r = client.post(f"/v1/sessions/{deleted}/questions", json={"text": "still there?"})
        assert r.status_code == 404 and "closed by the client" in r.json()["error"]
        assert client.delete(f"/v1/sessions/{deleted}").status_code == 404
        idle = open_session(client)
        deadline = time.monotonic() + 10
        while client.get("/health").json()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)  # /health does not touch sessions: only the background sweep closes it
        assert client.get("/health").json()["sessions"] == 0
        r = client.post(f"/v1/sessions/{idle}/frames", content=png(solid()))
        assert r.status_code == 404
        assert "expired after 0.3 s idle (--idle-timeout)" in r.json()["error"]
        with client.websocket_connect(f"/v1/sessions/{idle}/ws") as ws:
            assert "expired" in ws.receive_json()["error"]
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == WS_CLOSE_NO_SESSION
    lines = [r.getMessage() for r in caplog.records if r.name == "streampro.serving.live"]
    assert len(lines) == 4  # one line per open and per close, none per request
    assert [line.split(" ", 2)[2].split(" (")[0] for line in lines] == ["opened", "closed", "opened", "closed"]
    assert "closed (expired after 0.3 s idle" in lines[3]


class _SlowSession:
    """A fake engine session whose step takes 0.2 s and records how many steps overlap."""

    def __init__(self, meter):
        self.meter = meter

    def ask(self, text):
        pass

    def step(self, frame):
        self.meter.enter()
        time.sleep(0.2)
        self.meter.leave()
        return type("Event", (), {"to_dict": lambda self: {"decision": "silence"}})()


class _Meter:
    def __init__(self):
        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def enter(self):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self):
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("serial", [True, False])
def test_serial_engine_steps_one_session_at_a_time(serial):
    """PyTorch (serial): one model, steps never overlap; vLLM-like: sessions overlap, one session never does."""
    meter = _Meter()
    hub = SessionHub(Engine("fake", lambda options: _SlowSession(meter), serial=serial))
    a, b = hub.open({}), hub.open({})
    frame = png(solid())

    def steps(sids):
        threads = [threading.Thread(target=hub.step, args=(sid, frame)) for sid in sids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        most, meter.most = meter.most, 0
        return most

    assert steps([a, b]) == (1 if serial else 2)
    assert steps([a, a]) == 1


def test_cli_errors_before_anything_loads(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "streampro serve: error: " in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--engine", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "--engine vllm needs the URL of a vLLM server" in err and "streampro vllm-server" in err
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a model folder (no config.json)" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-sessions", "0"]) == 2
    assert "--max-sessions 0: must be >= 1" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--vllm-url", "http://127.0.0.1:1"]) == 2
    assert "--vllm-url is only used by --engine vllm" in capsys.readouterr().err


def test_serve_command_answers_over_http(loaded, tiny_dir, tmp_path):
    log = tmp_path / "serve.log"
    frame = random_frames(1, size=56, seed=5)[0]
    with running_serve(tiny_dir, log) as base:
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.json()["engine"] == "pytorch"
        with httpx.Client(base_url=base, timeout=60) as http:
            sid = http.post("/v1/sessions", json=RESPOND).json()["session_id"]
            assert http.post(f"/v1/sessions/{sid}/questions", json={"text": "What is it?"}).status_code == 200
            event = http.post(f"/v1/sessions/{sid}/frames", content=png(frame)).json()
    assert_same_events([event], reference(loaded, [frame], {0: "What is it?"}, RESPOND))
    text = log.read_text()
    assert f"session {sid} opened" in text and f"session {sid} closed (server stopped" in text
