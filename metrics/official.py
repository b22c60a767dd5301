"""The official scores of OVO-Bench, StreamingBench and ProactiveVideoQA, from their published rules.

``streampro score --benchmark NAME`` and ``streampro evaluate --benchmark-suite NAME`` call
:func:`score_benchmark`. References are the lines ``streampro data convert`` writes for the
benchmark (docs/data.md, "Streaming benchmarks"): real-time QA records (``kind``) and proactive
records (timed answers, ``meta.benchmark_task``). Predictions: ``{"id", "answer"}`` for a QA
record, ``{"id", "predictions": [{time, text}]}`` for a proactive record. A question with no
prediction line counts as wrong (``missing``).

Rules (docs/metric.md, "Official benchmark scores", cites each source file):

- **OVO-Bench** (JoeLeelyf/OVO-Bench ``utils/OVOBenchScore.py``): backward tracing and real-time
  perception: per-task accuracy of the chosen letter; forward active responding: per-task
  accuracy over every checkpoint (REC: the digits of the reply equal the count; SSR / CRR: the
  reply is ``"Y"`` / ``"N"`` or contains ``"Yes"`` / ``"No"``, case as written). Category
  averages are plain means of their tasks; ``Overall`` the mean of the categories present.
- **StreamingBench** (THUNLP-MT/StreamingBench ``src/data/count.py``): per-task accuracy of the
  chosen letter; each category's ``All`` and ``Overall`` are accuracies over all their questions.
  Proactive Output: the model's first response at or after the question counts; correct when
  it is within 2 s of the ground-truth time and contains ``ground_truth_output``
  (``PO`` = that accuracy; ``PO time`` = the timing part alone).
- **ProactiveVideoQA** (yellow-binary-tree/ProactiveVideoQA ``pauc/judge_llm_scores_openai.py``):
  PAUC per subset (WEB, EGO, TV, VAD), the mean over all their answers, and the mean of the
  subsets; see :func:`pauc_answer` and :func:`pauc_turns`.

The letter of a multiple-choice reply is parsed by :func:`parse_choice` (the official scripts
compare the first character, or test ``letter in reply``; a parser that reads "The answer is
(B)." is the one deviation, counted as ``unparseable`` when it finds no letter).
"""

from __future__ import annotations

import re
from collections import defaultdict

from streampro.metrics.schema import (
    FormatError,
    is_qa_record,
    validate_predictions,
    validate_qa_reference,
    validate_reference,
)

BENCHMARKS = ("ovo-bench", "streamingbench", "proactivevideoqa")

# Table columns per benchmark: (category, its task codes) in the papers' order.
COLUMNS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "ovo-bench": (
        ("Backward", ("EPM", "ASI", "HLD")),
        ("Real-Time", ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")),
        ("Forward", ("REC", "SSR", "CRR")),
    ),
    "streamingbench": (
        ("Real-Time", ("OP", "CR", "CS", "ATP", "EU", "TR", "PR", "SU", "ACP", "CT")),
        ("Omni-Source", ("ER", "SCU", "SD", "MA")),
        ("Contextual", ("ACU", "MCU", "SQA", "PO")),
    ),
    "proactivevideoqa": (("PAUC", ("WEB", "EGO", "TV", "VAD")),),
}
STREAMINGBENCH_PO_TOLERANCE = 2.0  # seconds either side of the ground-truth time (count.py)


# --------------------------------------------------------------------------------------------
# Parsing replies
# --------------------------------------------------------------------------------------------

_ALONE = re.compile(r"^\W*\(?([A-Za-z])\)?\W*$")
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[.):]|\s*$)")
_KEYWORD = re.compile(r"\b(?:answer|option|choice)\b\s*(?:is|:|would be|=)?\s*:?\s*\(?([A-Za-z])\b\)?", re.I)
_MARKED = re.compile(r"\(([A-Z])\)|(?<![A-Za-z])([A-Z])[.)](?=\s|$)")


def parse_choice(text: str | None, n_options: int = 4) -> str | None:
    """The option letter a free-text reply chooses, or None when it names none (or several).

    ``"B"``, ``"(b)"``, ``"B. a red car"``, ``"B) red"``, ``"The answer is (B)."``,
    ``"Answer: b"``, ``"I think (C) is right"`` -> the letter; letters beyond the options are
    not choices.
    """
    if not text:
        return None
    valid = {chr(65 + i) for i in range(n_options)}
    text = text.strip()
    for pattern in (_ALONE, _LEADING, _KEYWORD):
        m = pattern.search(text)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    found = {a or b for a, b in _MARKED.findall(text)} & valid
    return found.pop() if len(found) == 1 else None


def ovo_forward_correct(task: str, reply: str, answer: str) -> bool:
    """One OVO-Bench forward checkpoint (``calculate_score_forward``): REC compares the digits of
    the reply with the count; SSR / CRR accept ``"Y"`` / ``"N"`` exactly or the word as a substring."""
    if task == "REC":
        return "".join(re.findall(r"\d+", reply)) == answer
    if (reply == "N" and answer == "No") or (reply == "Y" and answer == "Yes"):
        return True
    return answer in reply


# --------------------------------------------------------------------------------------------
# PAUC
# --------------------------------------------------------------------------------------------

# The official scorer's constants (docs/metric.md, "PAUC"): the judge scores 1-3, used as
# y = score - 1 in {0, 1, 2}; the curve starts at y = 0.5 before the first judged reply. Our
# judges score in [0, 1] (= y / 2), so the starting level is 0.5 / 2.
PAUC_OMEGAS = (0.0, 0.5, 1.0)
PAUC_DEFAULT_OMEGA = 0.5
PAUC_START = 0.25


def _pauc_points(predictions: list[dict], ans: dict, similarity) -> list[tuple[float, float]]:
    """The judged points ``(time, score)`` of one ground-truth answer, after the official filter."""
    s, e = (float(x) for x in ans["reply_timespan"])
    related_end = float((ans.get("related_timespan") or ans["reply_timespan"])[1])
    inside = sorted((p for p in predictions if s <= float(p["time"]) <= e), key=lambda p: float(p["time"]))
    said: list[str] = []
    scores: dict[float, float] = {}
    for p in inside:
        if p["text"] in said:  # a repeated reply is not judged again
            continue
        said.append(p["text"])
        # The judge sees every distinct reply of the span so far, joined by spaces; a later
        # reply at the same time replaces the earlier one's point.
        scores[float(p["time"])] = float(similarity(" ".join(said), ans["text"]))
    points = sorted(scores.items())
    if len(points) <= 1:
        return points
    # A reply after the related span (still inside the reply span) that scores lower than the
    # last one inside the related span is dropped: it is most likely the next answer's reply.
    kept, last_in_related = [], 0.0
    for t, y in points:
        if t <= related_end:
            last_in_related = y
        elif y < last_in_related:
            continue
        kept.append((t, y))
    return kept


def pauc_answer(points: list[tuple[float, float]], span: tuple[float, float], omega: float = PAUC_DEFAULT_OMEGA) -> float:
    """PAUC of one ground-truth answer from its judged points, in [0, 1].

    The curve is a step function on [0, e − s]: PAUC_START until the first point, then each
    point's score from its time on; a point at offset x = t − s is drawn at x·(1 − ω), so ω = 0
    weighs timeliness fully and ω = 1 keeps only the last score. The area is divided by e − s.
    No point: PAUC_START. A zero-length span (which the official code cannot score, and no
    ProactiveVideoQA answer has): the last point's score, the limit of the area ratio.
    """
    if not points:
        return PAUC_START
    s, e = span
    width = e - s
    if width <= 0:
        return points[-1][1]
    area, prev_x, prev_y = 0.0, 0.0, PAUC_START
    for t, y in sorted(points):
        x = (t - s) * (1 - omega)
        area += (x - prev_x) * prev_y
        prev_x, prev_y = x, y
    area += (width - prev_x) * prev_y
    return area / width


def pauc_turns(predictions: list[dict], answers: list[dict], similarity,
               omegas=(PAUC_DEFAULT_OMEGA,)) -> list[dict[float, float]]:
    """PAUC of every ground-truth answer of one sample: ``[{omega: value}]`` in answer order.

    ``answers``: ``meta.pvqa_answers`` (``text``, ``reply_timespan``, ``related_timespan``);
    ``predictions``: ``[{time, text}]``; ``similarity(prediction_text, answer_text)`` in [0, 1].
    """
    out = []
    for ans in answers:
        points = _pauc_points(predictions, ans, similarity)
        span = tuple(float(x) for x in ans["reply_timespan"])
        out.append({w: pauc_answer(points, span, w) for w in omegas})
    return out


def pauc(predictions: list[dict], answers: list[dict], similarity, omega: float = PAUC_DEFAULT_OMEGA) -> float:
    """PAUC of one ProactiveVideoQA sample at ``omega``, in [0, 1]: the mean over its answers
    (a subset's PAUC is the mean over all answers of all its samples, :func:`score_benchmark`)."""
    turns = pauc_turns(predictions, answers, similarity, (omega,))
    return sum(t[omega] for t in turns) / len(turns) if turns else 0.0


# --------------------------------------------------------------------------------------------
# Scoring a benchmark
# --------------------------------------------------------------------------------------------


def _records(predictions) -> dict[str, dict]:
    if isinstance(predictions, dict):
        return {str(k): v for k, v in predictions.items()}
    out = {}
    for rec in predictions:
        out[str(rec["id"])] = rec
    return out


def _task_of(ref: dict) -> str:
    return ref["task"] if is_qa_record(ref) else (ref.get("meta") or {}).get("benchmark_task", ref["task"])


def _benchmark_of(ref: dict) -> str | None:
    return ref["benchmark"] if is_qa_record(ref) else (ref.get("meta") or {}).get("benchmark")


def _similarity(judge):
    from streampro.metrics.judges import JudgeError, JudgeRequest, make_judge

    judge = make_judge(judge) if isinstance(judge, str) else judge
    cache: dict[tuple[str, str], float] = {}

    def similarity(pred: str, ref: str, question: str = "") -> float:
        key = (question, pred, ref)
        if key not in cache:
            (score,) = judge.score_batch([JudgeRequest(question, pred, ref)])
            if not isinstance(score, (int, float)):
                raise JudgeError(f"the judge could not score a PAUC pair: {score}")
            cache[key] = float(score)
        return cache[key]

    return similarity, judge


def score_benchmark(name: str, predictions, references: list[dict], *, judge="lexical",
                    streampro_f1: bool = True, pauc_omega: float = PAUC_DEFAULT_OMEGA) -> dict:
    """Score ``predictions`` against a converted benchmark's ``references`` by its official rules.

    ``predictions``: a list of prediction records or ``{id: record}``. Returns ``{"benchmark",
    "results": {task or summary column: score 0-100}, "counts": {task: {n, correct, missing,
    unparseable}}, "per_sample": [...], "table": str, "streampro_f1": dict | None}``; ``results``
    has one key per task present. ``judge`` scores PAUC's content and StreamPro-F1 (on the
    proactive records, where ``streampro_f1``). ProactiveVideoQA: ``results`` holds PAUC at
    ``pauc_omega`` (the official scorer prints ω = 0, 0.5 and 1; ``report["pauc"]`` has all
    three). Raises :class:`FormatError` for records of the wrong kind or benchmark, and for
    predictions of ids not in the references.
    """
    if name not in BENCHMARKS:
        raise FormatError(f"unknown benchmark {name!r}; use one of {list(BENCHMARKS)}")
    preds = _records(predictions)
    ref_ids = {str(r["id"]) for r in references}
    extra = sorted(set(preds) - ref_ids)
    if extra:
        raise FormatError(f"prediction id(s) {extra[:5]} are not in the references; remove them")
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "correct": 0, "missing": 0, "unparseable": 0})
    sums: dict[float, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # PAUC sums: omega -> subset
    turns: dict[str, int] = defaultdict(int)  # PAUC answers per subset
    omegas = tuple(dict.fromkeys((*PAUC_OMEGAS, float(pauc_omega))))
    po_time: dict[str, int] = defaultdict(int)
    per_sample, proactive_refs, proactive_preds = [], [], []
    similarity = judge_used = None
    for ref in references:
        bench = _benchmark_of(ref)
        if bench != name:
            raise FormatError(f"reference {ref.get('id')!r} belongs to {bench!r}, not {name!r}; "
                              f"score each benchmark's references on their own")
        task, rid = _task_of(ref), str(ref["id"])
        rec = preds.get(rid)
        # OVO-Bench's proactive records (REC/SSR/CRR) are scored by StreamPro-F1 only; their
        # official score comes from the checkpoint QA records.
        official = is_qa_record(ref) or name != "ovo-bench"
        c = counts[task] if official else defaultdict(int)
        c["n"] += 1
        if rec is None:
            c["missing"] += 1
        if is_qa_record(ref):
            qa = validate_qa_reference(ref)
            reply = "" if rec is None else (rec.get("answer") or "")
            if qa.kind == "multiple_choice":
                letter = parse_choice(reply, len(qa.options))
                if rec is not None and letter is None:
                    c["unparseable"] += 1
                ok = letter == qa.answer
            else:
                ok = rec is not None and ovo_forward_correct(task, reply.strip(), qa.answer)
            c["correct"] += ok
            per_sample.append({"id": rid, "task": task, "correct": bool(ok)})
            continue
        validate_reference(ref)
        timed = [] if rec is None else [{"time": p.time, "text": p.text}
                                        for p in validate_predictions(rec.get("predictions", []))]
        proactive_refs.append(ref)
        proactive_preds.append(timed)
        if name == "proactivevideoqa":
            if similarity is None:
                similarity, judge_used = _similarity(judge)
            question = ref.get("question") or ""
            values = pauc_turns(timed, ref["meta"]["pvqa_answers"],
                                lambda p, r, q=question: similarity(p, r, q), omegas)
            for w in omegas:
                sums[w][task] += sum(v[w] for v in values)
            turns[task] += len(values)
            mean = sum(v[pauc_omega] for v in values) / len(values) if values else 0.0
            per_sample.append({"id": rid, "task": task, "pauc": 100 * mean, "answers": len(values)})
        elif name == "streamingbench":  # Proactive Output
            after = [p for p in timed if p["time"] >= float(ref["question_time"])]
            gt_time = float(ref["answers"][0]["time"])
            on_time = bool(after) and abs(after[0]["time"] - gt_time) <= STREAMINGBENCH_PO_TOLERANCE
            ok = on_time and ref["meta"]["ground_truth_output"] in after[0]["text"]
            po_time[task] += on_time
            c["correct"] += ok
            per_sample.append({"id": rid, "task": task, "correct": ok, "on_time": on_time})
    results: dict[str, float] = {}
    for category, tasks in COLUMNS[name]:
        present = [t for t in tasks if counts.get(t, {}).get("n")]
        if name == "proactivevideoqa":
            # The official mean is over answers (every answer of every sample weighs the same).
            for t in present:
                results[t] = 100 * sums[pauc_omega][t] / turns[t] if turns[t] else 0.0
            if present:
                results["Avg"] = sum(results[t] for t in present) / len(present)
            continue
        for t in present:
            results[t] = 100 * counts[t]["correct"] / counts[t]["n"]
            if t == "PO":
                results["PO time"] = 100 * po_time[t] / counts[t]["n"]
        if not present:
            continue
        if name == "ovo-bench":
            results[f"{category} Avg"] = sum(results[t] for t in present) / len(present)
        else:
            n = sum(counts[t]["n"] for t in present)
            results[f"{category} All"] = 100 * sum(counts[t]["correct"] for t in present) / n
    cats = [k for k in results if k.endswith(" Avg")]
    if name == "ovo-bench" and cats:
        results["Overall"] = sum(results[k] for k in cats) / len(cats)
    if name == "streamingbench":
        scored = [s for s in per_sample if "correct" in s]
        if scored:
            results["Overall"] = 100 * sum(s["correct"] for s in scored) / len(scored)
    f1 = None
    if streampro_f1 and proactive_refs:
        from streampro.metrics.f1 import compute_streampro_f1

        plain = [{k: r[k] for k in ("id", "task", "question", "question_time", "video", "duration", "answers")}
                 for r in proactive_refs]
        f1 = compute_streampro_f1(proactive_preds, plain, judge=judge_used or judge)
    report = {"benchmark": name, "results": results, "counts": {k: dict(v) for k, v in counts.items()},
              "per_sample": per_sample, "streampro_f1": f1}
    if name == "proactivevideoqa":
        report["pauc_omega"] = float(pauc_omega)
        report["pauc"] = {w: {t: 100 * sums[w][t] / turns[t] for t in turns if turns[t]} for w in omegas}
    report["table"] = format_table(report)
    return report


def format_table(report: dict) -> str:
    """The benchmark's own table: its task codes as columns, grouped by category (as in its paper)."""
    results, name = report["results"], report["benchmark"]
    lines = []
    for category, tasks in COLUMNS[name]:
        cols = [t for t in tasks if t in results]
        extra = [k for k in (f"{category} Avg", f"{category} All", "PO time", "Avg") if k in results
                 and (k != "PO time" or "PO" in cols) and (k != "Avg" or name == "proactivevideoqa")]
        if not cols:
            continue
        head = cols + extra
        width = max(8, *(len(h) + 2 for h in head))
        lines.append(f"{category} (omega={report['pauc_omega']:g})" if "pauc_omega" in report else category)
        lines.append("".join(f"{h:>{width}}" for h in head))
        lines.append("".join(f"{results[h]:>{width}.1f}" for h in head))
        lines.append("".join(f"{'N=' + str(report['counts'][t]['n']):>{width}}" for t in cols))
        lines.append("")
    if "Overall" in results:
        lines.append(f"Overall: {results['Overall']:.1f}")
    missing = sum(c["missing"] for c in report["counts"].values())
    unparseable = sum(c["unparseable"] for c in report["counts"].values())
    lines.append(f"questions: {sum(c['n'] for c in report['counts'].values())}, missing predictions: {missing}, "
                 f"unparseable answers: {unparseable}")
    f1 = report.get("streampro_f1")
    if f1:
        lines.append(f"StreamPro-F1 on the proactive records ({f1['num_samples']} samples): W-Avg F1 "
                     f"{f1['w_avg_f1']:.1f}")
    return "\n".join(lines)
