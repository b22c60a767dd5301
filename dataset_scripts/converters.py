"""Converters from public annotation formats to the raw schema (``streampro data convert``).

Run::

    streampro data convert charades-sta charades_sta_test.txt --out out/charades.raw.jsonl --video-root videos/

Each format has a reader that yields *candidate* samples (the duration may be unknown) and
counts what it had to skip; one driver then resolves videos and durations, applies the shared
degenerate-row rules, validates and appends to the output. The mapping decisions per format
(question wording and time, which time is t*) are documented in ``docs/data.md``.

Degenerate rows are never dropped silently; every rule has a counter printed in the summary:

- ``span_reversed`` (end < start): the answer is dropped;
- ``span_zero_length`` (end == start): the answer is dropped;
- ``clamped_to_duration``: a time / span end past the video end is set to the duration;
- ``answer_after_duration``: a time past the video end, or a span starting at or after it: dropped;
- ``empty_answer_text`` / ``question_after_duration``: the answer / the sample is dropped;
- ``answer_before_question``: t* before the question time: the answer is dropped;
- ``duplicate_answer``: the same (text, times) twice in one sample: the repeat is dropped;
- ``duplicate_sample``: a sample identical to an earlier one (video, task, question, answers):
  the repeat is dropped;
- ``no_answers_left``: a sample whose answers were all dropped is dropped;
- ``duration_estimated``: the annotation has no duration and no video was probed: the duration
  is set to the latest annotated time (a lower bound) and ``meta.duration_estimated`` is true.

Wrong types are refused with the file and the entry (or line) and field, never coerced: a number
where a text belongs (a sentence ``42``), a string where a number belongs (``"12.5"``), a DoTA class
outside DoTA's list. ``streampro data convert`` exits non-zero when no sample is written (an empty
file, every row dropped), naming the counters above.

Resume: the output is append-only; ids already in it are skipped (``already_done``), and a
truncated last line (an interrupted write) is cut off before appending.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from streampro.dataset_scripts.schema import (
    SEGMENT_TASKS,
    TASKS,
    TIMESTAMP_TASKS,
    RawFormatError,
    answer_time,
    format_segment,
    validate_raw,
)

from streampro.jsonl import iter_jsonl

logger = logging.getLogger(__name__)

# DoTA annotates frame indices at this rate (its README).
DOTA_FPS = 10.0
# RF: warn this many seconds before the hazard materialises (docs/method.md §2).
RF_LEAD_SECONDS = 3.0

QUESTIONS = {
    "EU": "Describe each event in the video as soon as it has finished.",
    "AA": "Watch the video and alert me immediately if anything abnormal or dangerous happens.",
    "GP": "I am following these steps toward a goal. Each time a step is finished, tell me the next step.",
    "RF": (
        "I am a visually impaired pedestrian moving forward. Warn me about 3 seconds before any "
        "hazard on my way, and tell me what to do."
    ),
}


def tg_question(query: str) -> str:
    """The Temporal Grounding question for a natural-language query."""
    query = query.strip().rstrip(".")
    return f'Tell me when "{query}" happens: give its start and end time as soon as it ends.'


class Candidate(dict):
    """A raw sample before video/duration resolution and cleaning (a dict with the raw keys)."""


def _load_json(path: Path):
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise RawFormatError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); the file is "
            "corrupt or truncated: download it again"
        ) from None


def _need(entry: dict, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise RawFormatError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise RawFormatError(f"{where}: missing field(s) {missing}; is this the right --format?")


def _num(value, where: str, field: str) -> float:
    """A JSON number; a string (even ``"12.5"``), a boolean or null is refused, never coerced."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise RawFormatError(f"{where}: field '{field}' must be a number, got {value!r} ({kind})")
    return float(value)


def _text(value, where: str, field: str) -> str:
    """A JSON string, stripped; a number or anything else is refused, never turned into text."""
    if not isinstance(value, str):
        raise RawFormatError(f"{where}: field '{field}' must be a string, got {value!r} ({type(value).__name__})")
    return value.strip()


# --------------------------------------------------------------------------------------------
# Readers: one per format. Each yields Candidates and counts skipped input in `stats`.
# --------------------------------------------------------------------------------------------


def read_activitynet(path: Path, task: str, stats: Counter) -> Iterator[Candidate]:
    """ActivityNet Captions layout (also UCA / UCF-Crime and YouCook2): ``{vid: {duration, timestamps, sentences}}``.

    EU: every caption is an event span. AA: videos of an anomaly class (UCF-Crime name not
    starting with ``Normal``) get one alert per caption at its onset — UCA has no separate onset
    label, so its captions stand for the anomaly's stages (an approximation). GP: after step i
    ends, the answer is step i+1 (``"next: ..."``); the first step has no previous step.
    """
    if task not in ("EU", "AA", "GP"):
        raise ValueError(f"activitynet-captions converts to EU, AA or GP (--task), got {task!r}")
    data = _load_json(path)
    if not isinstance(data, dict):
        raise RawFormatError(f"{path}: expected an object {{video_id: {{duration, timestamps, sentences}}}}")
    for vid, entry in data.items():
        where = f"{path}: entry {vid!r}"
        _need(entry, ("duration", "timestamps", "sentences"), where)
        if len(entry["timestamps"]) != len(entry["sentences"]):
            raise RawFormatError(
                f"{where}: {len(entry['timestamps'])} timestamps but {len(entry['sentences'])} sentences"
            )
        events = []
        for i, (span, text) in enumerate(zip(entry["timestamps"], entry["sentences"])):
            if not isinstance(span, list) or len(span) != 2:
                raise RawFormatError(f"{where}: field 'timestamps[{i}]' must be [start, end], got {span!r}")
            events.append((_num(span[0], where, f"timestamps[{i}]"), _num(span[1], where, f"timestamps[{i}]"),
                           _text(text, where, f"sentences[{i}]")))
        if task == "EU":
            answers = [{"text": t, "start": s, "end": e} for s, e, t in events]
        elif task == "AA":
            if vid.startswith("Normal"):
                stats["skipped_normal_video"] += 1
                continue
            answers = [{"text": t, "time": s} for s, e, t in events]
        else:
            events.sort(key=lambda x: (x[0], x[1]))
            answers = [{"text": f"next: {events[i][2]}", "time": events[i - 1][1]} for i in range(1, len(events))]
            if not answers:
                stats["skipped_single_step"] += 1
                continue
        yield Candidate(
            id=f"{path.stem}/{task}:{vid}", task=task, video=vid, duration=_num(entry["duration"], where, "duration"),
            question=QUESTIONS[task], question_time=0.0, answers=answers, meta={},
        )


_CHARADES_LINE = re.compile(r"^(\S+)\s+([0-9.eE+-]+)\s+([0-9.eE+-]+)##(.*)$")


def read_charades_sta(path: Path, task: str, stats: Counter) -> Iterator[Candidate]:
    """Charades-STA ``VIDEO START END##sentence`` lines: each line is one TG sample asked at 0 s.

    The file has no durations: they come from the videos (``--video-root``) or are estimated.
    """
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _CHARADES_LINE.match(line.rstrip("\n"))
            if not m:
                raise RawFormatError(
                    f"{path}:{lineno}: expected 'VIDEO START END##sentence', got {line.strip()[:80]!r}"
                )
            vid, s, e, sentence = m.groups()
            try:
                start, end = float(s), float(e)
            except ValueError:
                raise RawFormatError(f"{path}:{lineno}: START and END must be numbers, got {s!r} and {e!r}") from None
            rows.append((lineno, vid, start, end, sentence.strip()))
    latest: dict[str, float] = {}
    for _, vid, _, e, _ in rows:
        latest[vid] = max(latest.get(vid, 0.0), e)
    for lineno, vid, s, e, sentence in rows:
        yield Candidate(
            id=f"charades-sta:{path.stem}:L{lineno}", task="TG", video=vid, duration=None, question=tg_question(sentence),
            question_time=0.0, answers=[{"text": format_segment(s, e), "start": s, "end": e}],
            meta={"query": sentence, "latest_annotated_time": latest[vid]},
        )


def read_qvhighlights(path: Path, task: str, stats: Counter) -> Iterator[Candidate]:
    """QVHighlights JSONL: one TG sample per query, one answer per relevant window."""
    for lineno, entry in iter_jsonl(path):
        where = f"{path}:{lineno}"
        _need(entry, ("qid", "query", "duration", "vid", "relevant_windows"), where)
        answers = []
        for i, w in enumerate(entry["relevant_windows"]):
            if not isinstance(w, list) or len(w) != 2:
                raise RawFormatError(f"{where}: field 'relevant_windows[{i}]' must be [start, end], got {w!r}")
            s, e = _num(w[0], where, "relevant_windows"), _num(w[1], where, "relevant_windows")
            answers.append({"text": format_segment(s, e), "start": s, "end": e})
        query = _text(entry["query"], where, "query")
        yield Candidate(
            id=f"qvhighlights:{entry['qid']}", task="TG", video=_text(entry["vid"], where, "vid"),
            duration=_num(entry["duration"], where, "duration"), question=tg_question(query),
            question_time=0.0, answers=answers, meta={"query": query},
        )


# DoTA's anomaly categories (its README); each is annotated as "ego: KIND" or "other: KIND".
DOTA_KINDS = ("start_stop_or_stationary", "moving_ahead_or_waiting", "lateral", "oncoming", "turning",
              "pedestrian", "obstacle", "leave_to_right", "leave_to_left", "unknown")


def _dota_advice(anomaly_class, where: str) -> str:
    """A short warning from a DoTA class such as ``"ego: turning"``; a class outside DoTA's list is refused."""
    who, _, kind = _text(anomaly_class, where, "anomaly_class").partition(":")
    who, kind = who.strip(), kind.strip()
    if who not in ("ego", "other") or kind not in DOTA_KINDS:
        raise RawFormatError(
            f"{where}: field 'anomaly_class' is {anomaly_class!r}, not a DoTA class ('ego: KIND' or 'other: KIND', "
            f"KIND one of {list(DOTA_KINDS)})"
        )
    party = "us" if who == "ego" else "other vehicles"
    return (f"Warning: a traffic accident involving {party} ({kind.replace('_', ' ')}) is about to happen ahead; "
            "slow down and keep clear.")


def read_dota(path: Path, task: str, stats: Counter) -> Iterator[Candidate]:
    """DoTA metadata: one RF sample per clip; warning time = anomaly onset − 3 s (onsets in frames at 10 fps).

    A warning time before 0 s (onset < 3 s) is set to 0 s and counted (``warning_clamped_to_start``).
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise RawFormatError(f"{path}: expected an object {{clip: {{anomaly_start, num_frames, ...}}}}")
    for clip, entry in data.items():
        where = f"{path}: entry {clip!r}"
        _need(entry, ("anomaly_start", "anomaly_end", "anomaly_class", "num_frames"), where)
        onset = _num(entry["anomaly_start"], where, "anomaly_start") / DOTA_FPS
        warn = onset - RF_LEAD_SECONDS
        if warn < 0:
            stats["warning_clamped_to_start"] += 1
            warn = 0.0
        yield Candidate(
            id=f"dota:{clip}", task="RF", video=clip,
            duration=_num(entry["num_frames"], where, "num_frames") / DOTA_FPS,
            question=QUESTIONS["RF"], question_time=0.0,
            answers=[{"text": _dota_advice(entry["anomaly_class"], where), "time": warn}],
            meta={"hazard_onset": onset, "anomaly_end": _num(entry["anomaly_end"], where, "anomaly_end") / DOTA_FPS,
                  "anomaly_class": entry["anomaly_class"]},
        )


def _streamo_time(value, where: str, field: str) -> float | None:
    """Streamo writes its times as strings (``"4"``, ``""`` for none); JSON numbers are taken too."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise RawFormatError(f"{where}: field '{field}' must be a time in seconds, got {value!r}") from None
    return _num(value, where, field)


def read_streamo(path: Path, task: str, stats: Counter) -> Iterator[Candidate]:
    """Streamo raw annotations: ``[{video_path, question: [{content, time}], response: [{content, st_time, end_time, time}]}]``.

    The first question is used (further ones are counted, ``extra_question_ignored``). A response
    with ``st_time``/``end_time`` is an event span; one with only ``time`` is instant. For
    timestamp tasks a span answers at its end and keeps Streamo's own span as ``start`` (its
    ``st_time``; the turns from it to the answer are Standby for three-state training, docs/data.md
    §3); an instant answer has no ``start``, and neither has a reversed or negative span
    (``streamo_span_start_dropped``). For EU/TP/TG an instant answer at t becomes the
    one-turn span [t − 1, t]. Durations come from the videos or are estimated.
    """
    data = _load_json(path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RawFormatError(f"{path}: expected a list of Streamo samples")
    for i, entry in enumerate(data):
        where = f"{path}: item {i}"
        _need(entry, ("question", "response"), where)
        video = entry.get("video_path") or entry.get("video_name")
        if not video:
            raise RawFormatError(f"{where}: missing field 'video_path' (or 'video_name')")
        questions = entry["question"]
        if not isinstance(questions, list) or not questions:
            raise RawFormatError(f"{where}: field 'question' must be a non-empty list of {{content, time}}")
        if len(questions) > 1:
            stats["extra_question_ignored"] += len(questions) - 1
        q = questions[0]
        _need(q, ("content",), f"{where} question[0]")
        q_time = _streamo_time(q.get("time"), where, "question[0].time") or 0.0
        answers = []
        for j, r in enumerate(entry["response"]):
            _need(r, ("content",), f"{where} response[{j}]")
            st = _streamo_time(r.get("st_time"), where, f"response[{j}].st_time")
            en = _streamo_time(r.get("end_time"), where, f"response[{j}].end_time")
            t = _streamo_time(r.get("time"), where, f"response[{j}].time")
            text = _text(r["content"], where, f"response[{j}].content")
            if st is not None and en is not None:
                span = (st, en)
            elif t is not None:
                span = (max(0.0, t - 1.0), t)
            else:
                raise RawFormatError(f"{where}: response[{j}] has neither st_time/end_time nor time")
            if task in TIMESTAMP_TASKS:
                answer = {"text": text, "time": span[1]}
                if st is not None and en is not None:
                    if 0 <= st <= en:
                        answer["start"] = st
                    else:  # a reversed or negative span: the answer time stands, its start is unknown
                        stats["streamo_span_start_dropped"] += 1
                answers.append(answer)
            else:
                answers.append({"text": format_segment(*span) if task in SEGMENT_TASKS else text,
                                "start": span[0], "end": span[1]})
        yield Candidate(
            id=f"streamo:{path.stem}:{i}", task=task, video=_text(video, where, "video_path"), duration=None,
            question=_text(q["content"], where, "question[0].content"),
            question_time=q_time, answers=answers,
            meta={"streamo_task_type": entry.get("task_type"), "streamo_source": entry.get("source")},
        )


from streampro.dataset_scripts import benchmarks  # noqa: E402  (it imports the helpers above)

# name -> (reader, tasks --task may choose, the first being the default; None: the format fixes the task)
FORMATS: dict[str, tuple[Callable[[Path, str | None, Counter], Iterator[Candidate]], tuple[str, ...] | None]] = {
    "activitynet-captions": (read_activitynet, ("EU", "AA", "GP")),
    "charades-sta": (read_charades_sta, None),  # TG
    "qvhighlights": (read_qvhighlights, None),  # TG
    "dota": (read_dota, None),  # RF
    # dataset_scripts/benchmarks.py: real-time QA records and proactive records (docs/data.md)
    "ovo-bench": (benchmarks.read_ovo_bench, None),
    "streamingbench": (benchmarks.read_streamingbench, None),
    "streamo": (read_streamo, TASKS),
    "proactivevideoqa": (benchmarks.read_proactivevideoqa, TASKS),
}


# --------------------------------------------------------------------------------------------
# Shared cleaning and the driver
# --------------------------------------------------------------------------------------------


def _latest_time(answers: list[dict]) -> float:
    return max((float(a[k]) for a in answers for k in ("time", "start", "end") if k in a), default=0.0)


def clean_answers(task: str, answers: list[dict], duration: float, question_time: float, stats: Counter) -> list[dict]:
    """Apply the degenerate-answer rules of the module docstring; return answers sorted by t*."""
    out, seen = [], set()
    for a in answers:
        a = dict(a)
        if not a.get("text", "").strip():
            stats["empty_answer_text"] += 1
            continue
        if task in TIMESTAMP_TASKS:
            if a["time"] > duration:
                stats["answer_after_duration"] += 1
                continue
        else:
            if a["end"] < a["start"]:
                stats["span_reversed"] += 1
                continue
            if a["end"] == a["start"]:
                stats["span_zero_length"] += 1
                continue
            if a["start"] >= duration:
                stats["answer_after_duration"] += 1
                continue
            if a["end"] > duration:
                stats["clamped_to_duration"] += 1
                a["end"] = duration
                if task in SEGMENT_TASKS:
                    a["text"] = format_segment(a["start"], a["end"])
        if answer_time(task, a) < question_time:
            stats["answer_before_question"] += 1
            continue
        key = (a["text"], a.get("time"), a.get("start"), a.get("end"))
        if key in seen:
            stats["duplicate_answer"] += 1
            continue
        seen.add(key)
        out.append(a)
    sort_key = (lambda a: a["time"]) if task in TIMESTAMP_TASKS else (lambda a: (a["start"], a["end"]))
    return sorted(out, key=sort_key)


class MissingVideoError(FileNotFoundError):
    """A sample's video is not under --video-root."""


VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def video_file_name(video: str, video_ext: str) -> str:
    """The annotation's video id as a file name: ``video_ext`` is added unless it already has a video extension."""
    return video if video.lower().endswith(VIDEO_EXTENSIONS) or not video_ext else video + video_ext


class JsonlAppender:
    """Append-only JSONL output that knows which ids it already holds (resume without duplicates)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if self.path.exists():
            self._load_existing()
        self._f = self.path.open("a", encoding="utf-8")

    def _load_existing(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # an interrupted write: cut below
            try:
                self.done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                lineno = data[:good_end].count(b"\n") + 1
                raise RawFormatError(
                    f"{self.path}:{lineno}: not a sample written by this tool; pass a new output path "
                    "or delete the file to start over"
                ) from None
            good_end += len(line)
        if good_end < len(data):
            logger.warning("%s: cutting an incomplete last line (an interrupted run) before resuming", self.path)
            with self.path.open("r+b") as f:
                f.truncate(good_end)

    def write(self, sample: dict) -> None:
        self._f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        self._f.flush()
        self.done.add(sample["id"])

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def convert(
    fmt: str,
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    task: str | None = None,
    video_root: str | os.PathLike | None = None,
    video_ext: str = ".mp4",
    allow_missing_videos: bool = False,
    progress: bool = True,
) -> Counter:
    """Convert one annotation file to raw JSONL at ``out_path``; return the summary counts.

    With ``video_root`` every video must exist there (else :class:`MissingVideoError`, unless
    ``allow_missing_videos``, which keeps the sample and counts ``missing_video``), ``video`` is
    written as that path, and unknown durations are probed from the file.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {sorted(FORMATS)}")
    reader, choices = FORMATS[fmt]
    if choices is None:
        if task is not None:
            raise ValueError(f"format {fmt} fixes the task itself (see docs/data.md); do not pass --task")
    else:
        task = task or choices[0]
        if task not in choices:
            raise ValueError(f"format {fmt} converts to task(s) {list(choices)}, not {task!r}")
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"{input_path}: no such annotation file")
    root = Path(video_root) if video_root is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--video-root {root}: no such directory")
    from tqdm import tqdm

    stats: Counter = Counter()
    seen_content: set[str] = set()
    candidates = list(reader(input_path, task, stats))
    with JsonlAppender(out_path) as out:
        for cand in tqdm(candidates, desc=f"convert {fmt}", unit="sample", disable=not progress):
            stats["read"] += 1
            content = json.dumps([cand["video"], cand["task"], cand["question"], cand["question_time"],
                                  cand.get("answers"), cand.get("options"), cand.get("answer"),
                                  cand.get("group"), cand["id"] if "kind" in cand else None], sort_keys=True)
            # (a benchmark's questions are scored as published, repeats included: QA records keep their ids)
            if content in seen_content:
                stats["duplicate_sample"] += 1
                continue
            seen_content.add(content)
            if cand["id"] in out.done:
                stats["already_done"] += 1
                continue
            sample = dict(cand)
            meta = dict(sample.pop("meta", None) or {})
            latest_hint = float(meta.pop("latest_annotated_time", 0.0))
            sample["video"] = video_file_name(sample["video"], video_ext)
            if root is not None:
                path = root / sample["video"]
                if path.is_file():
                    sample["video"] = str(path.resolve())
                    if sample["duration"] is None:
                        from streampro.video import probe_video

                        sample["duration"] = probe_video(path).duration
                        stats["duration_probed"] += 1
                elif allow_missing_videos:
                    stats["missing_video"] += 1
                    meta["video_missing"] = True
                else:
                    raise MissingVideoError(
                        f"{input_path}: sample {cand['id']}: video {path} not found under --video-root {root}; "
                        "fix --video-root / --video-ext, or pass --allow-missing-videos to convert anyway"
                    )
            if sample["duration"] is None:
                # Lower bound: the latest time the annotation mentions (answers, question, and any
                # other times the reader noted, e.g. other queries on the same video).
                sample["duration"] = max(_latest_time(sample.get("answers", [])), sample["question_time"],
                                         latest_hint)
                meta["duration_estimated"] = True
                stats["duration_estimated"] += 1
            if sample["duration"] <= 0:
                stats["no_duration"] += 1
                continue
            if sample["question_time"] > sample["duration"]:
                stats["question_after_duration"] += 1
                continue
            if "kind" in sample:  # a real-time QA record (dataset_scripts/benchmarks.py): no timed answers
                sample["source"] = fmt
                sample["meta"] = meta
                benchmarks.validate_qa(sample, where=f"{input_path} -> {cand['id']}")
                out.write(sample)
                stats["written"] += 1
                continue
            sample["answers"] = clean_answers(
                sample["task"], sample["answers"], sample["duration"], sample["question_time"], stats
            )
            if not sample["answers"]:
                stats["no_answers_left"] += 1
                continue
            sample["source"] = fmt
            sample["system"] = None
            sample["meta"] = meta
            validate_raw(sample, where=f"{input_path} -> {cand['id']}")
            out.write(sample)
            stats["written"] += 1
    return stats


def format_summary(stats: Counter) -> str:
    """The printed summary: main counts first, then every rule that fired."""
    main = ("read", "written", "already_done")
    lines = [f"  {k}: {stats.get(k, 0)}" for k in main]
    lines += [f"  {k}: {v}" for k, v in sorted(stats.items()) if k not in main]
    return "\n".join(lines)
