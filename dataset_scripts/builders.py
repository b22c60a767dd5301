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


def _response_text(task: str, answer: dict) -> str:
    if task in SEGMENT_TASKS:
        return format_segment(answer["start"], answer["end"])
    return answer["text"].strip()


def build_sft_record(raw_sample: dict, fps: float = 1.0, stats: Counter | None = None) -> dict | None:
    """The SFT streaming conversation of one (validated) raw sample, or ``None`` if nothing is left to say.

    Record: ``{id, task, video, duration, fps, num_turns, system, questions: [{turn, time, text}],
    responses: [{turn, time, text}]}``; ``time`` is ``turn_time(turn, fps)``; response texts carry no
    ``</Response>`` token; turns without a response are silent.
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
    stats["records"] += 1
    stats["turns"] += n
    stats["response_turns"] += len(responses)
    stats["silence_turns"] += n - len(responses)
    stats["silence_turns_from_question"] += n - q_turn - len(responses)
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
    }


def build_rl_sample(raw_sample: dict, fps: float = 1.0) -> dict:
    """An RL sample: the reference fields plus ``fps``, ``system`` and an empty ``rubric`` slot."""
    sample = to_reference(raw_sample)
    sample["fps"] = float(fps)
    sample["system"] = raw_sample.get("system")
    sample["rubric"] = None
    return sample


def build_records(kind: str, samples: list[dict], fps: float = 1.0, stats: Counter | None = None) -> list[dict]:
    """Build ``kind`` (sft, rl or bench) rows from validated raw samples."""
    stats = stats if stats is not None else Counter()
    if kind == "sft":
        records = [build_sft_record(s, fps, stats) for s in samples]
        return [r for r in records if r is not None]
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
        "`</Silence>`. Response texts exclude the `</Response>` token."
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


def build(kind: str, raw_path: str | os.PathLike, out_dir: str | os.PathLike, *, split: str = "train",
          fps: float = 1.0, progress: bool = True) -> Counter:
    """Build ``OUT/{split}.jsonl`` of ``kind`` from a raw JSONL file and (re)write the card."""
    if kind not in KINDS:
        raise ValueError(f"unknown build kind {kind!r}; use one of {list(KINDS)}")
    if not _SPLIT_NAME.match(split):
        raise ValueError(f"split name {split!r} must be letters, digits or underscores (e.g. train, test)")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    from tqdm import tqdm

    samples = read_raw(raw_path)
    stats: Counter = Counter(raw_samples=len(samples))
    rows = []
    for sample in tqdm(samples, desc=f"build {kind}", unit="sample", disable=not progress):
        rows += build_records(kind, [sample], fps, stats)
    out_dir = Path(out_dir)
    # One kind and fps per folder (dataset_scripts/manifest.py); files of a killed build are cleaned up.
    settings = {"kind": kind, "fps": float(fps)}
    manifest.begin(out_dir, "data build", settings, data_entries=())
    manifest.remove_stale_temporaries(out_dir)
    write_jsonl(out_dir / f"{split}.jsonl", rows)
    splits = {p.stem: p.name for p in sorted(out_dir.glob("*.jsonl"))}
    sources = sorted({str(s.get("source") or "unknown") for s in samples})
    body = (
        f"{_CARD_INTRO[kind]}\n\nBuilt by `streampro data build {kind}` at {fps:g} fps.\n\n"
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


def format_stats(stats: Counter) -> str:
    return "\n".join(f"  {k}: {v}" for k, v in sorted(stats.items()))
