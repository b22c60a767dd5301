"""The ``evaluate`` module loads offline from its folder and agrees with the plain functions.

``evaluate.load`` runs in a subprocess with every Hugging Face offline switch set and a private
HF_HOME, so the test proves the module needs no network and no pre-filled cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from streampro.metrics import compute_streampro_f1

METRIC_DIR = Path(__file__).resolve().parents[2] / "metrics" / "streampro_f1"

REFERENCES = [
    {
        "id": "s1",
        "task": "OU",
        "question": "Tell me when the door opens.",
        "question_time": 0.0,
        "video": "v.mp4",
        "duration": 30.0,
        "answers": [{"text": "The door is open now.", "time": 10.0}],
    },
    {
        "id": 7,
        "task": "EU",
        "question": "Describe each step.",
        "question_time": 1.0,
        "video": "v.mp4",
        "duration": 60,
        "answers": [
            {"text": "cut the onion", "start": 5, "end": 10},
            {"text": "fry the onion", "start": 20, "end": 30},
        ],
    },
    {
        "id": "s3",
        "task": "TG",
        "question": "When does he jump?",
        "question_time": 0.0,
        "video": "v.mp4",
        "duration": 60.0,
        "answers": [{"text": "12-18", "start": 12.0, "end": 18.0}],
    },
]
PREDICTIONS = [
    [{"time": 12.0, "text": "The door is open now."}],
    [
        {"time": 8.0, "text": "cut the onion"},
        {"time": 33.0, "text": "fry onions"},
        {"time": 50.0, "text": "serve"},
    ],
    [{"time": 19.0, "text": "from 13 to 18 seconds"}],
]

SCRIPT = """
import json, sys
import evaluate
data = json.loads(sys.stdin.read())
metric = evaluate.load(data["path"])
out = {"result": metric.compute(predictions=data["predictions"], references=data["references"],
                                judge="lexical", return_per_sample=True)}
try:
    metric.compute(predictions=[[]], references=[{"id": "x", "task": "XX"}])
except ValueError as e:  # the module's FormatError, a ValueError
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_evaluate_load_offline_matches_plain_functions(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "NO_PROXY": "*",
        "HTTPS_PROXY": "http://127.0.0.1:9",  # any attempt to reach the Hub would fail
    }
    payload = json.dumps({"path": str(METRIC_DIR), "predictions": PREDICTIONS, "references": REFERENCES})
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,  # the assertion below shows stderr instead
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = compute_streampro_f1(PREDICTIONS, REFERENCES, judge="lexical", return_per_sample=True)
    assert out["result"] == json.loads(json.dumps(expected))
    # Hand check (lexical judge): OU 2 s late -> 0.5; EU: S = 1 and 0.25 * 0.5 over 3 predictions
    # and 2 items; TG: 0.75 * IoU 5/6.
    assert out["result"]["OU_f1"] == 50.0
    p, r = 1.125 / 3, 1.125 / 2
    assert abs(out["result"]["EU_f1"] - 100 * 2 * p * r / (p + r)) < 1e-9
    assert abs(out["result"]["TG_f1"] - 100 * 0.75 * 5 / 6) < 1e-9
    assert out["result"]["per_sample"][1]["id"] == "7"
    # A bad reference is reported by the metric's validator, with its index.
    assert "references[0]" in out["error"]
