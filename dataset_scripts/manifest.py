"""Data folders that are whole or refused: a manifest with the settings and a completion mark, atomic files.

``streampro data synth`` and ``streampro data build`` write ``OUT/manifest.json``::

    {"command": "data synth", "settings": {"n": 140, "seed": 0, ...}, "complete": false}

before the first data file and set ``"complete": true`` once every file is in place. Every
file goes to a temporary name beside its target and replaces it when whole (:func:`write_atomic`,
:func:`streampro.jsonl.write_jsonl`), so a kill leaves old files or new ones, never half of one.

A second run into the same folder (:func:`begin`):

- same command and settings: it resumes (an interrupted run) or re-checks (a complete one); the
  outputs are deterministic, so the result is the files of one uninterrupted run;
- other settings, or data files without a manifest: refused (:class:`~streampro.errors.UserError`)
  rather than mixing two datasets in one folder.

Readers call :func:`check_complete` on the folder of a file they are given; ``streampro evaluate``
does for its benchmark, so a benchmark from an interrupted ``data synth`` is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from streampro.errors import UserError

MANIFEST = "manifest.json"


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then move it into place.

    A kill leaves ``path`` as it was (or absent) and at most a ``.NAME.PID.tmp`` file, which
    :func:`remove_stale_temporaries` deletes on the next run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")  # keeps the suffix (the muxer reads it)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files a killed writer left in ``folder`` (not recursive); return how many.

    They are named ``.NAME.PID.tmp[.EXT]`` by :func:`write_atomic` and :func:`streampro.jsonl.write_jsonl`;
    one whose process is still alive is left alone.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.glob(".*.tmp*"):
        parts = p.name.split(".")
        pid = next((int(x) for x in reversed(parts) if x.isdigit()), None)
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The folder's manifest, or ``None`` when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a manifest written by streampro (invalid JSON)",
                        "delete the folder and run the command again") from None
    if not isinstance(manifest, dict) or "command" not in manifest or "settings" not in manifest:
        raise UserError(f"{path}: not a manifest written by streampro", "pass another --out folder")
    return manifest


def _write(folder: Path, command: str, settings: dict, complete: bool) -> None:
    body = {"command": command, "settings": settings, "complete": complete}
    write_text_atomic(folder / MANIFEST, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _describe(settings: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def begin(folder: str | os.PathLike, command: str, settings: dict, *, data_entries: tuple[str, ...],
          compare: Callable[[dict, dict], list[str]] | None = None) -> dict | None:
    """Check that ``folder`` may receive a run of ``command`` with ``settings``; mark it in progress.

    Returns the previous manifest (``None`` for a new folder). ``data_entries`` are the names
    the command writes into the folder: any of them without a manifest means files of an unknown
    run, and the folder is refused. ``compare(old, new)`` lists the settings that must agree
    (default: all of them); a difference is refused. A complete folder stays marked complete
    (a same-settings re-run rewrites the same bytes).
    """
    folder = Path(folder)
    old = read_manifest(folder)
    if old is None:
        present = sorted(name for name in data_entries if (folder / name).exists())
        if present:
            raise UserError(
                f"{folder} holds {', '.join(present)} but no {MANIFEST}: files of an interrupted run or of "
                "an older version, which this run must not mix with its own",
                "pass a new --out folder, or delete this one to start over",
            )
    elif old["command"] != command:
        raise UserError(f"{folder} holds the output of `streampro {old['command']}`, not of `streampro {command}`",
                        "pass a new --out folder")
    else:
        differ = compare(old["settings"], settings) if compare else sorted(
            k for k in set(old["settings"]) | set(settings) if old["settings"].get(k) != settings.get(k))
        if differ:
            state = "a complete" if old.get("complete") else "an interrupted"
            was = _describe({k: old["settings"].get(k) for k in differ})
            now = _describe({k: settings.get(k) for k in differ})
            raise UserError(
                f"{folder} holds {state} `streampro {command}` run with {was}, not {now}",
                "pass a new --out folder, run the command again with the folder's settings, "
                "or delete the folder to start over",
            )
    folder.mkdir(parents=True, exist_ok=True)
    if old is None or not old.get("complete"):
        _write(folder, command, settings, complete=False)
    return old


def finish(folder: str | os.PathLike, command: str, settings: dict) -> None:
    """Mark ``folder`` complete: every file of the run is in place."""
    _write(Path(folder), command, settings, complete=True)


def check_complete(path: str | os.PathLike) -> None:
    """Refuse a file inside a data folder whose manifest says the run did not finish.

    Looks for ``manifest.json`` beside ``path`` and one folder up (Synth's ``OUT/bench/test.jsonl``).
    Files in folders without a manifest (hand-made or converted data), or with another tool's, pass.
    """
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        try:
            manifest = read_manifest(folder)
        except UserError:
            continue  # another tool's manifest.json: not a folder of ours
        if manifest is None:
            continue
        if not manifest.get("complete"):
            raise UserError(
                f"{path} is part of {folder}, written by an interrupted `streampro {manifest['command']}` run "
                f"({folder / MANIFEST} has no completion mark): its files may be missing or from another run",
                f"run `streampro {manifest['command']}` with the same settings again to finish it "
                f"({_describe(manifest['settings'])})",
            )
        return
