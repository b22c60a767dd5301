"""Tests for streampro.video: frame times follow the turn convention, frames are the ones shown at
those times, and every bad input raises a VideoReadError that names the file."""

from __future__ import annotations

import logging
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from streampro.modeling_streampro.processing_streampro import num_turns, turn_time

from streampro.video import (
    LiveFrameQueue,
    VideoInfo,
    VideoReadError,
    encode_video,
    iter_image_dir,
    iter_live_frames,
    iter_video_frames,
    load_frames,
    probe_video,
)

SHARED_VIDEOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos"

# One solid colour per second of the generated video (second s shows COLORS[s]).
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128)]
# H.264 at CRF 18 keeps a solid colour within a few levels of the source.
COLOR_TOL = 6
# 64x48: the smallest even size that keeps the tests fast and still has a 16x16-macroblock grid.
W, H = 64, 48


def _color_video(path: Path, fps: float = 10.0, seconds: float = 6.5) -> Path:
    n = round(seconds * fps)
    frames = (np.full((H, W, 3), COLORS[int(i / fps)], np.uint8) for i in range(n))
    return encode_video(path, frames, fps)


def _textured_frames(n: int, w: int = 128, h: int = 96) -> list[np.ndarray]:
    """Moving gradients: compressible like real video, so damaged bytes desync the decoder."""
    yy, xx = np.mgrid[0:h, 0:w]
    return [
        np.stack([(xx * 2 + i * 5) % 256, (yy * 2 + i * 3) % 256, (xx + yy + i * 7) % 256], -1).astype(
            np.uint8
        )
        for i in range(n)
    ]


def _assert_color(image: Image.Image, color: tuple[int, int, int]) -> None:
    pixels = np.asarray(image, dtype=int)
    assert np.abs(pixels - np.array(color)).max() <= COLOR_TOL, (pixels.mean(axis=(0, 1)), color)


@pytest.fixture(scope="module")
def color_video(tmp_path_factory) -> Path:
    return _color_video(tmp_path_factory.mktemp("video") / "colors.mp4")


# --------------------------------------------------------------------------------------------
# encode_video + the time convention on generated videos
# --------------------------------------------------------------------------------------------


def test_encode_video_round_trip(color_video):
    info = probe_video(color_video)
    assert info == VideoInfo(str(color_video), 6.5, 10.0, W, H, 65)
    with av.open(str(color_video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    assert times == pytest.approx([i / 10 for i in range(65)])


def test_frame_k_is_the_frame_shown_at_turn_time(color_video):
    frames = list(iter_video_frames(color_video, fps=1.0))
    # 6.5 s at 1 fps: turns at 1..6 s; at exactly k+1 s the frame of second k+1 has just started.
    assert (
        [t for t, _ in frames]
        == [turn_time(k, 1.0) for k in range(num_turns(6.5, 1.0))]
        == [1, 2, 3, 4, 5, 6]
    )
    for k, (_, image) in enumerate(frames):
        assert image.mode == "RGB" and image.size == (W, H)
        _assert_color(image, COLORS[k + 1])


def test_fps_other_than_one(color_video):
    frames = list(iter_video_frames(color_video, fps=2.0))
    assert [t for t, _ in frames] == [turn_time(k, 2.0) for k in range(13)]  # 0.5, 1.0, ..., 6.5
    for t, image in frames:
        _assert_color(image, COLORS[int(t + 1e-9)])


def test_largest_presentation_time_not_after_turn(tmp_path):
    # Native 2.5 fps (frames at 0, 0.4, 0.8, 1.2, ...), frame i has grey level 10 * i: turn times
    # mostly fall between frames, so the shown frame is the latest one that started before.
    n = 15
    path = encode_video(tmp_path / "grey.mp4", (np.full((H, W, 3), 10 * i, np.uint8) for i in range(n)), 2.5)
    frames = list(iter_video_frames(path, fps=1.0))
    assert [t for t, _ in frames] == [1, 2, 3, 4, 5, 6]
    for t, image in frames:
        shown = min(n - 1, int(np.floor(t * 2.5 + 1e-9)))  # t=1 → frame 2 (0.8 s); t=2 → frame 5 (2.0 s)
        _assert_color(image, (10 * shown,) * 3)


def test_times_are_relative_to_the_stream_start(tmp_path):
    # A stream whose first frame has pts 2.0 s (a cut from a longer recording): turn 0 is 1 s in.
    path = tmp_path / "offset.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 5 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 20 + i, Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert probe_video(path).duration == pytest.approx(4.0)
    frames = list(iter_video_frames(path))
    assert [t for t, _ in frames] == [1.0, 2.0, 3.0, 4.0]
    for t, image in frames:
        _assert_color(image, (5 * min(39, round(10 * t)),) * 3)


def test_max_frames_and_max_pixels(color_video):
    frames = list(iter_video_frames(color_video, max_frames=2))
    assert [t for t, _ in frames] == [1, 2]
    small = list(iter_video_frames(SHARED_VIDEOS / "bigbuckbunny.mp4", max_frames=1, max_pixels=224 * 224))
    ((t, image),) = small
    assert t == 1.0
    w, h = image.size
    assert w * h <= 224 * 224 and abs(w / h - 1280 / 720) < 0.02
    # max_pixels above the frame size leaves the frame alone (never upscales).
    ((_, same),) = iter_video_frames(color_video, max_frames=1, max_pixels=10**6)
    assert same.size == (W, H)


def test_iteration_is_lazy(color_video):
    gen = iter_video_frames(color_video)
    t, _ = next(gen)
    assert t == 1.0
    gen.close()  # closing early releases the file; nothing else was decoded into memory


# --------------------------------------------------------------------------------------------
# The shared real videos
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "duration", "turns", "size"),
    [
        ("bigbuckbunny.mp4", 5.28, 5, (1280, 720)),  # 5.3 s → frames at 1..5 s
        ("cockatoo.mp4", 14.0, 14, (1280, 720)),
        ("nasa_13013.mp4", 13.0, 13, (320, 180)),  # first of two video streams (the other is 480x270)
    ],
)
def test_shared_videos(name, duration, turns, size):
    path = SHARED_VIDEOS / name
    info = probe_video(path)
    assert info.duration == pytest.approx(duration, abs=0.01)
    assert (info.width, info.height) == size
    frames = list(iter_video_frames(path, max_pixels=160 * 90 if size[0] > 320 else None))
    assert [t for t, _ in frames] == [turn_time(k) for k in range(turns)]
    assert num_turns(info.duration) == turns


def test_multistream_video_frames_match_a_full_decode():
    # Reference: decode every frame of the first video stream, then pick by the convention.
    path = SHARED_VIDEOS / "nasa_13013.mp4"
    with av.open(str(path)) as container:
        decoded = [
            (float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)
        ]
    frames = list(iter_video_frames(path))
    for t, image in frames:
        expected = [arr for pts, arr in decoded if pts <= t + 1e-6][-1]
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_decord_backend_matches_pyav(color_video):
    pytest.importorskip("decord", reason="decord not installed (pip install 'streampro[decord]')")
    for path in (color_video, SHARED_VIDEOS / "bigbuckbunny.mp4"):
        ours = load_frames(path, fps=2.0)
        theirs = load_frames(path, fps=2.0, backend="decord")
        assert [t for t, _ in ours] == [t for t, _ in theirs]
        for (_, a), (_, b) in zip(ours, theirs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # pixel-identical
    assert probe_video(color_video, backend="decord") == probe_video(color_video)


def test_decord_refuses_a_file_where_it_would_read_another_stream():
    pytest.importorskip("decord", reason="decord not installed (pip install 'streampro[decord]')")
    with pytest.raises(VideoReadError, match=r"nasa_13013\.mp4: decord reads a different video stream"):
        list(iter_video_frames(SHARED_VIDEOS / "nasa_13013.mp4", backend="decord"))


def test_missing_decord_names_the_extra(color_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'streampro\[decord\]'"):
        list(iter_video_frames(color_video, backend="decord"))


# --------------------------------------------------------------------------------------------
# Image directories and live sources
# --------------------------------------------------------------------------------------------


def test_image_dir_natural_order(tmp_path):
    for i, name in [(0, "frame1.png"), (1, "frame2.jpg"), (2, "frame10.png")]:
        Image.new("L", (W, H), color=50 * (i + 1)).save(tmp_path / name)  # grey: converted to RGB
    (tmp_path / "notes.txt").write_text("not a frame")
    Image.new("RGB", (W, H)).save(tmp_path / ".hidden.png")
    frames = list(iter_image_dir(tmp_path, fps=2.0))
    assert [t for t, _ in frames] == [0.5, 1.0, 1.5]
    for i, (_, image) in enumerate(frames):  # frame10 comes after frame2
        assert image.mode == "RGB"
        _assert_color(image, (50 * (i + 1),) * 3)
    loaded = load_frames(tmp_path, max_frames=2, max_pixels=32 * 24)
    assert [(t, image.size) for t, image in loaded] == [(1.0, (32, 24)), (2.0, (32, 24))]
    with pytest.raises(TypeError, match=r"\['backend'\] do not apply to an image directory"):
        load_frames(tmp_path, backend="decord")


def test_image_dir_errors(tmp_path):
    with pytest.raises(VideoReadError, match="no such directory"):
        list(iter_image_dir(tmp_path / "nope"))
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match=r"a\.png: cannot read this image"):
        list(iter_image_dir(tmp_path))
    with pytest.raises(VideoReadError, match=r"a\.png: is a file, not a directory"):
        list(iter_image_dir(tmp_path / "a.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match=r"empty: contains no image files"):
        list(iter_image_dir(empty))


def test_live_frames_accept_pil_and_numpy():
    source = [
        Image.new("RGBA", (W, H), (10, 20, 30, 255)),
        np.full((H, W, 3), 200, np.uint8),
        Image.new("RGB", (W, H), (1, 2, 3)),
    ]
    frames = list(iter_live_frames(source, fps=1.0))
    assert [t for t, _ in frames] == [1.0, 2.0, 3.0]
    assert all(image.mode == "RGB" for _, image in frames)
    assert frames[0][1].getpixel((0, 0)) == (10, 20, 30)
    assert frames[1][1].getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((H, W), np.uint8), np.zeros((H, W, 3), np.float32), "frame.png"],
    ids=["2d", "float", "str"],
)
def test_live_frames_reject_bad_items(bad):
    with pytest.raises(VideoReadError, match="live frame 1: expected"):
        list(iter_live_frames([np.zeros((H, W, 3), np.uint8), bad]))


def test_live_frame_queue_from_a_producer_thread():
    q = LiveFrameQueue(maxsize=2)  # smaller than the stream: put() waits for the consumer

    def produce():
        for i in range(5):
            q.put(np.full((H, W, 3), 40 * i, np.uint8))
        q.close()

    producer = threading.Thread(target=produce)
    producer.start()
    frames = list(iter_live_frames(q, fps=2.0))
    producer.join(timeout=10)
    assert [t for t, _ in frames] == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert [image.getpixel((0, 0))[0] for _, image in frames] == [0, 40, 80, 120, 160]
    with pytest.raises(RuntimeError, match="after close"):
        q.put(np.zeros((H, W, 3), np.uint8))


# --------------------------------------------------------------------------------------------
# Errors: each names the file
# --------------------------------------------------------------------------------------------


def _read(path, **kwargs):
    return list(iter_video_frames(path, **kwargs))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VideoReadError, match=r"nope\.mp4: no such file"):
        _read(tmp_path / "nope.mp4")
    with pytest.raises(VideoReadError, match=r"nope\.mp4: no such file"):
        probe_video(tmp_path / "nope.mp4")
    with pytest.raises(VideoReadError, match="is a directory, not a video file.*iter_image_dir"):
        _read(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"hello, not a video\n", bytes(range(256)) * 40], ids=["empty", "text", "bytes"]
)
def test_unreadable_files(tmp_path, content):
    for name in ("clip.mp4", "notes.txt"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VideoReadError, match=rf"{name}: not a readable video file.*re-encode"):
            _read(path)
        with pytest.raises(VideoReadError, match=rf"{name}: not a readable video file"):
            probe_video(path)


def test_truncated_mp4(tmp_path, color_video):
    # A normal mp4 keeps its index (moov) at the end: cut in half, it does not open at all.
    data = color_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=r"cut\.mp4: not a readable video file"):
        _read(cut)


def test_truncated_faststart_mp4(tmp_path):
    # With the index first (faststart), a cut file opens, and the stream stops before its duration.
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for arr in _textured_frames(60):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    cut = tmp_path / "fastcut.mp4"
    cut.write_bytes(data[: len(data) * 4 // 10])
    assert probe_video(cut).duration == pytest.approx(6.0)  # the header still says 6 s
    with pytest.raises(VideoReadError, match=r"fastcut\.mp4: .*(truncated|corrupt)"):
        _read(cut)


def test_corrupt_frame_mid_stream_raises_with_its_time(tmp_path):
    path = encode_video(tmp_path / "ok.mp4", _textured_frames(40), 10)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2  # inside the frame data (mdat), around 2 s
    data[mid : mid + 500] = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(VideoReadError, match=r"damaged\.mp4: .*frame at \d+\.\d{3} s.*re-encode"):
        _read(bad)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_no_video_stream(tmp_path):
    path = _audio_only(tmp_path / "speech.m4a")
    with pytest.raises(VideoReadError, match=r"speech\.m4a: has no video stream"):
        iter_video_frames(path)  # raised at the call, before iterating
    with pytest.raises(VideoReadError, match=r"speech\.m4a: has no video stream \(streams found: audio\)"):
        _read(path)
    with pytest.raises(VideoReadError, match=r"speech\.m4a: has no video stream"):
        probe_video(path)


def test_video_stream_without_frames(tmp_path):
    # Matroska keeps an empty video track (mp4 drops it) and gives it the file's duration.
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
        container.mux(video.encode())
    with pytest.raises(VideoReadError, match=r"empty\.mkv: the video stream has no (decodable )?frames"):
        probe_video(path)
    with pytest.raises(VideoReadError, match=r"empty\.mkv: the video stream has no (decodable )?frames"):
        _read(path)


def test_video_shorter_than_one_turn(tmp_path):
    path = _color_video(tmp_path / "short.mp4", fps=10, seconds=0.5)
    assert probe_video(path).duration == pytest.approx(0.5)  # probing a short video is fine
    with pytest.raises(VideoReadError, match=r"short\.mp4: the video is 0\.5 s long, shorter than one turn"):
        iter_video_frames(path, fps=1.0)
    assert [t for t, _ in iter_video_frames(path, fps=4.0)] == [0.25, 0.5]  # a higher fps works


@pytest.mark.parametrize("fps", [0, -1.0, float("nan"), float("inf")])
def test_bad_fps(color_video, fps):
    with pytest.raises(ValueError, match="fps must be a finite number > 0"):
        _read(color_video, fps=fps)
    with pytest.raises(ValueError, match="fps must be a finite number > 0"):
        list(iter_live_frames([], fps=fps))


def test_bad_options(color_video):
    with pytest.raises(ValueError, match="backend must be 'pyav' or 'decord'"):
        _read(color_video, backend="opencv")
    with pytest.raises(ValueError, match="max_frames must be None or an integer >= 1"):
        _read(color_video, max_frames=0)


# --------------------------------------------------------------------------------------------
# encode_video
# --------------------------------------------------------------------------------------------


def test_encode_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even width and height, got 63x48"):
        encode_video(tmp_path / "a.mp4", [np.zeros((48, 63, 3), np.uint8)], 1)
    with pytest.raises(ValueError, match="frame 1: size 32x32 differs"):
        encode_video(tmp_path / "b.mp4", [np.zeros((H, W, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)], 1)
    with pytest.raises(ValueError, match="frame 0: expected HxWx3 uint8"):
        encode_video(tmp_path / "c.mp4", [np.zeros((H, W, 3), np.float32)], 1)
    with pytest.raises(ValueError, match="no frames to encode"):
        encode_video(tmp_path / "d.mp4", [], 1)


def test_encode_video_falls_back_to_mpeg4_only_without_libx264(tmp_path, monkeypatch, caplog):
    real_codec = av.Codec

    def codec_without_x264(name, mode="r"):
        if name == "libx264":
            raise av.codec.codec.UnknownCodecError(name)
        return real_codec(name, mode)

    monkeypatch.setattr(av, "Codec", codec_without_x264)
    with caplog.at_level(logging.INFO, logger="streampro.video"):
        path = _color_video(tmp_path / "mpeg4.mp4", fps=10, seconds=2.0)
    assert "mpeg4" in caplog.text
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    frames = list(iter_video_frames(path))
    assert [t for t, _ in frames] == [1.0, 2.0]
    _assert_color(frames[0][1], COLORS[1])
