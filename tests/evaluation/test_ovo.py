"""OVO-Bench forward tasks (REC / SSR / CRR) through the evaluation path, judged by exact / contains.

A handful of real OVO-Bench items (``../shared/data/annotations/ovo_bench_new.json``) go through
the data converter (``streampro data convert ovo-bench``) and the bench builder; the real videos
are not available, so synthetic videos of the right duration stand in for them (the converter
probes their durations). The test checks the pipeline end to end, not the model's answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streampro.modeling_streampro.processing_streampro import num_turns

from streampro.cli import evaluate as cli

OVO = Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations" / "ovo_bench_new.json"
# The shortest item of each forward task (REC 16 s, SSR 56 s, CRR 70 s).
ITEM_IDS = {1631, 1550, 1492}


def latest_time(item: dict) -> float:
    times = [t["realtime"] for t in item.get("test_info") or []]
    times += item.get("end_times", []) + item.get("end_time", []) + [item.get("clue_time", 0), item.get("ask_time", 0)]
    return float(max(times))


@pytest.mark.skipif(not OVO.is_file(), reason=f"{OVO} is not available")
def test_ovo_forward_tasks_end_to_end(tmp_path):
    from streampro.dataset_scripts.builders import build
    from streampro.dataset_scripts.converters import convert

    from streampro.backbones import build_tiny_backbone
    from streampro.video import encode_video

    items = json.loads(OVO.read_text())
    chosen = [x for x in items if x["id"] in ITEM_IDS]
    (tmp_path / "ovo.json").write_text(json.dumps(chosen))
    videos = tmp_path / "videos"
    for item in chosen:  # 1-fps synthetic stand-ins, 2 s longer than the latest annotated time
        n = int(latest_time(item)) + 2
        path = videos / item["video"]
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_video(path, [np.full((32, 32, 3), (7 * j) % 256, np.uint8) for j in range(n)], fps=1)

    convert("ovo-bench", tmp_path / "ovo.json", tmp_path / "converted.jsonl", video_root=videos, progress=False)
    # The timed-answer (proactive) records; the forward checkpoint questions (lines with "kind") run
    # through `evaluate --benchmark-suite ovo-bench` (tests/evaluation/test_suite.py).
    proactive = [line for line in (tmp_path / "converted.jsonl").read_text().splitlines() if '"kind"' not in line]
    assert len(proactive) == 3
    (tmp_path / "raw.jsonl").write_text("\n".join(proactive) + "\n")
    build("bench", tmp_path / "raw.jsonl", tmp_path / "bench", split="test")
    bench = tmp_path / "bench" / "test.jsonl"

    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    ckpt = tmp_path / "ckpt"
    tb.model.save_pretrained(ckpt)
    tb.processor.save_pretrained(ckpt)
    out = tmp_path / "run"
    rc = cli.main([str(a) for a in ["--model", ckpt, "--benchmark", bench, "--video-root", videos, "--out", out,
                                    "--judge", "contains", "--max-new-tokens", "1", "--no-progress",
                                    "--plot-samples", "1", "--fps", "0.5"]])  # 0.5 fps: half the frames
    assert rc == 0

    report = json.loads((out / "report.json").read_text())
    assert report["judge"]["name"] == "contains"
    assert report["errors"]["count"] == 0 and report["results"]["num_samples"] == 3
    # REC and SSR map to EU (one span per repetition / step), CRR to OU (t* = clue time).
    assert {s["id"]: s["task"] for s in report["per_sample"]} == {
        "ovo-bench:1631": "EU", "ovo-bench:1550": "EU", "ovo-bench:1492": "OU"}
    assert {"EU_f1", "OU_f1", "PU_f1", "w_avg_f1"} <= set(report["results"])
    assert not {"AA_f1", "TG_f1", "TR_f1", "PA_f1"} & set(report["results"])
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    refs = [json.loads(line) for line in bench.read_text().splitlines()]
    for rec, ref in zip(records, refs):
        assert len(rec["events"]) == num_turns(ref["duration"], 0.5)  # the whole synthetic video was streamed
        assert [e["t"] for e in rec["events"][:2]] == [2.0, 4.0]
    assert "| EU | PU | 2 |" in (out / "report.md").read_text()

    # The same predictions under the exact judge (the harness's scoring step, without re-streaming).
    from streampro.metrics import make_judge

    from streampro.evaluation.report import score_run

    exact = score_run(records, refs, make_judge("exact"))
    assert exact["judge"]["name"] == "exact" and exact["results"]["num_samples"] == 3
    assert {"EU_f1", "OU_f1"} <= set(exact["results"])
    # exact match is never more lenient than containment
    assert exact["results"]["w_avg_f1"] <= report["results"]["w_avg_f1"]
