"""Files shipped inside the package: the embedded tiny model and the demo clips.

``streampro-tiny-synth/`` is the default model (:data:`streampro.loading.EMBEDDED_MODEL_DIR`);
``demo/`` holds a few StreamPro-Synth test clips and their references for ``streampro demo``.
Both are written by ``streampro reproduce --install-assets`` (docs/reproduce.md).
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).parent / "demo"


def demo_references() -> list[dict]:
    """The demo clips' references (StreamPro-F1 format; ``video`` relative to :data:`DEMO_DIR`)."""
    path = DEMO_DIR / "references.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"the demo clips are missing ({path}); they are produced by `streampro reproduce --install-assets` "
            "(docs/reproduce.md) — or stream your own video with `streampro stream VIDEO --question ...`"
        )
    from streampro.jsonl import read_jsonl

    return read_jsonl(path)
