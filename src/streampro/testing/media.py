"""Small inputs the tests and benchmarks build in-process: random frames, a saved tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def random_frames(n: int, size: int = 112, seed: int = 0) -> list[Image.Image]:
    """``n`` RGB frames of uniform noise: distinct inputs whose content no model can predict."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def save_tiny_checkpoint(directory: str | Path, backbone: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """A tiny StreamPro checkpoint on disk; 56*56..112*112 px frames give a few vision tokens per turn."""
    from streampro.backbones import build_tiny_backbone

    directory = Path(directory)
    tb = build_tiny_backbone(backbone, seed=seed, streampro=True, min_pixels=56 * 56, max_pixels=112 * 112)
    tb.model.save_pretrained(directory)
    tb.processor.save_pretrained(directory)
    return directory


def write_audio_only(path: str | Path, seconds: float = 1.28) -> Path:
    """A file with one AAC audio stream and no video stream (16 kHz silence), e.g. ``speech.m4a``."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(round(seconds * 16000 / 1024)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
