"""Frame sources for streaming: videos, image folders and live iterators, all yielding ``(time, frame)``.

Every source follows the project's time convention, owned by
:mod:`streampro.modeling_streampro.processing_streampro`: frame k (0-based) is the frame *displayed
at* ``t_k = turn_time(k, fps) = (k + 1) / fps`` — for a video, the decoded frame with the largest
presentation time ``<= t_k`` — and a video of duration D gives ``num_turns(D, fps)`` frames
(5.3 s at 1 fps → frames at 1, 2, 3, 4, 5 s). Frames are RGB ``PIL.Image`` objects.

Decoding is lazy and bounded-memory: PyAV streams packets of the *first video stream* of the
container (the lowest stream index; files with several video streams, such as the NASA sample,
are read from that one, deterministically) and keeps one candidate frame at a time. decord is
an optional second backend (``pip install 'streampro[decord]'``).

Errors a user can cause (missing or unreadable file, no video stream, a video shorter than one
turn, a corrupt frame) raise :class:`VideoReadError`, whose message names the file and the fix.
:func:`encode_video` writes small H.264 test / synthetic videos.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from streampro.modeling_streampro.time_streampro import num_turns, turn_time

logger = logging.getLogger(__name__)

# A frame whose presentation time is within this many seconds after t_k still counts as shown at t_k
# (absorbs float error in pts * time_base; far below any real frame interval).
_PTS_EPS = 1e-6
# At the end of a stream the last frame stays on screen (as in a player) for turns up to the header's
# duration, but at most this many native frame intervals, or one turn, past its own start: a longer
# gap means the stream stopped early (a truncated file), which is an error, not a frozen frame.
_HOLD_FRAMES = 2.0

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -map 0:v:0 -c:v libx264 -pix_fmt yuv420p OUT.mp4`"

Frame = tuple[float, Image.Image]


class VideoReadError(RuntimeError):
    """A video, image or live source could not be read; the message names the file and the fix."""


@dataclass(frozen=True)
class VideoInfo:
    """Header facts about the first video stream of a file.

    ``duration`` is the video stream's own duration in seconds (from its header, or from its
    packets when the header has none; never the container's, which also covers audio); ``fps`` is
    the native average frame rate; ``num_frames`` is the frame count the header declares, ``None``
    when it declares none.
    """

    path: str
    duration: float
    fps: float
    width: int
    height: int
    num_frames: int | None


# --------------------------------------------------------------------------------------------
# Helpers shared by all sources
# --------------------------------------------------------------------------------------------


def _check_fps(fps: float) -> None:
    if not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and (not isinstance(max_frames, numbers.Integral) or max_frames < 1):
        raise ValueError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoReadError(f"{p}: no such file; check the path (relative paths start at {Path.cwd()})")
    if p.is_dir():
        raise VideoReadError(
            f"{p}: is a directory, not a video file; pass a video file, or read a folder of frames "
            "with iter_image_dir()"
        )
    return p


def _fit_max_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (never upscale) so that width * height <= max_pixels, keeping the aspect ratio."""
    if max_pixels is None:
        return image
    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    new_w, new_h = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


def _open_container(p: Path):
    try:
        return av.open(str(p), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoReadError(
            f"{p}: not a readable video file ({exc}); check that the file is complete (not truncated) "
            f"and is a video, or {_REENCODE_HINT}"
        ) from exc


def _first_video_stream(container, p: Path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoReadError(
            f"{p}: has no video stream (streams found: {', '.join(kinds)}); pass a file that contains video"
        )
    # streams.video is in stream-index order: the first video stream, deterministically.
    return container.streams.video[0]


def _stream_facts(stream) -> tuple[float | None, float, int, int, int | None, float]:
    """(header duration or None, native fps, width, height, header frame count or None, start time).

    Only the video stream's own header counts: a container duration also covers audio and
    subtitles, so it is never taken as the video's.
    """
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    duration = float(stream.duration * tb) if stream.duration else None
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    native_fps = float(rate) if rate else 0.0
    ctx = stream.codec_context
    return duration, native_fps, int(ctx.width), int(ctx.height), (stream.frames or None), start


def _duration_from_packets(container, stream, start: float) -> float:
    """Video duration when the stream header declares none (MKV/WebM): the end of its last packet.

    Demuxes the video stream's packets (reads the file, decodes nothing).
    """
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.size:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base) - start)
    return end


def _has_packet(container, stream) -> bool:
    """Whether the stream holds any data (stops at its first packet)."""
    return any(packet.size for packet in container.demux(stream))


def probe_video(path: str | os.PathLike, backend: str = "pyav") -> VideoInfo:
    """Read the header facts of ``path``'s first video stream without decoding frames.

    ``duration`` is the video stream's own duration; when its header has none (MKV, WebM) the
    packets are scanned. Raises :class:`VideoReadError` for a missing, unreadable or video-less
    file and for a video stream without frames.
    """
    if backend not in ("pyav", "decord"):
        raise ValueError(f"backend must be 'pyav' or 'decord', got {backend!r}")
    p = _check_file(path)
    if backend == "decord":
        return _decord_reader(p)[1]
    with _open_container(p) as container:
        stream = _first_video_stream(container, p)
        duration, native_fps, width, height, n, start = _stream_facts(stream)
        if duration is None:
            duration = _duration_from_packets(container, stream, start)
        elif not _has_packet(container, stream):
            duration = 0.0  # Matroska gives an empty video stream the file's duration
    if duration <= 0 or n == 0 or width <= 0 or height <= 0:
        raise VideoReadError(f"{p}: the video stream has no frames; pass a non-empty video")
    return VideoInfo(str(p), duration, native_fps, width, height, n)


# --------------------------------------------------------------------------------------------
# PyAV backend
# --------------------------------------------------------------------------------------------


def _too_short_error(p: Path, duration: float, fps: float) -> VideoReadError:
    return VideoReadError(
        f"{p}: the video is {duration:g} s long, shorter than one turn (1/fps = {1 / fps:g} s at "
        f"fps={fps:g}), so no frame would be sampled; pass a longer video or a higher fps"
    )


def _decode_timed(container, stream, p: Path, start: float) -> Iterator[tuple[float, float, Any]]:
    """Yield ``(start time, duration, av.VideoFrame)`` of each decoded frame; raise on any corrupt one."""
    last_good: float | None = None
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                raise VideoReadError(
                    f"{p}: a frame after {last_good or 0:.3f} s has no presentation time; {_REENCODE_HINT}"
                )
            t = float(frame.pts * frame.time_base) - start
            if frame.is_corrupt:
                raise VideoReadError(
                    f"{p}: the frame at {t:.3f} s is corrupt; repair the file or {_REENCODE_HINT}"
                )
            last_good = t
            yield t, float(frame.duration * frame.time_base) if frame.duration else 0.0, frame
    except av.FFmpegError as exc:
        where = f"after the frame at {last_good:.3f} s" if last_good is not None else "at the first frame"
        raise VideoReadError(
            f"{p}: decoding failed {where} ({exc}); the file is corrupt or truncated; repair the file or "
            f"{_REENCODE_HINT}"
        ) from exc


def _open_pyav(p: Path, fps: float):
    """Open ``p`` and check its header, so that iter_video_frames() fails at the call, not later."""
    container = _open_container(p)
    try:
        stream = _first_video_stream(container, p)
        header_duration = _stream_facts(stream)[0]
        if header_duration is not None and num_turns(header_duration, fps) == 0:
            raise _too_short_error(p, header_duration, fps)
    except BaseException:
        container.close()
        raise
    return container, stream


def _iter_pyav(
    container, stream, p: Path, fps: float, max_frames: int | None, max_pixels: int | None
) -> Iterator[Frame]:
    decoded = None
    try:
        header_duration, native_fps, _, _, _, start = _stream_facts(stream)
        stream.thread_type = "AUTO"  # frame/slice threads: same frames, faster
        # Turns the header promises; None when it declares no duration (decided at the end of the stream).
        header_turns = num_turns(header_duration, fps) if header_duration is not None else None

        def done(k: int) -> bool:
            return (header_turns is not None and k >= header_turns) or (
                max_frames is not None and k >= max_frames
            )

        k = 0  # next turn to yield
        last: tuple[float, float, Any] | None = None  # the candidate: latest frame with time <= t_k
        decoded = _decode_timed(container, stream, p, start)
        for t, dur, frame in decoded:
            if last is None and t > turn_time(0, fps) + _PTS_EPS:
                raise VideoReadError(
                    f"{p}: the first video frame starts at {t:.3f} s, after the first turn time "
                    f"{turn_time(0, fps):g} s, so nothing is shown then; {_REENCODE_HINT}"
                )
            # A frame later than t_k means the candidate is the frame shown at t_k.
            while last is not None and t > turn_time(k, fps) + _PTS_EPS:
                if done(k):
                    return
                yield turn_time(k, fps), _fit_max_pixels(last[2].to_image(), max_pixels)
                k += 1
            if done(k):
                return
            last = (t, dur, frame)
        if last is None:
            raise VideoReadError(f"{p}: the video stream has no decodable frames; pass a non-empty video")

        # End of stream: the last frame stays on screen until the end of the video.
        t_last, dur_last, frame = last
        interval = dur_last or (1.0 / native_fps if native_fps > 0 else 0.0)
        end = t_last + interval
        total = header_turns if header_turns is not None else num_turns(end, fps)
        if total == 0:
            raise _too_short_error(p, end, fps)
        limit = total if max_frames is None else min(total, max_frames)
        image = None
        while k < limit:
            t_k = turn_time(k, fps)
            if t_k > t_last + max(_HOLD_FRAMES * interval, 1.0 / fps) + _PTS_EPS:
                raise VideoReadError(
                    f"{p}: the video stream ends at {end:.3f} s but its header declares "
                    f"{header_duration:.3f} s, so no frame is shown at {t_k:g} s; the file is probably "
                    f"truncated; {_REENCODE_HINT}"
                )
            if image is None:
                image = _fit_max_pixels(frame.to_image(), max_pixels)
            yield t_k, image.copy()
            k += 1
    finally:
        if decoded is not None:
            decoded.close()  # before the container it reads from
        container.close()


# --------------------------------------------------------------------------------------------
# decord backend (optional)
# --------------------------------------------------------------------------------------------


def _require_decord():
    """Import decord, or say which extra installs it."""
    try:
        import decord
    except ImportError as exc:
        raise ImportError(
            "The decord video backend needs the decord package: pip install 'streampro[decord]' "
            "(or use backend='pyav')"
        ) from exc
    return decord


def _decord_reader(p: Path):
    decord = _require_decord()
    # decord reads the container's "best" video stream, which is not always the first one: refuse
    # files where the two differ rather than silently read another stream than the PyAV backend.
    info = probe_video(p, backend="pyav")
    try:
        reader = decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=0)
    except decord.DECORDError as exc:
        raise VideoReadError(f"{p}: decord cannot read this video ({exc}); use backend='pyav'") from exc
    h, w = reader[0].shape[:2] if len(reader) else (0, 0)  # probe_video() has checked there are frames
    if (w, h) != (info.width, info.height) or (
        info.num_frames is not None and len(reader) != info.num_frames
    ):
        raise VideoReadError(
            f"{p}: decord reads a different video stream ({w}x{h}, {len(reader)} frames) than the first "
            f"video stream ({info.width}x{info.height}, {info.num_frames} frames); use backend='pyav'"
        )
    return reader, info


def _iter_decord(
    reader, info: VideoInfo, p: Path, fps: float, max_frames: int | None, max_pixels: int | None
) -> Iterator[Frame]:
    starts = reader.get_frame_timestamp(range(len(reader)))[:, 0]  # (n,) presentation start per frame
    total = num_turns(info.duration, fps)
    if max_frames is not None:
        total = min(total, max_frames)
    for k in range(total):
        t_k = turn_time(k, fps)
        idx = int(np.searchsorted(starts, t_k + _PTS_EPS, side="right")) - 1
        if idx < 0:
            raise VideoReadError(
                f"{p}: the first video frame starts at {starts[0]:.3f} s, after the first turn time "
                f"{t_k:g} s; {_REENCODE_HINT}"
            )
        image = Image.fromarray(reader[idx].asnumpy())
        yield t_k, _fit_max_pixels(image, max_pixels)


# --------------------------------------------------------------------------------------------
# Public frame sources
# --------------------------------------------------------------------------------------------


def iter_video_frames(
    path: str | os.PathLike,
    fps: float = 1.0,
    *,
    backend: str = "pyav",
    max_frames: int | None = None,
    max_pixels: int | None = None,
) -> Iterator[Frame]:
    """Yield ``(turn_time(k, fps), RGB frame displayed at that time)`` for k = 0, 1, ... lazily.

    A video of duration D gives ``num_turns(D, fps)`` frames; ``max_frames`` stops after that many
    turns; ``max_pixels`` downscales each frame to at most that many pixels, keeping the aspect
    ratio. Raises :class:`VideoReadError` for unreadable input, a video shorter than ``1 / fps``,
    or a corrupt frame (never skipped).
    """
    _check_fps(fps)
    _check_max_frames(max_frames)
    if backend not in ("pyav", "decord"):
        raise ValueError(f"backend must be 'pyav' or 'decord', got {backend!r}")
    p = _check_file(path)
    if backend == "decord":
        reader, info = _decord_reader(p)
        if num_turns(info.duration, fps) == 0:
            raise _too_short_error(p, info.duration, fps)
        return _iter_decord(reader, info, p, fps, max_frames, max_pixels)
    container, stream = _open_pyav(p, fps)
    return _iter_pyav(container, stream, p, fps, max_frames, max_pixels)


def _natural_key(name: str) -> list:
    """``frame2.png`` before ``frame10.png``: digits compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def iter_image_dir(directory: str | os.PathLike, fps: float = 1.0) -> Iterator[Frame]:
    """Yield the images of ``directory`` in natural filename order, image k at ``turn_time(k, fps)``.

    Only files with an image extension (``IMAGE_EXTENSIONS``) and no leading dot are frames, so a
    notes or annotation file beside them is not an error; an image that cannot be read is.
    """
    _check_fps(fps)
    d = Path(directory)
    if not d.exists():
        raise VideoReadError(f"{d}: no such directory; check the path")
    if not d.is_dir():
        raise VideoReadError(
            f"{d}: is a file, not a directory of frames; read videos with iter_video_frames()"
        )
    files = sorted(
        (f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")),
        key=lambda f: _natural_key(f.name),
    )
    if not files:
        raise VideoReadError(
            f"{d}: contains no image files ({', '.join(IMAGE_EXTENSIONS)}); pass a folder of frames"
        )
    return _iter_image_files(files, fps)


def _iter_image_files(files: list[Path], fps: float) -> Iterator[Frame]:
    for k, f in enumerate(files):
        try:
            with Image.open(f) as im:
                image = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise VideoReadError(f"{f}: cannot read this image ({exc}); replace or remove it") from exc
        yield turn_time(k, fps), image


def _to_rgb_image(item: Any, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            return Image.fromarray(item, mode="RGB")
        raise VideoReadError(
            f"live frame {index}: expected a HxWx3 uint8 RGB array, got shape {item.shape} dtype "
            f"{item.dtype}; convert it (e.g. frame[..., :3].astype(np.uint8))"
        )
    raise VideoReadError(
        f"live frame {index}: expected a PIL image or a HxWx3 uint8 numpy array, got {type(item).__name__}"
    )


def iter_live_frames(source: Iterable, fps: float = 1.0) -> Iterator[Frame]:
    """Turn a live stream (a webcam) into ``(turn_time(k, fps), RGB frame)``: item k is turn k.

    The source must deliver one frame per turn (it is the caller's sampler: e.g. a webcam callback
    called every ``1 / fps`` s). Items are PIL images or HxWx3 uint8 RGB arrays; times come from
    the turn counter, not the wall clock, so replaying the same frames gives the same stream.
    """
    _check_fps(fps)
    for k, item in enumerate(source):
        yield turn_time(k, fps), _to_rgb_image(item, k)


class LiveFrameQueue:
    """A thread-safe bridge from a frame callback (webcam thread) to :func:`iter_live_frames`.

    The producer calls :meth:`put` once per turn and :meth:`close` at the end; the consumer
    iterates (``iter_live_frames(queue, fps)``), blocking until the next frame arrives. ``maxsize``
    bounds memory: ``put`` blocks (up to ``timeout``) while the consumer is that far behind.
    """

    _CLOSED = object()

    def __init__(self, maxsize: int = 64):
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()

    def put(self, frame: Image.Image | np.ndarray, timeout: float | None = None) -> None:
        """Add one frame; raises RuntimeError after close() and queue.Full after ``timeout`` s."""
        if self._closed.is_set():
            raise RuntimeError("LiveFrameQueue.put() after close(): start a new queue for a new stream")
        self._queue.put(frame, timeout=timeout)

    def close(self) -> None:
        """End the stream: the consumer stops after the frames already queued. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(self._CLOSED)

    def __iter__(self) -> Iterator[Image.Image | np.ndarray]:
        while True:
            item = self._queue.get()
            if item is self._CLOSED:
                return
            yield item


def load_frames(path: str | os.PathLike, fps: float = 1.0, **kwargs) -> list[Frame]:
    """All ``(time, frame)`` pairs of a video file or an image directory, as a list.

    Keyword options are those of :func:`iter_video_frames`; an image directory takes
    ``max_frames`` and ``max_pixels``. Memory grows with the frame count: pass ``max_frames`` to
    bound it, or stream with the ``iter_*`` functions instead.
    """
    if not Path(path).is_dir():
        return list(iter_video_frames(path, fps, **kwargs))
    max_frames = kwargs.pop("max_frames", None)
    max_pixels = kwargs.pop("max_pixels", None)
    if kwargs:
        raise TypeError(f"load_frames() options {sorted(kwargs)} do not apply to an image directory ({path})")
    _check_max_frames(max_frames)
    frames = itertools.islice(iter_image_dir(path, fps), max_frames)
    return [(t, _fit_max_pixels(image, max_pixels)) for t, image in frames]


# --------------------------------------------------------------------------------------------
# Writing small videos (tests, synthetic data)
# --------------------------------------------------------------------------------------------


def _pick_encoder() -> str:
    try:
        av.Codec("libx264", "w")
        return "libx264"
    except av.codec.codec.UnknownCodecError:
        logger.warning("libx264 is not available in this PyAV build; encoding with the mpeg4 codec instead")
        return "mpeg4"


def encode_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write ``frames`` (HxWx3 uint8 RGB, all the same even size) to an H.264 yuv420p video.

    Frame i gets presentation time exactly ``i / fps``. Uses libx264 (CRF 18, so solid colours
    survive within a few levels); only when this PyAV build lacks libx264 does it fall back to
    mpeg4, and it logs which codec was used. Returns the path.
    """
    _check_fps(fps)
    p = Path(path)
    codec = _pick_encoder()
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(str(p), mode="w") as container:
        stream = None
        for i, arr in enumerate(frames):
            arr = np.asarray(arr)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise ValueError(
                    f"frame {i}: expected HxWx3 uint8 RGB, got shape {arr.shape} dtype {arr.dtype}"
                )
            h, w = arr.shape[:2]
            if stream is None:
                if h % 2 or w % 2:
                    raise ValueError(
                        f"frame {i}: yuv420p needs even width and height, got {w}x{h}; crop or pad"
                    )
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if codec == "libx264":
                    # One thread and x264's cpu-independent mode: byte-identical output. Without the
                    # latter, 3-8 % of encodes of the same frames differed in chroma by 1-2 levels,
                    # depending on what the process had allocated before (see
                    # tests/data/test_synth.py::test_encoding_does_not_depend_on_earlier_allocations).
                    stream.options = {"crf": "18", "preset": "veryfast", "threads": "1",
                                      "x264-params": "cpu-independent=1"}
                    stream.codec_context.thread_count = 1  # PyAV otherwise sets 0 (auto), overriding "threads"
                else:
                    stream.options = {"qscale": "2"}
            elif (h, w) != (stream.height, stream.width):
                raise ValueError(
                    f"frame {i}: size {w}x{h} differs from the first frame's {stream.width}x{stream.height}"
                )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"{p}: no frames to encode; pass at least one frame")
        for packet in stream.encode():
            container.mux(packet)
    logger.debug("wrote %s: %d frames at %g fps with %s", p, count, float(rate), codec)
    return p
