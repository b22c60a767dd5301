"""Lazy frames for training: decode an SFT record's frames at training time, with an optional disk cache.

SFT records (``streampro data build sft``) name a video and its number of turns; the frames are
not stored in the dataset. :func:`load_record_frames` decodes exactly ``num_turns`` frames through
:func:`streampro.video.iter_video_frames` (frame k is the one displayed at ``(k + 1) / fps``).
With ``cache_dir``, the decoded frames of a (video file, fps, max_pixels, num_turns) are kept as
one ``.npz`` (uint8, N×H×W×3) keyed by a hash of those values and of the file's size and mtime,
so an edited video is decoded again. :class:`StreamingVideoDataset` wraps a list of records for a
``torch.utils.data.DataLoader``-style loop.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from streampro.video import VideoReadError, iter_video_frames


def resolve_video_path(record: dict, root: str | os.PathLike | None) -> Path:
    """The record's video: absolute paths as they are, relative ones under ``root`` (the dataset dir)."""
    video = Path(record["video"])
    if video.is_absolute() or root is None:
        return video
    return Path(root) / video


def _cache_file(cache_dir: Path, path: Path, fps: float, max_pixels: int | None, n: int) -> Path:
    st = path.stat()
    key = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, fps, max_pixels, n])
    return cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"


def load_record_frames(
    record: dict,
    root: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    max_pixels: int | None = None,
) -> list[Image.Image]:
    """The ``record["num_turns"]`` RGB frames of an SFT record, one per turn.

    Raises :class:`~streampro.video.VideoReadError` when the video is missing, unreadable or
    gives fewer frames than the record has turns (the record's duration is longer than the file).
    """
    path = resolve_video_path(record, root)
    n, fps = int(record["num_turns"]), float(record["fps"])
    if not path.is_file():
        raise VideoReadError(
            f"record {record.get('id')!r}: video {path} not found; pass the dataset folder as root "
            "(relative video paths start there)"
        )
    cache = None
    if cache_dir is not None:
        cache = _cache_file(Path(cache_dir), path, fps, max_pixels, n)
        if cache.is_file():
            with np.load(cache) as data:
                return [Image.fromarray(a) for a in data["frames"]]
    frames = [im for _, im in iter_video_frames(path, fps, max_frames=n, max_pixels=max_pixels)]
    if len(frames) != n:
        raise VideoReadError(
            f"record {record.get('id')!r}: {path} gives {len(frames)} frames at {fps:g} fps but the record "
            f"has {n} turns (duration {record.get('duration')} s); rebuild the record with the video's "
            "real duration (`streampro data convert ... --video-root DIR` probes it)"
        )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, frames=np.stack([np.asarray(im) for im in frames]))
        os.replace(tmp, cache)  # atomic: concurrent workers never read half a file
    return frames


class StreamingVideoDataset:
    """SFT records with their frames decoded on access: ``ds[i] -> (record, [PIL frames])``."""

    def __init__(self, records: list[dict], root: str | os.PathLike | None,
                 cache_dir: str | os.PathLike | None = None, max_pixels: int | None = None):
        self.records, self.root, self.cache_dir, self.max_pixels = records, root, cache_dir, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[dict, list[Image.Image]]:
        record = self.records[i]
        return record, load_record_frames(record, self.root, self.cache_dir, self.max_pixels)
