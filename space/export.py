"""Assemble a folder ready to upload as a Hugging Face Space (``streampro space --export --out DIR``).

A Space installs ``requirements.txt`` *before* it copies the repository, so it cannot install
this project from its own files; instead the folder carries the ``streampro`` packages the app
imports (core, model code, metric, space) next to ``app.py``, where Python finds them first.
The embedded tiny model under ``streampro/assets`` travels with the core package.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

# The sub-packages the app imports (streampro.backbones / video / loading are in the core package).
SPACE_PACKAGES = ("modeling_streampro", "metrics", "space")
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def _package_dir(name: str) -> Path:
    return Path(importlib.import_module(name).__path__[0])


def export_space(out_dir: str | Path) -> Path:
    """Write app.py, README.md, requirements.txt and ``streampro/`` into ``out_dir`` (must not exist)."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; pass a new directory (the export never overwrites)")
    space_dir = _package_dir("streampro.space")
    target = out / "streampro"
    shutil.copytree(_package_dir("streampro"), target, ignore=_IGNORE)
    for name in SPACE_PACKAGES:
        # In an installed wheel these already sit inside streampro/; in a source checkout they are
        # top-level folders mapped into the namespace by pyproject.toml.
        if not (target / name).exists():
            shutil.copytree(_package_dir(f"streampro.{name}"), target / name, ignore=_IGNORE)
    for name in SPACE_FILES:
        shutil.copy2(space_dir / name, out / name)
    logger.info("wrote the Space to %s; upload it with `hf upload OWNER/NAME %s . --repo-type space`", out, out)
    return out
