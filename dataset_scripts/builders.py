"""Builders from raw samples to training and benchmark files (``streampro data build {sft,rl,bench}``).

Run::

    streampro data build sft raw/train.jsonl --out out/sft --split train

- **sft**: one streaming conversation per raw sample (:func:`build_sft_record`): one turn per
  sampled frame, the question on its turn, each response on the turn of its best response time
  t* (docs/method.md §2), every other turn silent. The model engineer's collator consumes these records.
- **rl**: the question, the ground-truth answers (reference format) and a ``rubric`` slot (null
  until a rubric writer fills it).
- **bench**: the metric's reference JSONL (:func:`~streampro.dataset_scripts.schema.to_reference`).

Each writes ``OUT/{split}.jsonl``, the same rows as the Parquet shard
``OUT/{split}-00000-of-00001.parquet`` (declared features, :mod:`~streampro.dataset_scripts.hub`) and a
dataset card ``OUT/README.md`` whose YAML ``configs`` front matter lets ``datasets.load_dataset(OUT)``
read every split's shard in ``OUT``. Both are moved
into place when whole; ``OUT/manifest.json`` records the kind and fps (a build of another kind or
fps into the folder is refused) and the temporary files of a killed build are removed by the next.

Placement rules of the SFT builder (counted in the summary, never silent):

- t*: EU/TP at each span end, TG at the segment end (the text is the canonical segment
  ``"12s - 18s"``, :func:`~streampro.dataset_scripts.schema.format_segment`), OU/AA/GP/RF at ``time``;
  the turn is ``turn_index_for_time(t*, fps)`` (the time convention of ``processing_streampro``).
- ``response_before_question``: a response whose turn is before the question's turn is dropped.
- ``clamped_to_last_turn``: t* after the last sampled frame (but within the duration) goes on the
  last turn.
- ``merged_same_turn``: two responses on one turn become one, texts joined with ``"; "`` in t* order.
- ``no_response_left`` / ``question_after_last_turn``: the sample yields no record.

Standby turns (``standby``, for three-state models; docs/data.md §3, docs/method.md §7): the
turns between an answer's event start and its t*, from the question on, that are not response
turns (:func:`standby_turns`). A two-state model trains them as silent turns, as before.

Training windows (``--window-turns W --window-stride S``, docs/training.md): a stream longer than
the engine's window is cut into the contexts the engine holds after each slide
(:func:`engine_windows`, :func:`window_records`), so training sees what inference sees.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from streampro.dataset_scripts import hub, manifest
from streampro.dataset_scripts.schema import (
    SEGMENT_TASKS,
    answer_time,
    format_segment,
    read_raw,
    to_reference,
)
from streampro.modeling_streampro.time_streampro import num_turns, turn_index_for_time, turn_time

from streampro.jsonl import write_jsonl

logger = logging.getLogger(__name__)

MERGE_SEPARATOR = "; "
KINDS = ("sft", "rl", "bench")
# The engine's window (SessionOptions.window_turns; evict_turns defaults to a quarter of it).
DEFAULT_WINDOW_TURNS = 200


def _response_text(task: str, answer: dict) -> str:
    if task in SEGMENT_TASKS:
        return format_segment(answer["start"], answer["end"])
    return answer["text"].strip()


def answer_span(task: str, answer: dict) -> tuple[float, float] | None:
    """``(start, t*)`` of an answer whose event start is known (EU/TP/TG spans, a timestamp answer's
    optional ``start``), else ``None``."""
    if "start" not in answer:
        return None
    return float(answer["start"]), answer_time(task, answer)


def standby_turns(task: str, answers: list[dict], q_turn: int, n: int, response_turns, fps: float) -> list[int]:
    """The Standby turns of a stream (Streamo's third state; docs/method.md §7), sorted.

    Turn k is Standby when an answer's span [start, t*] has ``start <= turn_time(k) < t*``, k is at
    or after the question's turn ``q_turn`` and k is not a response turn: the event has begun on
    screen but is not yet to be answered. The bounds go through ``turn_index_for_time`` (the time
    convention, with its tolerance): the turns with ``turn_time(k) < t*`` are exactly those before t*'s
    own turn.
    """
    out: set[int] = set()
    for answer in answers:
        span = answer_span(task, answer)
        if span is None:
            continue
        first = max(q_turn, turn_index_for_time(span[0], fps))
        out.update(range(first, min(n, turn_index_for_time(span[1], fps))))
    return sorted(out - set(response_turns))


def build_sft_record(raw_sample: dict, fps: float = 1.0, stats: Counter | None = None) -> dict | None:
    """The SFT streaming conversation of one (validated) raw sample, or ``None`` if nothing is left to say.

    Record: ``{id, task, video, duration, fps, num_turns, system, questions: [{turn, time, text}],
    responses: [{turn, time, text}], standby: [turn, ...]}``; ``time`` is ``turn_time(turn, fps)``;
    response texts carry no ``</Response>`` token; turns without a response are silent, and those in
    ``standby`` (:func:`standby_turns`) are Standby for a three-state model.
    """
    stats = stats if stats is not None else Counter()
    task = raw_sample["task"]
    n = num_turns(float(raw_sample["duration"]), fps)
    q_turn = turn_index_for_time(float(raw_sample["question_time"]), fps)
    if n == 0 or q_turn >= n:
        stats["question_after_last_turn"] += 1
        return None
    by_turn: dict[int, list[tuple[float, str]]] = {}
    for answer in raw_sample["answers"]:
        t_star = answer_time(task, answer)
        turn = turn_index_for_time(t_star, fps)
        if turn >= n:
            stats["clamped_to_last_turn"] += 1
            turn = n - 1
        if turn < q_turn:
            stats["response_before_question"] += 1
            continue
        by_turn.setdefault(turn, []).append((t_star, _response_text(task, answer)))
    if not by_turn:
        stats["no_response_left"] += 1
        return None
    responses = []
    for turn in sorted(by_turn):
        items = sorted(by_turn[turn], key=lambda x: x[0])
        if len(items) > 1:
            stats["merged_same_turn"] += len(items) - 1
        texts = list(dict.fromkeys(text for _, text in items))  # identical texts once
        responses.append({"turn": turn, "time": turn_time(turn, fps), "text": MERGE_SEPARATOR.join(texts)})
    standby = standby_turns(task, raw_sample["answers"], q_turn, n, by_turn, fps)
    stats["records"] += 1
    stats["turns"] += n
    stats["response_turns"] += len(responses)
    stats["silence_turns"] += n - len(responses)
    stats["silence_turns_from_question"] += n - q_turn - len(responses)
    stats["standby_turns"] += len(standby)  # a subset of the silent turns (two-state models keep them silent)
    return {
        "id": raw_sample["id"],
        "task": task,
        "video": raw_sample["video"],
        "duration": float(raw_sample["duration"]),
        "fps": float(fps),
        "num_turns": n,
        "system": raw_sample.get("system"),
        "questions": [{"turn": q_turn, "time": turn_time(q_turn, fps), "text": raw_sample["question"]}],
        "responses": responses,
        "standby": standby,
    }


def default_window_stride(window_turns: int) -> int:
    """The engine's default ``evict_turns`` for a window of ``window_turns`` (docs/engine.md)."""
    return max(1, window_turns // 4)


def engine_windows(num_turns: int, pinned: set[int] | frozenset[int], window_turns: int,
                   evict_turns: int) -> list[tuple[list[int], int, int]]:
    """The contexts of the engine's ``memory="window"`` policy over a stream: ``[(kept, start, end)]``.

    Replays ``StreamSession._maybe_make_room`` (docs/engine.md, "Memory policies"): the context
    holds every pinned (question) turn and at most ``window_turns`` others; before a turn that
    would exceed that, the oldest ``evict_turns`` unpinned turns leave. Each item is one slide:
    ``kept`` the turns left in the context by the slide (before turn ``start``), then the engine
    decides turns ``start .. end - 1`` on top of them until the next slide. The first item has
    ``kept == []`` and ``start == 0``; a stream that never slides gives one item.
    """
    if window_turns < 1 or not 1 <= evict_turns <= window_turns:
        raise ValueError(f"need window_turns >= 1 and 1 <= window stride <= window_turns, got {window_turns} and "
                         f"{evict_turns}")
    out, kept, start = [], [], 0
    turns: list[int] = []
    unpinned = 0
    for k in range(num_turns):
        new_unpinned = 0 if k in pinned else 1
        if unpinned + new_unpinned > window_turns:
            out.append((kept, start, k))
            drop = set([t for t in turns if t not in pinned][:evict_turns])
            turns = [t for t in turns if t not in drop]
            unpinned -= len(drop)
            kept, start = list(turns), k
        turns.append(k)
        unpinned += new_unpinned
    out.append((kept, start, num_turns))
    return out


def window_records(record: dict, window_turns: int, window_stride: int | None = None,
                   stats: Counter | None = None) -> list[dict]:
    """``record`` cut into the engine's contexts when it is longer than the window, else ``[record]``.

    Each window record is ``record`` with ``id`` ``"{id}#w{j}"``, the questions, responses and
    standby turns on its turns, and ``window = {"turns": [...], "label_from": start}``: the kept turns, then turns
    ``start .. end - 1`` (:func:`engine_windows`). The collator encodes exactly those turns, each
    with its own time tag, and supervises only turns ``>= label_from``: the kept ones are context
    with their ground-truth assistant turns as inputs (teacher forcing). ``num_turns``, ``duration``
    and ``video`` stay the stream's (frames are decoded, and cached, per stream). A window whose
    turns are all before the first question has nothing to supervise and is dropped
    (``windows_before_question``).
    """
    stats = stats if stats is not None else Counter()
    window_stride = default_window_stride(window_turns) if window_stride is None else window_stride
    pinned = frozenset(int(q["turn"]) for q in record["questions"])
    slides = engine_windows(int(record["num_turns"]), pinned, window_turns, window_stride)
    if len(slides) == 1:
        return [record]
    first_question = min(pinned)
    out = []
    for j, (kept, start, end) in enumerate(slides):
        if end <= first_question:
            stats["windows_before_question"] += 1
            continue
        turns = kept + list(range(start, end))
        in_window = set(turns)
        out.append({
            **record,
            "id": f"{record['id']}#w{j}",
            "questions": [q for q in record["questions"] if q["turn"] in in_window],
            "responses": [r for r in record["responses"] if r["turn"] in in_window],
            **({"standby": [k for k in record["standby"] if k in in_window]} if "standby" in record else {}),
            "window": {"turns": turns, "label_from": start},
        })
    stats["windowed_streams"] += 1
    stats["windows"] += len(out)
    stats["window_context_turns"] += sum(len(r["window"]["turns"]) for r in out)
    return out


def build_rl_sample(raw_sample: dict, fps: float = 1.0) -> dict:
    """An RL sample: the reference fields plus ``fps``, ``system`` and an empty ``rubric`` slot."""
    sample = to_reference(raw_sample)
    sample["fps"] = float(fps)
    sample["system"] = raw_sample.get("system")
    sample["rubric"] = None
    return sample


def build_records(kind: str, samples: list[dict], fps: float = 1.0, stats: Counter | None = None, *,
                  window_turns: int | None = None, window_stride: int | None = None) -> list[dict]:
    """Build ``kind`` (sft, rl or bench) rows from validated raw samples.

    ``window_turns`` (sft only; None or 0: whole streams) cuts streams longer than the engine's
    window into its contexts (:func:`window_records`), ``window_stride`` turns apart (default: the
    engine's ``evict_turns``, a quarter of the window).
    """
    stats = stats if stats is not None else Counter()
    if kind == "sft":
        records = [r for r in (build_sft_record(s, fps, stats) for s in samples) if r is not None]
        if not window_turns:
            return records
        return [w for r in records for w in window_records(r, window_turns, window_stride, stats)]
    if kind == "rl":
        stats["records"] += len(samples)
        return [build_rl_sample(s, fps) for s in samples]
    if kind == "bench":
        stats["records"] += len(samples)
        return [to_reference(s) for s in samples]
    raise ValueError(f"unknown build kind {kind!r}; use one of {list(KINDS)}")


_CARD_INTRO = {
    "sft": (
        "Streaming SFT conversations for StreamPro: one row per conversation; one turn per frame "
        "sampled at `fps`; `questions` and `responses` name their turns (0-based; turn k shows the "
        "frame at `(k + 1) / fps` s and is tagged `<k/fps s-(k+1)/fps s>`); every other turn is "
        "`</Silence>` (`standby` lists the turns a three-state model marks `</Standby>`: an event under way, "
        "not yet to answer). Response texts exclude the `</Response>` token."
    ),
    "rl": (
        "RL samples for StreamPro GRPO: question, question time and ground-truth answers in the "
        "StreamPro-F1 reference format, plus a `rubric` slot (null until rubrics are written)."
    ),
    "bench": (
        "StreamPro-F1 references: one benchmark sample per row "
        "(`id, task, question, question_time, video, duration, answers`)."
    ),
}


_SPLIT_NAME = re.compile(r"^\w+$")


def _window_note(window_turns: int, window_stride: int | None) -> str:
    if not window_turns:
        return ""
    return (f", streams longer than {window_turns} turns cut into training windows {window_stride} turns apart "
            "(`window`: the turns in context and the first supervised turn)")


def build(kind: str, raw_path: str | os.PathLike, out_dir: str | os.PathLike, *, split: str = "train",
          fps: float = 1.0, progress: bool = True, window_turns: int | None = None,
          window_stride: int | None = None) -> Counter:
    """Build ``OUT/{split}.jsonl`` of ``kind`` from a raw JSONL file and (re)write the card.

    ``window_turns`` / ``window_stride``: SFT training windows (:func:`build_records`); recorded
    in the folder's manifest, so every split of a folder is cut the same way.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown build kind {kind!r}; use one of {list(KINDS)}")
    window_turns = window_turns or 0
    if window_turns < 0:
        raise ValueError(f"window turns must be >= 0 (0: whole streams), got {window_turns}")
    if window_turns and kind != "sft":
        raise ValueError(f"training windows apply to sft records only, not {kind}")
    if window_turns:
        window_stride = default_window_stride(window_turns) if window_stride is None else window_stride
        if not 1 <= window_stride <= window_turns:
            raise ValueError(f"window stride must be in [1, window turns = {window_turns}], got {window_stride}")
    else:
        window_stride = None
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"split name {split!r} must be letters, digits or underscores (e.g. train, test)")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    from tqdm import tqdm

    samples = read_raw(raw_path)
    stats: Counter = Counter(raw_samples=len(samples))
    rows = []
    for sample in tqdm(samples, desc=f"build {kind}", unit="sample", disable=not progress):
        rows += build_records(kind, [sample], fps, stats, window_turns=window_turns, window_stride=window_stride)
    out_dir = Path(out_dir)
    # One kind, fps (and, for sft, windowing) per folder (dataset_scripts/manifest.py); files of a
    # killed build are cleaned up.
    settings = {"kind": kind, "fps": float(fps)}
    if kind == "sft":
        settings.update(window_turns=window_turns, window_stride=window_stride)
    manifest.begin(out_dir, "data build", settings, data_entries=(), compare=_differing_settings)
    manifest.remove_stale_temporaries(out_dir)
    write_jsonl(out_dir / f"{split}.jsonl", rows)
    splits = {p.stem: p.name for p in sorted(out_dir.glob("*.jsonl"))}
    sources = sorted({str(s.get("source") or "unknown") for s in samples})
    body = (
        f"{_CARD_INTRO[kind]}\n\nBuilt by `streampro data build {kind}` at {fps:g} fps"
        f"{_window_note(window_turns, window_stride)}.\n\n"
        "## License\n\nThe rows keep the licence of their source annotations (and the videos that of "
        f"their owners). Sources of the latest build: {', '.join(f'`{s}`' for s in sources)}. Several "
        "public sets StreamPro converts are released for non-commercial research only (CC BY-NC-SA or "
        "similar terms): check each source's terms before any use beyond research.\n\n"
        "Load with `datasets.load_dataset(\"path/to/this/folder\")`; publish with "
        "`hf upload <org>/<name> path/to/this/folder . --repo-type dataset`."
    )
    # Parquet shards beside the JSONL files and a card with declared features (dataset_scripts/hub.py).
    card = hub.write_dataset(out_dir, {"default": (kind, splits)}, title=f"StreamPro {kind} data", body=body,
                             license_="other", license_name="source-annotation-licences",
                             tags=("non-commercial-sources",))
    manifest.write_text_atomic(out_dir / "README.md", card)
    manifest.finish(out_dir, "data build", settings)
    return stats


def _differing_settings(old: dict, new: dict) -> list[str]:
    """The settings two builds disagree on; another kind is reported alone (its other settings follow from it)."""
    if old.get("kind") != new.get("kind"):
        return ["kind"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def format_stats(stats: Counter) -> str:
    return "\n".join(f"  {k}: {v}" for k, v in sorted(stats.items()))


def turn_balance(records: list[dict], where: str = "records") -> dict[str, dict[str, int]]:
    """Per task (and ``all`` over several tasks): records, turns, response turns, silent turns, and silent turns from the question.

    Silent turns from the question's turn on are what the SFT losses supervise (docs/method.md §4): their
    ratio to the response turns is the imbalance CB-Stream re-weights.
    """
    out: dict[str, dict[str, int]] = {}
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict) or not {"num_turns", "questions", "responses"} <= set(r):
            raise ValueError(f"{where}:{i}: not an SFT record (needs num_turns, questions, responses)")
        q_turn = min((q["turn"] for q in r["questions"]), default=0)
        n, responses = int(r["num_turns"]), len(r["responses"])
        row = out.setdefault(r.get("task", "?"), dict.fromkeys(("records", "turns", "response_turns", "silence_turns",
                                                                "silence_turns_from_question"), 0))
        row["records"] += 1
        row["turns"] += n
        row["response_turns"] += responses
        row["silence_turns"] += n - responses
        row["silence_turns_from_question"] += n - q_turn - responses
    if len(out) > 1:
        out["all"] = {k: sum(row[k] for row in list(out.values())) for k in next(iter(out.values()))}
    return out
