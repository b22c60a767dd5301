"""JSON Lines files: one reader that names ``file:line`` (and the column) in every error, one atomic writer.

A JSONL file holds one JSON value per line; blank lines are skipped. Every file the project reads
or writes in this format (raw samples, SFT / RL records, references, predictions, rubrics) goes
through :func:`iter_jsonl` / :func:`read_jsonl` and :func:`write_jsonl`.

Errors are :class:`streampro.errors.UserError`::

    refs.jsonl:12: invalid JSON (Expecting ',' delimiter at column 39) — write one JSON value per line (fix or delete this line)

The column counts characters of the line itself (1-based), so a line cut short reports the
column where it ends. Bytes that are not UTF-8 are named the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from streampro.errors import UserError

_FIX = "write one JSON value per line (fix or delete this line)"


def _decode(raw: bytes, path: Path, lineno: int) -> tuple[str | None, str | None]:
    """``(text, None)`` for a good line, ``(None, message)`` for a bad one (text is None when blank)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
    if lineno == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    return text.rstrip("\r\n"), None


def iter_jsonl(path: str | os.PathLike, *, errors: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for every non-blank line of ``path``.

    A line that is not UTF-8 JSON raises :class:`UserError` naming ``file:line`` and the column;
    with ``errors`` (a list) the message is appended there and the line skipped instead, so a
    caller can report every bad line at once.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file", "pass a JSONL file (one JSON value per line)")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            text, problem = _decode(raw, p, lineno)
            if problem is None:
                if not text.strip():
                    continue
                try:
                    yield lineno, json.loads(text)
                    continue
                except json.JSONDecodeError as e:
                    # ``text`` is one line without its newline, so colno is the column in that line.
                    problem = f"{p}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"
            if errors is None:
                raise UserError(problem, _FIX)
            errors.append(f"{problem} — {_FIX}")


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every value of a JSONL file, in order (errors as in :func:`iter_jsonl`)."""
    return [value for _, value in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Write ``records`` one per line, atomically: a crash leaves the old file or the new one, never half.

    The lines go to a temporary file beside ``path`` that replaces it once complete; parent
    folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
