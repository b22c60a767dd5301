"""Broken and unusual inputs: a generated video corpus and a misbehaving judge endpoint (docs/reliability.md).

The corpus holds every codec and container PyAV writes here (H.264, HEVC, VP8, VP9, AV1, MJPEG,
FFV1, MPEG-4, ProRes in MP4, MKV, WebM, AVI and MOV), odd sizes (17×33), 10-bit pictures, files
with an audio or a second video stream, and broken files (truncated, zero bytes, random bytes,
audio only, 0.2 s, a 10-minute clip). Each goes through ``streampro stream`` (in-process
``streampro.cli.main``), one ``streampro evaluate`` run and the Space backend. Every file must
give either a complete result or a clear error (the one CLI error line, a per-sample record,
a ``ValueError`` naming the file); nothing is lost and nothing is scored 0 for a fault.

The judge server answers on loopback the way real endpoints fail: slowly, one byte at a time,
429 with and without ``Retry-After``, 5xx, garbage, infinite or NaN scores, and echoing the
API key. ``streampro score --judge llm`` must record each such pair as a judge failure
(excluded, counted), never as a 0, and the key must not appear on stderr, in the log or the report.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streampro.cli import main
from streampro.testing.media import write_audio_only
from streampro.testing.raw_server import RawSocketServer

# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

SECONDS, FPS = 2.0, 4  # 2 s (two 1-fps turns) at 4 fps: the shortest clip with a response turn
# name -> (codec, container format, pixel format, width, height); 17x33 is odd in both directions.
CODECS = {
    "h264.mp4": ("libx264", "mp4", "yuv420p", 32, 32),
    "h264.mkv": ("libx264", "matroska", "yuv420p", 32, 32),
    "h264.mov": ("libx264", "mov", "yuv420p", 32, 32),
    "h264.avi": ("libx264", "avi", "yuv420p", 32, 32),
    "h264-10bit.mp4": ("libx264", "mp4", "yuv420p10le", 32, 32),
    "h264-odd-444.mp4": ("libx264", "mp4", "yuv444p", 17, 33),
    "hevc.mp4": ("libx265", "mp4", "yuv420p", 32, 32),
    "hevc-10bit.mkv": ("libx265", "matroska", "yuv420p10le", 32, 32),
    "vp8.webm": ("libvpx", "webm", "yuv420p", 32, 32),
    "vp9.webm": ("libvpx-vp9", "webm", "yuv420p", 32, 32),
    "av1-aom.mkv": ("libaom-av1", "matroska", "yuv420p", 64, 64),
    "av1-svt.mp4": ("libsvtav1", "mp4", "yuv420p", 64, 64),  # SVT-AV1 needs >= 64 px
    "av1-svt.mkv": ("libsvtav1", "matroska", "yuv420p", 64, 64),
    "mjpeg.avi": ("mjpeg", "avi", "yuvj420p", 32, 32),
    "mjpeg-odd.mov": ("mjpeg", "mov", "yuvj444p", 17, 33),
    "ffv1.mkv": ("ffv1", "matroska", "yuv420p", 32, 32),
    "ffv1-odd.mkv": ("ffv1", "matroska", "yuv444p", 17, 33),
    "ffv1-10bit.mkv": ("ffv1", "matroska", "yuv420p10le", 32, 32),
    "mpeg4.avi": ("mpeg4", "avi", "yuv420p", 32, 32),
    "mpeg4.mp4": ("mpeg4", "mp4", "yuv420p", 32, 32),
    "prores.mov": ("prores", "mov", "yuv422p10le", 32, 32),
}
# Broken files and what the one error line names.
BROKEN = {
    "zero-bytes.mp4": "not a readable video file",
    "random-bytes.mp4": "not a readable video file",
    "truncated.mp4": "not a readable video file",
    "audio-only.m4a": "has no video stream",
    "short-0.2s.mp4": "0.2 s long",
}


def _frame(i: int, w: int, h: int) -> av.VideoFrame:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (40 * i % 256, 200, 60)  # a block whose colour changes every frame
    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
    frame.pts = i
    return frame


def write_video(path: Path, codec: str, fmt: str, pix_fmt: str, width: int, height: int, *,
                seconds: float = SECONDS, fps: int = FPS, audio: bool = False, second_video: bool = False) -> Path:
    with av.open(str(path), "w", format=fmt) as container:
        streams = []
        for _ in range(2 if second_video else 1):
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            if codec in ("libx264", "libx265"):
                stream.options = {"threads": "1"}
            streams.append(stream)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(round(seconds * fps)):
            for stream in streams:
                for packet in stream.encode(_frame(i, width, height)):
                    container.mux(packet)
        if sound is not None:
            for i in range(round(seconds * 16000 / 1024)):
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, i * 1024
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                container.mux(packet)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """``{"good": {name: path}, "broken": {name: path}, "skipped": {name: why}}``."""
    d = tmp_path_factory.mktemp("corpus")
    good, skipped = {}, {}
    for name, (codec, fmt, pix_fmt, w, h) in CODECS.items():
        if codec not in av.codecs_available:
            skipped[name] = f"{codec} is not in this PyAV build"
            continue
        good[name] = write_video(d / name, codec, fmt, pix_fmt, w, h)
    good["h264+aac.mp4"] = write_video(d / "h264+aac.mp4", "libx264", "mp4", "yuv420p", 32, 32, audio=True)
    good["two-video-streams.mkv"] = write_video(d / "two-video-streams.mkv", "libx264", "matroska", "yuv420p",
                                                32, 32, second_video=True)
    broken = {"zero-bytes.mp4": d / "zero-bytes.mp4", "random-bytes.mp4": d / "random-bytes.mp4",
              "truncated.mp4": d / "truncated.mp4"}
    broken["zero-bytes.mp4"].write_bytes(b"")
    broken["random-bytes.mp4"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    whole = (d / "h264.mp4").read_bytes()
    broken["truncated.mp4"].write_bytes(whole[: len(whole) // 2])  # mp4 keeps its index (moov) at the end
    broken["audio-only.m4a"] = write_audio_only(d / "audio-only.m4a")
    broken["short-0.2s.mp4"] = write_video(d / "short-0.2s.mp4", "libx264", "mp4", "yuv420p", 32, 32, seconds=0.2,
                                           fps=10)
    print("corpus:", sorted(good), "broken:", sorted(broken), "skipped:", skipped)
    return {"good": good, "broken": broken, "skipped": skipped, "dir": d}


def test_the_corpus_covers_the_codecs_and_containers_pyav_writes_here(corpus):
    skipped = set(corpus["skipped"])
    assert skipped <= {"av1-aom.mkv"}, corpus["skipped"]  # libaom is optional; SVT-AV1 covers AV1
    containers = {p.suffix for p in corpus["good"].values()}
    assert containers == {".mp4", ".mkv", ".mov", ".avi", ".webm"}


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not re.match(r"^\d\d:\d\d:\d\d ", line)]


# --------------------------------------------------------------------------------------------
# streampro stream
# --------------------------------------------------------------------------------------------


def test_stream_every_good_video_gives_one_event_per_turn(corpus, tiny_dir, tmp_path, capsys):
    for name, path in corpus["good"].items():
        out = tmp_path / f"{name}.jsonl"
        rc = main(["stream", str(path), "--question", "What changes?", "--model", str(tiny_dir),
                   "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 0, (name, err)
        assert "Traceback" not in err, name
        events = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(events) == int(SECONDS), (name, events)  # one event per 1-fps turn: no frame lost


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_stream_a_broken_video_is_one_error_line(corpus, name, capsys):
    # --model points nowhere: the video is checked before a model would load.
    rc = main(["stream", str(corpus["broken"][name]), "--question", "q", "--model", "/nonexistent-model"])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("streampro stream: error: ") and name in lines[0] and BROKEN[name] in lines[0], lines


def test_a_ten_minute_clip_streams_to_the_end(tmp_path, tiny_dir, capsys):
    """600 s at 16x16 px, sampled at 0.02 fps: 12 turns to the last frame (the Space's 600 s limit included)."""
    from space.backend import Limits, validate_video

    long_clip = write_video(tmp_path / "long.mkv", "libx264", "matroska", "yuv420p", 16, 16, seconds=600, fps=1)
    assert validate_video(long_clip, Limits()).duration == pytest.approx(600)
    with pytest.raises(ValueError, match=r"long\.mkv lasts 600 s, over the 599 s limit"):
        validate_video(long_clip, Limits(max_duration_s=599))
    out = tmp_path / "events.jsonl"
    rc = main(["stream", str(long_clip), "--question", "q", "--model", str(tiny_dir), "--max-new-tokens", "1",
               "--fps", "0.02", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert out.read_bytes().count(b"\n") == 12


# --------------------------------------------------------------------------------------------
# streampro evaluate: one run over the whole corpus
# --------------------------------------------------------------------------------------------


def test_evaluate_records_every_broken_video_and_scores_every_good_one(corpus, tiny_dir, tmp_path):
    d = corpus["dir"]
    names = [*corpus["good"], *BROKEN, "missing.mp4"]
    refs = [{"id": name, "task": "OU", "question": "Tell me when the block changes colour.", "question_time": 0.0,
             "video": name, "duration": SECONDS, "answers": [{"text": "the block changed", "time": 1.0}]}
            for name in names]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in refs))
    out = tmp_path / "run"
    rc = main(["evaluate", "--model", str(tiny_dir), "--benchmark", str(bench), "--video-root", str(d),
               "--out", str(out), "--max-new-tokens", "2", "--no-progress", "--plot-samples", "0"])
    assert rc == 0
    records = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert list(records) == names  # nothing lost, benchmark order
    for name in corpus["good"]:
        assert records[name]["error"] is None, records[name]
        assert len(records[name]["events"]) == int(SECONDS), name
    for name in BROKEN:
        assert records[name]["error"]["kind"] == "video_error", records[name]
        assert name in records[name]["error"]["message"]
    assert records["missing.mp4"]["error"]["kind"] == "missing_video"
    report = json.loads((out / "report.json").read_text())
    # Errored samples are listed and excluded from the averages, never scored as zeros.
    assert report["errors"]["count"] == len(BROKEN) + 1
    assert report["results"]["num_samples"] == len(corpus["good"])
    assert {e["id"] for e in report["errors"]["samples"]} == {*BROKEN, "missing.mp4"}


# --------------------------------------------------------------------------------------------
# The Space backend
# --------------------------------------------------------------------------------------------


def test_space_backend_streams_good_videos_and_names_broken_ones(corpus, tiny_dir):
    from space import backend

    model, processor = backend.load_model(tiny_dir)
    for name, path in corpus["good"].items():
        if path.suffix not in backend.ALLOWED_FORMATS:
            with pytest.raises(ValueError, match=rf"{re.escape(name)}: format .* is not supported"):
                backend.validate_video(path)
            continue
        view, events = backend.stream_video(model, processor, path, "What changes?",
                                            options=backend.StreamOptions(max_new_tokens=2))
        assert len(list(events)) == int(SECONDS), name
    for name, what in BROKEN.items():
        path = corpus["broken"][name]
        with pytest.raises(ValueError) as info:
            backend.validate_video(path)
        message = str(info.value)
        assert name in message, message
        if path.suffix in backend.ALLOWED_FORMATS:
            assert ("shorter than one" in message) if name.startswith("short") else (what in message), message


# --------------------------------------------------------------------------------------------
# A misbehaving judge endpoint
# --------------------------------------------------------------------------------------------

KEY = "sk-reliability-0123456789abcdef"
GOOD_REPLY = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                    "content": '{"explanation": "ok", "score": 5}'}}]}


def _http(status: int, body: bytes, headers: dict | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _reply_with_score(score: str) -> bytes:
    content = '{"explanation": "ok", "score": ' + score + "}"
    return _http(200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
                 .encode())


class MisbehavingJudge(RawSocketServer):
    """A raw-socket OpenAI-compatible endpoint on loopback; ``mode`` picks how it answers a request whose
    prompt holds ``BAD``; every other request gets a valid score of 5."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.requests: list[bytes] = []


    def _read_request(self, conn) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    def _answer(self, conn):
        with conn:
            try:
                request = self._read_request(conn)
                self.requests.append(request)
                if b"BAD" not in request:
                    conn.sendall(_http(200, json.dumps(GOOD_REPLY).encode()))
                    return
                mode = self.mode
                if mode == "slow":
                    self.stop.wait(30)
                    return
                if mode == "trickle":
                    for byte in _http(200, json.dumps(GOOD_REPLY).encode()):
                        if self.stop.wait(0.05):
                            return
                        conn.sendall(bytes([byte]))
                    return
                replies = {
                    "429": _http(429, b'{"error": "rate limited"}'),
                    "429-retry-after": _http(429, b'{"error": "rate limited"}', {"Retry-After": "0"}),
                    "500": _http(500, b'{"error": "internal"}'),
                    "503": _http(503, b"<html>upstream down</html>"),
                    "garbage": _http(200, b"\x00\xffnot json at all"),
                    "inf": _reply_with_score("1e999"),
                    "nan": _reply_with_score("NaN"),
                    "echo-key": _http(400, json.dumps({"error": "bad", "echo": request.decode("latin-1")}).encode()),
                }
                conn.sendall(replies[mode])
            except OSError:
                pass  # the client gave up


def _score_files(tmp_path: Path) -> tuple[Path, Path]:
    refs, preds = [], []
    for i, text in enumerate(["a BAD answer", "the red square turned blue", "the red square turned blue"]):
        refs.append({"id": f"s{i}", "task": "OU", "question": "Tell me when the square changes colour.",
                     "question_time": 0.0, "video": f"v{i}.mp4", "duration": 10.0,
                     "answers": [{"text": "the red square turned blue", "time": 4.0}]})
        preds.append({"id": f"s{i}", "predictions": [{"time": 4.0, "text": text}]})
    r, p = tmp_path / "refs.jsonl", tmp_path / "preds.jsonl"
    r.write_text("".join(json.dumps(x) + "\n" for x in refs))
    p.write_text("".join(json.dumps(x) + "\n" for x in preds))
    return r, p


@pytest.mark.parametrize("mode", ["slow", "trickle", "429", "429-retry-after", "500", "503", "garbage", "inf", "nan",
                                  "echo-key"])
def test_a_misbehaving_judge_is_a_counted_failure_and_the_key_stays_secret(mode, tmp_path, monkeypatch, capsys,
                                                                           caplog):
    monkeypatch.setenv("RELIABILITY_JUDGE_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    refs, preds = _score_files(tmp_path)
    report_path = tmp_path / "report.json"
    with MisbehavingJudge(mode) as server:
        start = time.perf_counter()
        rc = main(["score", "--predictions", str(preds), "--references", str(refs), "--judge", "llm",
                   "--judge-base-url", server.base_url, "--judge-model", "judge",
                   "--judge-api-key-env", "RELIABILITY_JUDGE_KEY", "--judge-cache", str(tmp_path / "cache.sqlite"),
                   "--judge-timeout", "1", "--judge-retries", "1", "--out", str(report_path)])
        elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    assert any(KEY.encode() in r for r in server.requests)  # the key was sent
    for where, text in (("stdout", captured.out), ("stderr", captured.err), ("log", caplog.text),
                        ("report", report_path.read_text() if report_path.exists() else ""),
                        ("cache", (tmp_path / "cache.sqlite").read_bytes().decode("latin-1")
                         if (tmp_path / "cache.sqlite").exists() else "")):
        assert KEY not in text, f"the API key reached the {where}"
    assert "Traceback" not in captured.err
    assert elapsed < 20, f"--judge-timeout 1 did not bound the run ({elapsed:.0f} s)"
    assert rc == 0, captured.err
    report = json.loads(report_path.read_text())
    results = report["results"] if "results" in report else report
    # The faulty pair's sample is excluded and counted, never scored as 0; the others are scored.
    assert results["excluded_samples"] == 1, results
    assert results["num_samples"] == 2, results
    assert results["OU_f1"] > 0
