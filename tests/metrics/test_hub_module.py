"""The ``evaluate`` module is self-contained: a copy of ``metrics/streampro_f1/`` loads and scores in a
process where ``streampro`` cannot be imported, with the same numbers as the package.

The subprocess runs ``python -I`` (no PYTHONPATH, no current directory on sys.path), drops the
editable install's import hook and every path inside the repository (but the virtualenv), and checks that
``import streampro`` fails before loading the copy with ``evaluate.load(str(copy))`` — what a Hub
copy of the folder sees. It also builds the Space widget (``app.py``) and scores through it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streampro.metrics import compute_streampro_f1, make_judge

REPO = Path(__file__).resolve().parents[2]
METRIC_DIR = REPO / "metrics" / "streampro_f1"

ISOLATED = """
import importlib.util, json, os, runpy, sys
repo = os.path.realpath(sys.argv[1])
sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith("__editable__")]
venv = os.path.realpath(sys.prefix)  # the virtualenv may live inside the repository: keep it
sys.path[:] = [p for p in sys.path
               if os.path.realpath(p or ".").startswith(venv) or not os.path.realpath(p or ".").startswith(repo)]
assert importlib.util.find_spec("streampro") is None, "streampro is still importable"
import evaluate
data = json.loads(sys.stdin.read())
metric = evaluate.load(data["path"])
results = {judge: metric.compute(predictions=data["predictions"], references=data["references"], judge=judge,
                                 return_per_sample=True)
           for judge in data["judges"]}
try:
    metric.compute(predictions=[[]], references=[{"id": "x", "task": "XX"}])
except ValueError as e:
    results["error"] = str(e)
try:
    metric.compute(predictions=data["predictions"], references=data["references"], judge="llm")
except ValueError as e:
    results["llm_error"] = str(e)
if data["app"]:
    app = runpy.run_path(os.path.join(data["path"], "app.py"))
    results["app"] = app["score"](json.dumps(data["predictions"]), json.dumps(data["references"]), "exact")
assert importlib.util.find_spec("streampro") is None
print(json.dumps(results))
"""


def _samples():
    """Several samples over every task: early, late, unmatched and duplicate responses, a TG parse
    failure, interval tasks, and RF's asymmetric τ."""
    ref = lambda i, task, answers, q=0.0: {"id": f"s{i}", "task": task, "question": f"question {i}?",
                                           "question_time": q, "video": f"v{i}.mp4", "duration": 60.0,
                                           "answers": answers}
    references = [
        ref(0, "OU", [{"text": "The door is open now.", "time": 10.0}]),
        ref(1, "EU", [{"text": "cut the onion", "start": 5, "end": 10}, {"text": "fry the onion", "start": 20, "end": 30}]),
        ref(2, "TG", [{"text": "12s - 18s", "start": 12.0, "end": 18.0}]),
        ref(3, "AA", [{"text": "alert: a fire started", "time": 7.0}]),
        ref(4, "TP", [{"text": "the blue circle grew", "start": 3.0, "end": 4.0}], q=1.0),
        ref(5, "GP", [{"text": "next: place the green block", "time": 9.0}, {"text": "done", "time": 15.0}]),
        ref(6, "RF", [{"text": "warning: wall ahead, stop", "time": 20.0}]),
        ref(7, "TG", [{"text": "2s - 5s", "start": 2.0, "end": 5.0}]),
        ref(8, "OU", [{"text": "a green circle appeared", "time": 3.0}]),
    ]
    predictions = [
        [{"time": 12.0, "text": "The door is open now."}],
        [{"time": 8.0, "text": "cut the onion"}, {"time": 33.0, "text": "fry onions"}, {"time": 50.0, "text": "serve"}],
        [{"time": 19.0, "text": "from 13 to 18 seconds"}],
        [{"time": 9.5, "text": "alert: fire"}, {"time": 11.0, "text": "alert: a fire started"}],
        [{"time": 5.0, "text": "The blue circle grew"}],
        [{"time": 7.0, "text": "next: place the green block"}, {"time": 15.0, "text": "done"}],
        [{"time": 19.5, "text": "warning: wall ahead, stop"}],
        [{"time": 5.0, "text": "it happens near the start"}],
        [],
    ]
    return predictions, references


def _run(tmp_path, judges, app=False):
    copy = tmp_path / "hub_copy" / "streampro_f1"
    shutil.copytree(METRIC_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    predictions, references = _samples()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="*", HTTPS_PROXY="http://127.0.0.1:9")
    payload = {"path": str(copy), "predictions": predictions, "references": references, "judges": judges, "app": app}
    proc = subprocess.run([sys.executable, "-I", "-c", ISOLATED, str(REPO)], input=json.dumps(payload), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), predictions, references


def test_a_copy_of_the_module_scores_like_the_package_without_streampro(tmp_path):
    judges = ["exact", "contains", "lexical"]
    out, predictions, references = _run(tmp_path, judges)
    for judge in judges:
        expected = compute_streampro_f1(predictions, references, judge=judge, return_per_sample=True)
        assert out[judge] == json.loads(json.dumps(expected)), judge
    # The samples exercise the maths: a TG parse failure, every task, both judges' differences.
    assert out["lexical"]["parse_failures"] == 1 and out["lexical"]["num_samples"] == len(references)
    assert {f"{t}_f1" for t in ("EU", "OU", "AA", "TP", "TG", "GP", "RF")} <= set(out["lexical"])
    assert out["exact"]["EU_f1"] < out["lexical"]["EU_f1"]
    assert "references[0]" in out["error"] and "missing field" in out["error"]
    assert "streampro.metrics.make_judge('llm'" in out["llm_error"]


def test_the_package_llm_judge_object_works_with_a_module_loaded_by_evaluate(tmp_path):
    """A judge object built by the package (its own JudgeFailure class) passed to an evaluate-loaded
    copy: scores and failures are read the same way (failures exclude the sample)."""
    import evaluate
    from streampro.metrics import JudgeFailure

    class HalfFailing:
        def score_batch(self, requests):
            return [JudgeFailure("endpoint down") if "onion" in r.reference else 0.5 for r in requests]

    copy = tmp_path / "streampro_f1"
    shutil.copytree(METRIC_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    predictions, references = _samples()
    metric = evaluate.load(str(copy))
    got = metric.compute(predictions=predictions, references=references, judge=HalfFailing())
    assert got == compute_streampro_f1(predictions, references, judge=HalfFailing())
    assert got["excluded_samples"] == 1 and got["judge_failures"] == 2


@pytest.mark.slow
def test_the_space_widget_scores_with_its_own_copy(tmp_path):
    pytest.importorskip("gradio")
    out, predictions, references = _run(tmp_path, ["exact"], app=True)
    assert out["app"] == json.loads(json.dumps(compute_streampro_f1(predictions, references, judge="exact")))


def test_embedding_judge_is_part_of_the_module():
    pytest.importorskip("wordllama")
    from streampro.metrics.streampro_f1 import judges as module_judges

    assert type(make_judge("embedding")) is module_judges.EmbeddingJudge
