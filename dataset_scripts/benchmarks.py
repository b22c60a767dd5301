"""Readers for the streaming benchmarks people report: OVO-Bench, StreamingBench, ProactiveVideoQA.

Run::

    streampro data convert ovo-bench ovo_bench_new.json --out refs/ovo.jsonl --video-root ovo_videos/
    streampro data convert streamingbench questions_real.json --out refs/sb.jsonl --video-root sb_videos/
    streampro data convert proactivevideoqa TV_anno.json --out refs/pvqa.jsonl --video-root pvqa/TV/videos/

Each reader yields candidates for the driver in :mod:`streampro.dataset_scripts.converters`
(which resolves videos and durations, counts every degenerate row and appends to the output).
Two kinds of line come out (the format is in docs/data.md, "Streaming benchmarks"):

- **real-time QA records** (``kind`` = ``multiple_choice`` or ``open``): a question asked at
  ``question_time`` about the stream so far, with ``options`` and the expected ``answer``
  (validated by :func:`streampro.metrics.schema.validate_qa_reference`);
- **proactive records**: ordinary raw samples (timed answers), with the benchmark's facts under
  ``meta`` (``benchmark``, ``benchmark_task``, ...).

Ids come from the source's own ids (OVO-Bench ``id``, ProactiveVideoQA ``question_id``) or, where
the source has none (StreamingBench), from the file stem, the video and the question's position
on that video, so that several files converted into one output never collide.

Every item a reader skips or changes is counted under a name in the summary (see each reader).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from streampro.dataset_scripts.converters import Candidate, _load_json, _need, _num, _text
from streampro.dataset_scripts.schema import SEGMENT_TASKS, TIMESTAMP_TASKS, RawFormatError, format_segment

# ProactiveVideoQA marks scenes that hold no answer with this text.
_NO_REPLY = "NO REPLY"

OVO_BACKWARD = ("EPM", "ASI", "HLD")
OVO_REALTIME = ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")
OVO_FORWARD = ("REC", "SSR", "CRR")

# StreamingBench task_type -> the task code of its paper's tables.
STREAMINGBENCH_TASKS = {
    "Object Recognition": "OP",
    "Causal Reasoning": "CR",
    "Clips Summarize": "CS",
    "Attribute Recognition": "ATP",
    "Event Understanding": "EU",
    "Text-Rich Understanding": "TR",
    "Prospective Reasoning": "PR",
    "Spatial Understanding": "SU",
    "Action Recognition": "ACP",
    "Counting": "CT",
    "Emotion Recognition": "ER",
    "Scene Understanding": "SCU",
    "Source Discrimination": "SD",
    "Multimodal Alignment": "MA",
    "Anomaly Context Understanding": "ACU",
    "Misleading Context Understanding": "MCU",
    "Sequential Question Answering": "SQA",
    "Proactive Output": "PO",
}

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Z])[.)]\s+")


class QACandidate(Candidate):
    """A real-time QA record before video/duration resolution (has ``kind``, ``options``, ``answer``)."""


def _qa(**fields) -> QACandidate:
    fields.setdefault("group", None)
    fields.setdefault("group_index", 0)
    fields.setdefault("context", "")
    return QACandidate(fields)


def _options(raw, where: str, stats: Counter) -> list[str]:
    """Option texts without their ``"A. "`` prefixes (letters are implied by position)."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise RawFormatError(f"{where}: field 'options' must be a list of at least 2 options, got {raw!r}")
    out = []
    for i, opt in enumerate(raw):
        text = _text(opt, where, f"options[{i}]")
        m = _OPTION_PREFIX.match(text)
        if m and m.group(1) == chr(65 + i):
            text = text[m.end():].strip()
            stats["option_letter_prefix_removed"] += 1
        out.append(text)
    return out


def _items(path: Path, what: str, keys: tuple[str, ...]) -> Iterator[tuple[int, str, dict]]:
    """``(index, where, entry)`` for every entry of a JSON list file, each checked for ``keys``."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise RawFormatError(f"{path}: expected a list of {what}")
    for i, entry in enumerate(data):
        where = f"{path}: item {i}"
        _need(entry, keys, where)
        yield i, where, entry


# --------------------------------------------------------------------------------------------
# OVO-Bench
# --------------------------------------------------------------------------------------------


def _ovo_question_rec(entry: dict) -> str:
    return f"How many times did they {entry['activity']}?"  # OVO-Bench utils/OVOBench.py build_prompt


def _camel_words(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def separate_windows(task: str, answers: list[dict], merge_text, stats: Counter, counter: str) -> list[dict]:
    """Merge answers until each answer's own t* is matched to that answer and no other.

    StreamPro-F1 gives each prediction to the first ground-truth item whose window holds it
    (docs/method.md §3). When one item's t* falls in an earlier item's window (back-to-back
    repetitions, steps ending within 3 s), the earlier item absorbs the later correct answer,
    so an answer key given verbatim could not score 100. Such pairs become one item (spans: the
    union; times: the later; text ``merge_text(earlier, later)``), counted under ``counter``.
    """
    from streampro.metrics.f1 import match_prediction_first
    from streampro.metrics.schema import TIMESTAMP_TASKS, validate_predictions, validate_reference

    def t_star(a):
        return a["time"] if task in TIMESTAMP_TASKS else a["end"]

    def first(a):
        return a["time"] if task in TIMESTAMP_TASKS else a["start"]

    items = sorted((dict(a) for a in answers), key=lambda a: (first(a), t_star(a)))
    while len(items) > 1:
        ref = validate_reference({"id": "x", "task": task, "question": "", "question_time": 0.0, "video": "",
                                  "duration": max(t_star(a) for a in items), "answers": items})
        # Both sorts are stable, as validate_reference's and validate_predictions' are.
        by_start = sorted(range(len(items)), key=lambda i: first(items[i]))
        by_t = sorted(range(len(items)), key=lambda i: t_star(items[i]))
        preds = validate_predictions([{"time": t_star(items[i]), "text": items[i]["text"]} for i in by_t])
        clash = next(((by_t[k], by_start[m]) for k, m in enumerate(match_prediction_first(ref, preds))
                      if m is not None and by_start[m] != by_t[k]), None)
        if clash is None:
            break
        x, y = sorted((items[clash[0]], items[clash[1]]), key=t_star)
        merged = {"text": merge_text(x["text"], y["text"])}
        if task in TIMESTAMP_TASKS:
            merged["time"] = y["time"]
        else:
            merged.update(start=min(x["start"], y["start"]), end=y["end"])
        items = sorted([a for i, a in enumerate(items) if i not in clash] + [merged],
                       key=lambda a: (first(a), t_star(a)))
        stats[counter] += 1
    return items


def _separate(task: str, answers: list[dict], merge_text, stats: Counter, counter: str) -> list[dict]:
    """:func:`separate_windows` on the well-formed spans; degenerate ones pass through for the
    driver's counted rules (``span_reversed``, ``span_zero_length``)."""
    good = [a for a in answers if "time" in a or a["end"] > a["start"]]
    bad = [a for a in answers if "time" not in a and a["end"] <= a["start"]]
    return separate_windows(task, good, merge_text, stats, counter) + bad if good else bad


def read_ovo_bench(path: Path, task: str | None, stats: Counter) -> Iterator[Candidate]:
    """OVO-Bench ``ovo_bench_new.json``: every task.

    - Backward tracing (EPM, ASI, HLD) and real-time perception (OCR, ACR, ATR, STU, FPD, OJR):
      one multiple-choice QA record asked at ``realtime`` (answer: the letter of ``gt``).
    - Forward active responding (REC, SSR, CRR), twice:
      (1) one proactive record each — REC → EU, each repetition a span answered ``"count: n"``;
      SSR → EU, each step a span; CRR → OU, t* = ``clue_time``, asked at ``ask_time``;
      (2) OVO-Bench's own checkpoints: one open QA record per ``test_info`` entry, asked at its
      ``realtime`` (REC: the count; SSR/CRR: ``"Yes"`` for type 1, ``"No"`` for type 0), grouped by
      the source item (``group`` = the proactive record's id).

    Changed items (counted): ``rec_zero_length_widened`` (a repetition with start == end becomes
    the one-second span [t − 1, t]: OVO-Bench counts it), ``rec_close_repetitions_merged`` and
    ``ssr_overlapping_steps_merged`` (see :func:`separate_windows`). OVO-Bench has no durations.
    """
    for _, where, entry in _items(path, "OVO-Bench items", ("id", "task", "video")):
        kind = entry["task"]
        sid = f"ovo-bench:{entry['id']}"
        base_meta = {"benchmark": "ovo-bench", "benchmark_task": kind}
        if kind in OVO_BACKWARD + OVO_REALTIME:
            _need(entry, ("question", "options", "gt", "realtime"), where)
            options = _options(entry["options"], where, stats)
            gt = entry["gt"]
            if isinstance(gt, bool) or not isinstance(gt, int) or not 0 <= gt < len(options):
                raise RawFormatError(f"{where}: field 'gt' must be an option index 0..{len(options) - 1}, got {gt!r}")
            yield _qa(id=sid, benchmark="ovo-bench", task=kind, kind="multiple_choice", video=entry["video"],
                      duration=None, question=_text(entry["question"], where, "question"),
                      question_time=_num(entry["realtime"], where, "realtime"), options=options,
                      answer=chr(65 + gt), meta=dict(base_meta))
            continue
        if kind not in OVO_FORWARD:
            stats[f"skipped_unknown_task_{kind}"] += 1
            continue
        test_info = entry.get("test_info") or []
        test_times = [_num(t.get("realtime"), where, "test_info.realtime") for t in test_info]
        meta = {**base_meta, "latest_annotated_time": max(test_times, default=0.0)}
        if kind == "REC":
            _need(entry, ("activity", "start_times", "end_times"), where)
            reps = []
            for s, e in zip(entry["start_times"], entry["end_times"]):
                s, e = _num(s, where, "start_times"), _num(e, where, "end_times")
                if e == s:
                    stats["rec_zero_length_widened"] += 1
                    s = max(0.0, e - 1.0)
                reps.append((s, e))
            # "count: n" is the true count when repetition n ends (OVO-Bench counts ends).
            reps.sort(key=lambda r: r[1])
            answers = [{"text": f"count: {n}", "start": s, "end": e} for n, (s, e) in enumerate(reps, 1)]
            answers = _separate("EU", answers, lambda a, b: b, stats, "rec_close_repetitions_merged")
            question = (f"Count how many times the person is {_text(entry['activity'], where, 'activity')}. "
                        "Each time one more is completed, tell me the new count.")
            yield Candidate(id=sid, task="EU", video=entry["video"], duration=None, question=question,
                            question_time=0.0, answers=answers, meta=meta)
            checkpoints = [(t["realtime"], _ovo_question_rec(entry), str(t.get("count"))) for t in test_info]
        elif kind == "SSR":
            _need(entry, ("tutorial", "all_steps", "start_time", "end_time"), where)
            answers = [{"text": _text(step, where, "all_steps"), "start": _num(s, where, "start_time"),
                        "end": _num(e, where, "end_time")}
                       for step, s, e in zip(entry["all_steps"], entry["start_time"], entry["end_time"])]
            answers = _separate("EU", answers, lambda a, b: f"{a}; {b}", stats, "ssr_overlapping_steps_merged")
            question = (f"I am watching a tutorial: {_camel_words(entry['tutorial'])}. "
                        "Tell me each step as soon as it has been completed.")
            yield Candidate(id=sid, task="EU", video=entry["video"], duration=None, question=question,
                            question_time=0.0, answers=answers, meta=meta)
            checkpoints = [(t["realtime"], _text(t.get("step"), where, "test_info.step"), "Yes" if t.get("type") == 1 else "No")
                           for t in test_info]
        else:  # CRR
            _need(entry, ("question", "answer", "ask_time", "clue_time"), where)
            yield Candidate(id=sid, task="OU", video=entry["video"], duration=None,
                            question=_text(entry["question"], where, "question"),
                            question_time=_num(entry["ask_time"], where, "ask_time"),
                            answers=[{"text": _text(entry["answer"], where, "answer"),
                                      "time": _num(entry["clue_time"], where, "clue_time")}],
                            meta=meta)
            checkpoints = [(t["realtime"], _text(entry["question"], where, "question"), "Yes" if t.get("type") == 1 else "No")
                           for t in test_info]
        order = sorted(range(len(checkpoints)), key=lambda k: _num(checkpoints[k][0], where, "test_info.realtime"))
        for rank, k in enumerate(order):
            t, question, answer = checkpoints[k]
            stats[f"checkpoint_{kind}"] += 1
            yield _qa(id=f"{sid}:c{k}", benchmark="ovo-bench", task=kind, kind="open", video=entry["video"],
                      duration=None, question=question, question_time=_num(t, where, "test_info.realtime"),
                      options=None, answer=answer, group=sid, group_index=rank,
                      meta={**meta, "checkpoint": k})


# --------------------------------------------------------------------------------------------
# StreamingBench
# --------------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d+(:\d{1,2}){0,2}$")


def streamingbench_seconds(stamp: str) -> float | None:
    """``"00:03:10"`` -> 190 s, as StreamingBench computes it; None for a stamp whose minute or
    second field is 60 or more (e.g. ``"00:12450"``, a typo in questions_real.json)."""
    stamp = str(stamp).strip()
    if not _TIMESTAMP.match(stamp):
        return None
    parts = [int(x) for x in stamp.split(":")]
    if any(p >= 60 for p in parts[1:]) or (len(parts) > 1 and parts[-1] >= 60):
        return None
    return float(sum(p * 60 ** i for i, p in enumerate(reversed(parts))))


_SB_LABEL = re.compile(r"^([A-Z])\.\s*")


def _sb_options(raw, where: str, stats: Counter) -> list[str] | None:
    """StreamingBench options as four texts for A-D, or None when they cannot be read (counted).

    Options written with their ``"A. "`` labels (most of the files) are read by label: a piece
    without a label continues the previous option (a line break in the source:
    ``option_fragment_joined``), an empty piece is dropped (``option_empty_dropped``), a repeated
    label or one after D is dropped (``option_extra_dropped``: the official prompt shows four
    options, A-D). Unlabelled options (sqa) are labelled by position, as the official code does.
    """
    if not isinstance(raw, list) or not raw:
        raise RawFormatError(f"{where}: field 'options' must be a non-empty list, got {raw!r}")
    texts = [_text(o, where, f"options[{i}]") for i, o in enumerate(raw)]
    if not _SB_LABEL.match(texts[0]):
        return _options(texts, where, stats)
    by_label: dict[str, str] = {}
    last = None
    for text in texts:
        m = _SB_LABEL.match(text)
        if m is None:
            if not text.strip(" ."):
                stats["option_empty_dropped"] += 1
            elif last is not None:
                by_label[last] = f"{by_label[last]} {text}"
                stats["option_fragment_joined"] += 1
            continue
        label, body = m.group(1), text[m.end():].strip()
        if label in by_label or label > "D" or not body.strip(" ."):
            stats["option_extra_dropped"] += 1
            last = None
            continue
        by_label[label] = body
        last = label
    if sorted(by_label) != ["A", "B", "C", "D"]:
        return None
    stats["option_letter_prefix_removed"] += 4
    return [by_label[k] for k in "ABCD"]


def _sb_video_stem(video_path: str) -> str:
    return Path(str(video_path)).stem


def _sb_context(previous: list[dict]) -> str:
    """The running context of StreamingBench's sequential QA (src/benchmark/StreamingBenchSQA.py):
    each earlier question of the video with its options and its ground-truth answer."""
    if not previous:
        return ""
    text = ("Here are the contextual information related to the video. Please answer the questions based on "
            "the contextual information: ")
    for q in previous:
        opts = [f"{chr(65 + i)}. {o}" for i, o in enumerate(q["options"])]
        text += (f"At timestamp {q['stamp']}, the following question and answer occurred: Question: {q['question']}; "
                 f"Options: {', '.join(opts)}; Answer: {q['answer']}; ")
    return text


def read_streamingbench(path: Path, task: str | None, stats: Counter) -> Iterator[Candidate]:
    """StreamingBench ``questions_{real,omni,sqa,proactive}.json``.

    - real / omni: one multiple-choice QA record per question, asked at ``time_stamp``.
    - sqa (a list of videos, each a list of entries): the questions of one video form a group,
      asked in order, each with the official running context (earlier questions and their
      ground-truth answers).
    - proactive: one proactive OU record per question: the answer ``ground_truth_output`` due at
      ``ground_truth_time_stamp``, asked at ``time_stamp``.

    Skipped (counted): ``time_stamp_malformed`` (a stamp with a field of 60 or more, e.g.
    ``"00:12450"``); ``options_malformed`` (options that do not give A-D, see :func:`_sb_options`);
    ``answer_not_an_option`` (an answer letter beyond the options).
    """
    data = _load_json(path)
    if not isinstance(data, list):
        raise RawFormatError(f"{path}: expected a list of StreamingBench videos")
    stem = path.stem
    per_video: Counter = Counter()
    for i, entry in enumerate(data):
        group_entries = entry if isinstance(entry, list) else [entry]
        is_group = isinstance(entry, list)
        previous: list[dict] = []
        for j, sub in enumerate(group_entries):
            where = f"{path}: item {i}" + (f"[{j}]" if is_group else "")
            _need(sub, ("questions", "video_path"), where)
            video = Path(str(sub["video_path"])).name
            vstem = _sb_video_stem(sub["video_path"])
            for k, q in enumerate(sub["questions"]):
                qwhere = f"{where} question {k}"
                _need(q, ("task_type", "question", "time_stamp"), qwhere)
                code = STREAMINGBENCH_TASKS.get(q["task_type"])
                if code is None:
                    raise RawFormatError(f"{qwhere}: unknown task_type {q['task_type']!r}; "
                                         f"known: {sorted(STREAMINGBENCH_TASKS)}")
                n = per_video[vstem]
                per_video[vstem] += 1
                sid = f"streamingbench:{stem}:{vstem}:{n}"
                q_time = streamingbench_seconds(q["time_stamp"])
                if q_time is None:
                    stats["time_stamp_malformed"] += 1
                    continue
                meta = {"benchmark": "streamingbench", "benchmark_task": code,
                        "video_categories": sub.get("video_categories"), "time_stamp": q["time_stamp"]}
                if code == "PO":
                    _need(q, ("ground_truth_output", "ground_truth_time_stamp"), qwhere)
                    gt_time = streamingbench_seconds(q["ground_truth_time_stamp"])
                    if gt_time is None:
                        stats["time_stamp_malformed"] += 1
                        continue
                    output = _text(q["ground_truth_output"], qwhere, "ground_truth_output")
                    meta["ground_truth_output"] = output
                    meta["latest_annotated_time"] = gt_time
                    yield Candidate(id=sid, task="OU", video=video, duration=None, question=_text(q["question"], qwhere, "question"),
                                    question_time=q_time,
                                    answers=[{"text": output, "time": gt_time}], meta=meta)
                    continue
                _need(q, ("options", "answer"), qwhere)
                options = _sb_options(q["options"], qwhere, stats)
                if options is None:
                    stats["options_malformed"] += 1
                    continue
                answer = _text(q["answer"], qwhere, "answer").upper()
                if len(answer) != 1 or not "A" <= answer < chr(65 + len(options)):
                    stats["answer_not_an_option"] += 1
                    continue
                group = f"streamingbench:{stem}:{vstem}" if is_group else None
                yield _qa(id=sid, benchmark="streamingbench", task=code, kind="multiple_choice", video=video,
                          duration=None, question=_text(q["question"], qwhere, "question"), question_time=q_time, options=options,
                          answer=answer, group=group, group_index=len(previous) if is_group else 0,
                          context=_sb_context(previous) if is_group else "", meta=meta)
                if is_group:
                    previous.append({"stamp": q["time_stamp"], "question": _text(q["question"], qwhere, "question"),
                                     "options": options, "answer": answer})


# --------------------------------------------------------------------------------------------
# ProactiveVideoQA
# --------------------------------------------------------------------------------------------


def read_proactivevideoqa(path: Path, task: str, stats: Counter) -> Iterator[Candidate]:
    """ProactiveVideoQA ``{WEB,EGO,TV,VAD}_anno.json``: ``[{video, question_id, duration?, conversation, answer}]``.

    The question is the first user turn (at its ``time``); every later user turn (TV: the
    subtitles) is kept, timed, in ``meta.user_turns`` (counted ``subtitle_turns_kept``), to be fed
    into the stream as a user turn. ``NO REPLY`` answers are skipped and counted. EU/TP/TG use
    ``related_timespan`` as the event span; timestamp tasks use t* = ``reply_timespan[0]``, the
    earliest accepted reply. Answers whose StreamPro-F1 windows would absorb one another are
    merged (``close_answers_merged``, :func:`separate_windows`; TG answers are left as they are).
    ``meta.pvqa_answers`` keeps the source answers for PAUC
    (:mod:`streampro.metrics.official`). The subset (WEB, EGO, TV, VAD) is the file stem's
    first part; ids are ``proactivevideoqa:{subset}:{question_id}``.
    """
    subset = path.stem.split("_")[0]
    for i, where, entry in _items(path, "ProactiveVideoQA samples", ("video", "conversation", "answer")):
        users = sorted((t for t in entry["conversation"] if isinstance(t, dict) and t.get("role") == "user"),
                       key=lambda t: _num(t.get("time", 0.0), where, "conversation.time"))
        if not users:
            raise RawFormatError(f"{where}: field 'conversation' has no user turn (the question)")
        q = users[0]
        later = [{"time": _num(t.get("time", 0.0), where, "conversation.time"), "content": _text(t.get("content"), where, "conversation.content")}
                 for t in users[1:]]
        stats["subtitle_turns_kept"] += len(later)
        answers, source_answers = [], []
        for j, a in enumerate(entry["answer"]):
            _need(a, ("content", "reply_timespan"), f"{where} answer[{j}]")
            text = _text(a["content"], f"{where} answer[{j}]", "content")
            if text.upper() == _NO_REPLY:
                stats["no_reply_answer_skipped"] += 1
                continue
            reply = [_num(x, where, f"answer[{j}].reply_timespan") for x in a["reply_timespan"]]
            related = [_num(x, where, f"answer[{j}].related_timespan") for x in (a.get("related_timespan") or reply)]
            source_answers.append({"text": text, "reply_timespan": reply, "related_timespan": related})
            if task in TIMESTAMP_TASKS:
                answers.append({"text": text, "time": reply[0]})
            else:
                answers.append({"text": format_segment(*related) if task in SEGMENT_TASKS else text,
                                "start": related[0], "end": related[1]})
        if task not in SEGMENT_TASKS:
            answers = _separate(task, answers, lambda a, b: f"{a}; {b}", stats, "close_answers_merged")
        duration = entry.get("duration")
        meta = {"benchmark": "proactivevideoqa", "benchmark_task": subset, "pvqa_answers": source_answers}
        if later:
            meta["user_turns"] = later
        yield Candidate(
            id=f"proactivevideoqa:{subset}:{entry.get('question_id', i)}", task=task, video=_text(entry["video"], where, "video"),
            duration=None if duration is None else _num(duration, where, "duration"),
            question=_text(q.get("content"), where, "conversation[0].content"), question_time=_num(q.get("time", 0.0), where, "conversation.time"),
            answers=answers, meta=meta,
        )


def validate_qa(record: dict, where: str) -> dict:
    """Check one real-time QA record (:func:`streampro.metrics.schema.validate_qa_reference`) and
    its times; raise :class:`RawFormatError` naming ``where``."""
    from streampro.metrics.schema import FormatError, reference_time_problems, validate_qa_reference

    try:
        validate_qa_reference(record)
    except FormatError as e:
        raise RawFormatError(f"{where}: {e}") from None
    problems = reference_time_problems(record)
    if problems:
        raise RawFormatError(f"{where}: {problems[0]}")
    return record
