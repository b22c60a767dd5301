"""Fixtures shared across the test folders (each folder mirrors one package)."""

from __future__ import annotations

import pytest

from streampro.backbones import BACKBONES
from streampro.testing.media import save_tiny_checkpoint


@pytest.fixture(scope="module", params=BACKBONES)
def tiny(request):
    """A tiny in-memory StreamPro model + processor, once per backbone."""
    from streampro.backbones import build_tiny_backbone

    return build_tiny_backbone(request.param, streampro=True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL StreamPro checkpoint saved to disk (read-only: tests must not modify it)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-streampro"))
