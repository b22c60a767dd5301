"""Hub-ready dataset folders: Parquet shards with declared features, and the dataset card that
``datasets.load_dataset(DIR)`` and the Hub read.

``streampro data build`` and ``streampro data synth`` write their rows as JSONL (what the
``streampro`` commands read: ``train``, ``evaluate``, ``score``) and call :func:`write_dataset`,
which writes the same rows next to each JSONL file as one Parquet shard
(``{split}-00000-of-00001.parquet``, typed by :func:`features`) and returns the card (the caller
moves it into place last): its YAML front matter holds ``configs`` (the Parquet files per split),
``dataset_info`` (the declared features per config), ``task_categories``, ``size_categories`` and
the licence. The folder then uploads as it is::

    hf upload <org>/<name> OUT . --repo-type dataset

``video`` is a path string relative to the dataset folder, not the ``datasets`` Video feature:
that feature decodes through torchcodec, whose wheels are CUDA builds that do not load with the
CPU torch this project runs on (docs/data.md, "Hub layout"). The videos stay files beside the data
(``videos/*.mp4``), read by :mod:`streampro.video` through PyAV or decord.
"""

from __future__ import annotations

import os
from pathlib import Path

from streampro.dataset_scripts import manifest

from streampro.jsonl import read_jsonl

SHARD_SUFFIX = "-00000-of-00001.parquet"
KINDS = ("sft", "rl", "bench")
TASK_CATEGORIES = ["video-text-to-text"]
_SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                 (10_000_000, "1M<n<10M"))


def features(kind: str):
    """The declared ``datasets.Features`` of one kind of row (sft, rl or bench)."""
    from datasets import Features, List, Value

    string, seconds = Value("string"), Value("float64")
    # One struct for every answer: "time" (OU, AA, GP, RF) or "start"/"end" (EU, TP, TG); the others are null.
    answer = {"text": string, "time": seconds, "start": seconds, "end": seconds}
    reference = {"id": string, "task": string, "question": string, "question_time": seconds, "video": string,
                 "duration": seconds, "answers": List(answer)}
    if kind == "bench":
        return Features(reference)
    if kind == "rl":
        rubric_item = {"rubric_id": string, "dimension": string, "rubric": string}
        return Features({**reference, "fps": seconds, "system": string, "rubric": List(rubric_item)})
    if kind == "sft":
        turn = {"turn": Value("int64"), "time": seconds, "text": string}
        window = {"turns": List(Value("int64")), "label_from": Value("int64")}  # null: the whole stream
        return Features({"id": string, "task": string, "video": string, "duration": seconds, "fps": seconds,
                         "num_turns": Value("int64"), "system": string, "questions": List(turn),
                         "responses": List(turn), "standby": List(Value("int64")), "window": window})
    raise ValueError(f"unknown dataset kind {kind!r}; use one of {list(KINDS)}")


def _typed_row(kind: str, row: dict) -> dict:
    """``row`` with every declared field: absent answer times become null; rubric ids are strings
    (a rubric id may be an integer in JSONL; Parquet needs one type per column)."""
    if kind in ("bench", "rl"):
        row = {**row, "answers": [{"text": a["text"], **{k: a.get(k) for k in ("time", "start", "end")}}
                                  for a in row["answers"]]}
    if kind == "sft":
        # only training windows (`data build sft --window-turns`) carry a window; a split built before
        # standby labels existed has none (null)
        row = {"window": None, "standby": None, **row}
    if kind == "rl" and row.get("rubric") is not None:
        row["rubric"] = [{**item, "rubric_id": str(item["rubric_id"])} for item in row["rubric"]]
    return row


def write_shard(rows: list[dict], kind: str, path: str | os.PathLike) -> Path:
    """Write ``rows`` of ``kind`` as one Parquet file with the declared features."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    # The Arrow table's schema metadata carries the features, so the shard is typed on its own too.
    feats = features(kind)
    typed = [_typed_row(kind, r) for r in rows]
    # Column by column, so an empty split (no records) still gets a typed, empty shard.
    table = Dataset.from_dict({name: [r[name] for r in typed] for name in feats}, features=feats).data.table

    def write(tmp):
        # An empty split gets a shard with the schema and no row group: datasets' Parquet reader takes a row
        # group's size as its batch size and fails on an empty one.
        if table.num_rows:
            pq.write_table(table, tmp)
        else:
            pq.ParquetWriter(tmp, table.schema).close()

    return manifest.write_atomic(path, write)  # a reader never sees half a shard


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    return next((name for limit, name in _SIZE_BUCKETS if n < limit), "n>10M")


def write_dataset(out_dir: str | os.PathLike, configs: dict[str, tuple[str, dict[str, str]]], *, title: str,
                  body: str, license_: str, license_name: str | None = None, tags: tuple[str, ...] = ()) -> str:
    """Write Parquet shards for the JSONL files of ``configs``; return the dataset card's text.

    ``configs`` maps a config name to ``(kind, {split: JSONL path relative to out_dir})``; the first
    config is the default. Each JSONL file ``NAME.jsonl`` gets ``NAME-00000-of-00001.parquet`` beside it (same
    folder, same rows).
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    out = Path(out_dir)
    card_configs, infos, total = [], [], 0
    for i, (name, (kind, splits)) in enumerate(configs.items()):
        data_files = []
        for split, rel in splits.items():
            rows = read_jsonl(out / rel)
            total += len(rows)
            shard = (out / rel).with_name(f"{Path(rel).stem}{SHARD_SUFFIX}")  # beside the JSONL, same stem
            write_shard(rows, kind, shard)
            data_files.append({"split": split, "path": shard.relative_to(out).as_posix()})
        card_configs.append({"config_name": name, "data_files": data_files, **({"default": True} if i == 0 else {})})
        infos.append({"config_name": name, "features": features(kind)._to_yaml_list()})
    data = DatasetCardData(
        license=license_,
        license_name=license_name,
        pretty_name=title,
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(total)],
        language=["en"],
        tags=["video", "streaming", "proactive", *tags],
        configs=card_configs,
        dataset_info=infos,
    )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body.strip()}\n\n{FIELDS_DOC}"))


FIELDS_DOC = """\
## Fields

Every config is Parquet with declared features (`dataset_info` above); the JSONL file beside each
shard holds the same rows for the `streampro` commands. Times are seconds from the start of the video.

- **bench** (StreamPro-F1 references) and **rl** (GRPO samples): `id`, `task` (`EU OU AA TP TG GP RF`),
  `question`, `question_time`, `video`, `duration`, `answers` — a list of `{text, time, start, end}`:
  `time` is the best response time t* for OU / AA / GP / RF, `start`/`end` the event span (EU, TP)
  or the ground-truth segment (TG, t* = `end`); the times a task does not use are null. **rl** adds
  `fps`, `system` (null = the model's default prompt) and `rubric` (null, or a list of
  `{rubric_id, dimension, rubric}` written by `streampro data rubrics`).
- **sft** (streaming conversations): `id`, `task`, `video`, `duration`, `fps`, `num_turns`, `system`,
  `questions` and `responses` — lists of `{turn, time, text}`; turn k shows the frame at
  `(k + 1) / fps` s; every turn without a response is `</Silence>`, except that a three-state model
  says `</Standby>` on the turns in `standby` (an event under way, not yet to answer); `window` is null, or for a
  training window of a longer stream `{turns, label_from}`: the turns in context and the first supervised one.
- `video` is a path relative to this folder (not the `datasets` Video feature: its decoder,
  torchcodec, ships CUDA-only wheels that do not load with a CPU torch). Read frames with
  `streampro.video`, or join the folder path and open the file with any decoder.

```python
from datasets import load_dataset

bench = load_dataset("path/or/org/name", "bench", split="test")  # or the default config
```
"""
