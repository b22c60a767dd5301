"""The fixed-time baseline: per task, one answer at one constant time, both chosen on VALIDATION.

A model that answers on a schedule, without watching the video, scores what this baseline scores;
a model "works" on a task only when it beats it (docs/reproduce.md, "Controls").
"""

from __future__ import annotations

import json
from collections import Counter

from streampro.dataset_scripts.manifest import write_text_atomic
from streampro.jsonl import read_jsonl
from streampro.reproduce.run import Run


def fixed_time_baseline(run: Run) -> dict:
    """Per task: the constant answer time and most common answer that maximise VALIDATION F1, scored on test.

    With a control task, the same is done for it (``control_validation`` → ``control_test``), apart.
    """
    path = run.out / "baseline" / "baseline.json"
    with run.stage("baseline", path.is_file()) as todo:
        if todo:
            bench = run.data / "bench"
            result = _fit_constant(read_jsonl(bench / "validation.jsonl"), read_jsonl(bench / "test.jsonl"))
            if run.recipe.control_clips:
                result["control"] = _fit_constant(read_jsonl(bench / "control_validation.jsonl"),
                                                  read_jsonl(bench / "control_test.jsonl"))
            write_text_atomic(path, json.dumps(result, indent=2) + "\n")  # the stage's completion mark
    return json.loads(path.read_text())


def _fit_constant(validation: list[dict], test: list[dict]) -> dict:
    from streampro.metrics import TASKS, compute_streampro_f1

    choice = {}
    for task in TASKS:
        refs = [r for r in validation if r["task"] == task]
        if not refs:
            continue
        answer = Counter(a["text"] for r in refs for a in r["answers"]).most_common(1)[0][0]
        longest = int(max(r["duration"] for r in refs))
        best = None
        for t in range(1, longest + 1):
            preds = [_constant(t, answer, r) for r in refs]
            f1 = compute_streampro_f1(preds, refs, judge="exact")[f"{task}_f1"]
            if best is None or f1 > best[0]:  # the earliest time wins ties
                best = (f1, t)
        choice[task] = {"time": float(best[1]), "answer": answer, "validation_f1": best[0]}
    preds = [_constant(choice[r["task"]]["time"], choice[r["task"]]["answer"], r) for r in test]
    return {"choice": choice, "results": compute_streampro_f1(preds, test, judge="exact")}


def _constant(t: float, answer: str, ref: dict) -> list[dict]:
    # A clip shorter than t gets no answer at all (it scores 0, like a model that stays silent).
    return [{"time": float(t), "text": answer}] if t <= ref["duration"] else []
