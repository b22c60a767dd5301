"""The vLLM engine against a real vLLM server (CPU build, its own environment) on 127.0.0.1.

Needs ``.venv-vllm`` (``bash scripts/setup_vllm.sh``; ``.ci/run`` makes it) or $STREAMPRO_VLLM_PYTHON;
without one every test here is skipped with that reason. The embedded tiny Synth model is served
(float32, ``--enforce-eager`` for a shorter start) and streamed over StreamPro-Synth clips.

Tolerance: vLLM and PyTorch compute the same float32 network with different kernels and resize
the frames with their own copies of the image processor; ``p_response`` agrees to 2e-3 here
(measured: at most 7e-4). A decision is compared where ``p_response`` is not within that of 0.5
(measured: every decision of these clips equal); answers are compared where both responded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streampro.errors import UserError
from streampro.loading import EMBEDDED_MODEL_DIR, load_model_and_processor
from streampro.serving.vllm_server import VLLMServer, find_vllm_python
from streampro.serving.vllm_session import VLLMEngine, VLLMEngineError, prefix_cache_hit_fraction

P_TOLERANCE = 2e-3
SERVER_ARGS = ["--enforce-eager", "--max-model-len", "8192"]
STREAMPRO = [sys.executable, "-m", "streampro.cli"]


@pytest.fixture(scope="module")
def vllm_python() -> str:
    try:
        return find_vllm_python()
    except UserError as e:
        pytest.skip(f"{e.what} ({e.fix})")


@pytest.fixture(scope="module")
def server(vllm_python):
    with VLLMServer(EMBEDDED_MODEL_DIR, python=vllm_python, extra_args=SERVER_ARGS) as url:
        yield url


@pytest.fixture(scope="module")
def model_and_processor():
    return load_model_and_processor(EMBEDDED_MODEL_DIR, device="cpu")


@pytest.fixture(scope="module")
def engine(server, model_and_processor):
    engine = VLLMEngine(server, EMBEDDED_MODEL_DIR, processor=model_and_processor[1])
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from streampro.dataset_scripts.synth import generate

    d = tmp_path_factory.mktemp("synth")
    generate(d, n=7, seed=0, size=32, progress=False)  # one 18-24 s clip per task
    return d


def clips(synth: Path) -> list[tuple[dict, list]]:
    from streampro.video import iter_video_frames

    refs = [json.loads(line) for line in (synth / "bench" / "train.jsonl").read_text().splitlines()]
    return [(ref, list(iter_video_frames(synth / ref["video"], 1.0))) for ref in refs]


def assert_same_events(torch_events, vllm_events):
    assert len(torch_events) == len(vllm_events)
    for a, b in zip(torch_events, vllm_events):
        assert (a.time, a.frame_index, a.question) == (b.time, b.frame_index, b.question)
        assert a.context_tokens == b.context_tokens  # the same token ids are in context
        if a.p_response is None:
            assert b.p_response is None and b.decision == "silence"
            continue
        assert b.p_response == pytest.approx(a.p_response, abs=P_TOLERANCE)
        if abs(a.p_response - 0.5) > P_TOLERANCE:
            assert a.decision == b.decision, (a, b)
        if a.decision == b.decision == "response":
            assert a.text == b.text and a.generated_ids == b.generated_ids


def test_events_equal_the_pytorch_engine(engine, model_and_processor, synth):
    """Seven Synth clips, a window that slides (5 turns, 2 evicted) and a second question mid-stream."""
    model, processor = model_and_processor
    options = dict(window_turns=5, evict_turns=2, max_new_tokens=12)
    responses = slides = 0
    for i, (ref, frames) in enumerate(clips(synth)):
        questions = [(ref["question_time"], ref["question"])]
        if i == 0:
            questions.append((9.0, "And what happens next?"))  # mid-stream, after the first question
        torch_events = list(model.generate_stream(frames, questions, processor=processor, **options))
        session = engine.session(**options)
        vllm_events = [session.step(frame) for frame in _asked(session, frames, questions)]
        assert_same_events(torch_events, vllm_events)
        responses += sum(e.decision == "response" for e in vllm_events)
        slides += session.num_refreshes
    assert responses > 0 and slides > 0  # answers were decoded and windows slid


def _asked(session, frames, questions):
    """Frames, asking each question on its turn (what ``drive_stream`` does)."""
    from streampro.modeling_streampro.time_streampro import turn_index_for_time

    for k, frame in enumerate(frames):
        for t, q in questions:
            if turn_index_for_time(t, session.fps) == k:
                session.ask(q)
        yield frame


def test_prefix_cache_serves_earlier_frames(engine, synth):
    """One stream, no slide: from vLLM's own counters, most prompt tokens of a frame come from the cache."""
    ref, frames = clips(synth)[1]
    before = engine.client.metrics()
    list(engine.generate_stream(frames, ref["question"], question_time=0.0, window_turns=200, max_new_tokens=4))
    after = engine.client.metrics()
    fraction = prefix_cache_hit_fraction(before, after)
    assert after["vllm:prefix_cache_hits_total"] > before["vllm:prefix_cache_hits_total"]
    assert fraction is not None and fraction > 0.5, fraction
    assert after["vllm:mm_cache_hits_total"] > before["vllm:mm_cache_hits_total"]  # frames sent once, named after


def test_concurrent_streams_equal_one_by_one(engine, synth):
    from streampro.evaluation.protocols import VLLMStreamProProtocol

    protocol = VLLMStreamProProtocol(engine, window_turns=6, max_new_tokens=6)
    samples = [(frames, ref["question"], ref["question_time"], None) for ref, frames in clips(synth)[:4]]
    together = protocol.run_batch(samples)
    alone = [protocol.run(*sample) for sample in samples]
    assert [o.predictions for o in together] == [o.predictions for o in alone]
    assert [o.events for o in together] == [o.events for o in alone]


def test_qwen3_vl_backbone(vllm_python, tmp_path):
    """A random tiny Qwen3-VL StreamPro model (deepstack, its own weight layout) gives the PyTorch engine's events."""
    import numpy as np

    from streampro.backbones import build_tiny_backbone

    # head_dim 32: vLLM's CPU attention has no kernel for the default tiny head_dim of 16.
    tb = build_tiny_backbone("qwen3_vl", streampro=True, text_hidden=128, text_intermediate=256)
    tb.model.save_pretrained(tmp_path)
    tb.processor.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(8)]
    options = dict(window_turns=4, evict_turns=2, max_new_tokens=4, response_threshold=0.3)
    questions = [(1.0, "What is on screen?")]
    expected = list(tb.model.generate_stream(frames, questions, processor=tb.processor, **options))
    with VLLMServer(tmp_path, python=vllm_python, extra_args=SERVER_ARGS) as url:
        engine = VLLMEngine(url, tmp_path, processor=tb.processor)
        got = list(engine.generate_stream(frames, questions, **options))
        engine.close()
    assert_same_events(expected, got)
    assert sum(e.decision == "response" for e in got) > 0


def test_three_state_checkpoint(vllm_python, synth, tmp_path):
    """The embedded model made three-state: the decision request covers </Standby> too; the PyTorch engine's events.

    The new ``</Standby>`` output row is 1.05 x the mean of the silence and response rows, so it wins
    where the model hesitates between them: these clips give every decision (docs/engine.md, "Three states").
    """
    import torch

    from streampro.backbones import add_standby_token

    model, processor = load_model_and_processor(EMBEDDED_MODEL_DIR, device="cpu")
    standby = add_standby_token(processor.tokenizer, model)
    silence, response = processor.silence_token_id, processor.response_token_id
    with torch.no_grad():
        rows = model.lm_head.weight
        rows[standby] = 1.05 * (rows[silence] + rows[response]) / 2
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    ids = list(processor.decision_token_ids)
    assert len(ids) == 3
    options = dict(window_turns=5, evict_turns=2, max_new_tokens=12)
    runs = []
    for ref, frames in [clips(synth)[i] for i in (0, 2)]:
        session = model.stream_session(processor, **options)
        questions = [(ref["question_time"], ref["question"])]
        events, margins = [], []
        for frame in _asked(session, frames, questions):
            events.append(session.step(frame))
            probs = torch.softmax(session.last_decision_logits[ids], 0).sort(descending=True).values
            margins.append(float(probs[0] - probs[1]))  # how far the arg-max is from a tie
        runs.append((frames, questions, events, margins))
    decisions = {e.decision for _, _, events, _ in runs for e in events}
    assert decisions == {"silence", "response", "standby"}
    with VLLMServer(tmp_path, python=vllm_python, extra_args=SERVER_ARGS) as url:
        engine = VLLMEngine(url, tmp_path, processor=processor)
        got = [list(engine.generate_stream(frames, questions, **options)) for frames, questions, _, _ in runs]
        engine.close()
    for (_, _, expected, margins), vllm_events in zip(runs, got):
        assert len(expected) == len(vllm_events)
        for a, b, margin in zip(expected, vllm_events, margins):
            assert (a.frame_index, a.question, a.context_tokens) == (b.frame_index, b.question, b.context_tokens)
            if a.p_response is None:
                assert b.p_response is None and b.decision == "silence"
                continue
            assert b.p_response == pytest.approx(a.p_response, abs=P_TOLERANCE)
            if margin > 2 * P_TOLERANCE:
                assert a.decision == b.decision, (a, b)
            if a.decision == b.decision == "response":
                assert a.text == b.text and a.generated_ids == b.generated_ids


def test_session_refuses_what_vllm_cannot_do(engine):
    with pytest.raises(ValueError, match="round_decay"):
        engine.session(memory="round_decay", token_budget=100)
    with pytest.raises(ValueError, match="PyTorch engine only"):
        engine.session(constrain_decision=False)


def test_live_session_server_over_websocket(server, model_and_processor, synth):
    """``streampro serve --engine vllm``: a WebSocket session gives the PyTorch engine's events."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from streampro.serving.live import create_app, vllm_engine

    model, processor = model_and_processor
    ref, frames = clips(synth)[0]
    frames = [image for _, image in frames[:8]]
    assert isinstance(frames[0], Image.Image)
    expected = list(model.generate_stream(frames, "What happens?", processor=processor, max_new_tokens=6))
    app = create_app(vllm_engine(server, EMBEDDED_MODEL_DIR))
    with TestClient(app) as client:
        sid = client.post("/v1/sessions", json={"max_new_tokens": 6}).json()["session_id"]
        received = []
        with client.websocket_connect(f"/v1/sessions/{sid}/ws") as ws:
            ws.send_text(json.dumps({"question": "What happens?"}))
            for frame in frames:
                png = io.BytesIO()
                frame.save(png, format="PNG")  # iter_video_frames gives PIL images
                ws.send_bytes(png.getvalue())
                received.append(ws.receive_json())
    for a, b in zip(expected, received):
        assert b["decision"] == a.decision and b["text"] == a.text and b["context_tokens"] == a.context_tokens
        assert b["p_response"] == pytest.approx(a.p_response, abs=P_TOLERANCE)
    assert len(received) == len(frames)


def _evaluate_argv(synth: Path, out: Path, *extra) -> list[str]:
    return [*STREAMPRO, "evaluate", "--benchmark", str(synth / "bench" / "train.jsonl"), "--video-root", str(synth),
            "--out", str(out), "--max-new-tokens", "6", "--window-turns", "8", "--no-progress", "--plot-samples", "0",
            *extra]


def _records(out: Path) -> dict[str, dict]:
    path = out / "predictions.jsonl"
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def test_killed_server_stops_the_run_and_the_same_command_resumes(vllm_python, synth, tmp_path):
    """The server dies mid-run: a one-line error, finished samples kept; rerun without --vllm-url, the
    command starts its own server, finishes, and the predictions equal the PyTorch engine's."""
    reference = tmp_path / "torch"
    assert subprocess.run(_evaluate_argv(synth, reference), capture_output=True).returncode == 0
    expected = _records(reference)

    out = tmp_path / "vllm"
    server = VLLMServer(EMBEDDED_MODEL_DIR, python=vllm_python, extra_args=SERVER_ARGS)
    url = server.start()
    try:
        proc = subprocess.Popen(_evaluate_argv(synth, out, "--engine", "vllm", "--vllm-url", url),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while len(_records(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(server.process.pid, signal.SIGKILL)  # the server dies, not the evaluation
        _, err = proc.communicate(timeout=120)
    finally:
        server.stop()
    assert proc.returncode == 2, err
    error_line = next(line for line in err.splitlines() if line.startswith("streampro evaluate: error:"))
    assert url in error_line and "finished samples are kept" in error_line
    assert "Traceback" not in err
    done = _records(out)
    assert 2 <= len(done) < len(expected)

    vllm_args = [f"--vllm-arg={a}" for a in SERVER_ARGS]
    resumed = subprocess.run(_evaluate_argv(synth, out, "--engine", "vllm", "--vllm-python", vllm_python, *vllm_args),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    records = _records(out)
    assert set(records) == set(expected)
    for rid, record in records.items():
        assert record["error"] is None
        assert [p["time"] for p in record["predictions"]] == [p["time"] for p in expected[rid]["predictions"]]
        assert [p["text"] for p in record["predictions"]] == [p["text"] for p in expected[rid]["predictions"]]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_vllm_server_command_serves_until_stopped(vllm_python, tmp_path):
    """``streampro vllm-server``: prints its URL once vLLM answers; SIGTERM stops it with its workers."""
    from streampro.serving.vllm_server import free_port
    from streampro.serving.vllm_session import VLLMClient

    port = free_port()
    proc = subprocess.Popen([*STREAMPRO, "vllm-server", "--port", str(port), "--vllm-python", vllm_python,
                             *[f"--vllm-arg={a}" for a in SERVER_ARGS]],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("--vllm-url" in line for line in lines) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        assert any(url in line for line in lines), lines
        assert VLLMClient(url).health()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    with pytest.raises(VLLMEngineError):
        VLLMClient(url, retries=0).generate([1], [], {"max_tokens": 1})
