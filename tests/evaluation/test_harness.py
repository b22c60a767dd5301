"""``streampro evaluate``: a Synth run end to end, kill -9 and resume, bad inputs, run-directory checks.

A tiny StreamPro model (random weights) is built in-process and saved to a temporary checkpoint;
the Synth benchmark comes from ``streampro data synth`` (7 clips, one per task) and the resume
tests use hand-made 5-second clips so that they stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streampro.modeling_streampro.processing_streampro import num_turns

from streampro.cli import evaluate as cli
from streampro.evaluation.harness import RunError, merge_predictions, read_records

# Answers of at most 3 tokens keep a random tiny model fast (it responds on about half the frames).
FAST = ["--max-new-tokens", "3", "--no-progress", "--plot-samples", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from streampro.backbones import build_tiny_backbone

    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    d = tmp_path_factory.mktemp("ckpt")
    tb.model.save_pretrained(d)
    tb.processor.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from streampro.dataset_scripts.synth import generate

    d = tmp_path_factory.mktemp("synth")
    generate(d, n=7, seed=0, size=32, progress=False)  # one clip per task, all in the train split
    return d


def write_short_bench(root: Path, n: int, seconds: int = 5) -> Path:
    """``n`` clips of ``seconds`` s (a square that changes colour at 3 s) and their references."""
    from streampro.video import encode_video

    root.mkdir(parents=True, exist_ok=True)
    refs = []
    for i in range(n):
        frames = []
        for j in range(seconds * 2):  # 2 fps
            frame = np.zeros((32, 32, 3), np.uint8)
            frame[8:24, 8:24] = (200, 40, 40) if j < 6 else (40, 40, 200)
            frame[0, i % 32] = 255  # makes every clip different
            frames.append(frame)
        encode_video(root / f"clip{i}.mp4", frames, fps=2)
        if i % 2:
            refs.append({"id": f"clip-{i}", "task": "OU", "question": "Tell me when the square changes colour.",
                         "question_time": 0.0, "video": f"clip{i}.mp4", "duration": float(seconds),
                         "answers": [{"text": "the red square turned blue", "time": 3.0}]})
        else:
            refs.append({"id": f"clip-{i}", "task": "EU", "question": "Describe each event as it finishes.",
                         "question_time": 1.0, "video": f"clip{i}.mp4", "duration": float(seconds),
                         "answers": [{"text": "the square turned blue", "start": 2.0, "end": 3.0}]})
    bench = root / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in refs))
    return bench


def evaluate(*argv) -> int:
    return cli.main([str(a) for a in argv])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------------------


def test_registered_in_streampro_cli(monkeypatch, tmp_path, capsys):
    import streampro.cli

    assert streampro.cli.COMMANDS["evaluate"][0] == "streampro.cli.evaluate"
    # Through the top-level command (only this sub-command registered, so others cannot interfere).
    monkeypatch.setattr(streampro.cli, "COMMANDS", {"evaluate": streampro.cli.COMMANDS["evaluate"]})
    rc = streampro.cli.main(["evaluate", "--benchmark", str(tmp_path / "b.jsonl"), "--video-root",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "--video-root" in err and "no such directory" in err


def test_synth_run_end_to_end(checkpoint, synth, tmp_path):
    out = tmp_path / "run"
    bench = synth / "bench" / "train.jsonl"
    args = ["--model", checkpoint, "--benchmark", bench, "--video-root", synth, "--out", out,
            "--max-new-tokens", "1", "--no-progress", "--plot-samples", "2"]  # 1-token answers: 7 clips stay fast
    assert evaluate(*args) == 0
    refs = lines(bench)
    records = lines(out / "predictions.jsonl")
    assert [r["id"] for r in records] == [r["id"] for r in refs]  # one record per sample, benchmark order
    for rec, ref in zip(records, refs):
        assert rec["error"] is None
        assert len(rec["events"]) == num_turns(ref["duration"])  # one event per 1-fps frame
        for e in rec["events"]:
            if e["t"] < ref["question_time"]:
                assert e["d"] == "before_question" and e["p"] is None
            else:
                assert e["d"] in ("silence", "response") and 0.0 <= e["p"] <= 1.0
        # predictions are exactly the response turns, at the turn times
        assert [p["time"] for p in rec["predictions"]] == [e["t"] for e in rec["events"] if e["d"] == "response"]

    report = json.loads((out / "report.json").read_text())
    results = report["results"]
    assert results["num_samples"] == 7 and results["num_errors"] == 0 and report["errors"]["count"] == 0
    assert {f"{t}_f1" for t in ("EU", "OU", "AA", "TP", "TG", "GP", "RF")} <= set(results)
    # The harness scores with the metric package: `streampro score`'s loader on the same files agrees.
    from streampro.metrics import compute_streampro_f1
    from streampro.metrics.inputs import load_inputs

    preds, loaded_refs = load_inputs(out / "predictions.jsonl", bench)
    expected = compute_streampro_f1(preds, loaded_refs, judge="lexical")
    assert {k: results[k] for k in expected} == expected

    md = (out / "report.md").read_text()
    assert "| Task | Dim | N | Time | Acc | P | R | F1 |" in md and "| PU | TR | PA | Avg | W-Avg |" in md
    assert "| RF | PA | 1 |" in md
    config = json.loads((out / "run_config.json").read_text())
    assert config["protocol"] == "streampro" and config["window_turns"] == 200 and config["max_new_tokens"] == 1
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "task_f1.png" in plots
    assert len([p for p in plots if p.startswith("timeline_")]) == 2
    assert len([p for p in plots if p.startswith("p_response_")]) == 2

    # Running again finds everything done: same report, nothing re-evaluated (no duplicated lines).
    before = (out / "report.json").read_text()
    assert evaluate(*args) == 0
    assert (out / "report.json").read_text() == before
    assert len(lines(out / "predictions.jsonl")) == 7


def test_refuses_a_run_directory_made_with_other_arguments(checkpoint, tmp_path, capsys):
    bench = write_short_bench(tmp_path / "clips", 1)
    out = tmp_path / "run"
    common = ["--model", checkpoint, "--benchmark", bench, "--video-root", bench.parent, "--out", out, "--no-progress"]
    assert evaluate(*common, "--max-new-tokens", "2") == 0
    capsys.readouterr()
    assert evaluate(*common, "--max-new-tokens", "3") == 2
    err = capsys.readouterr().err
    assert "different arguments" in err and "max_new_tokens: run directory has 2, this command has 3" in err
    # An edited benchmark file is a different benchmark too.
    bench.write_text(bench.read_text().replace("Describe", "Explain"))
    assert evaluate(*common, "--max-new-tokens", "2") == 2
    assert "benchmark_sha256" in capsys.readouterr().err


@pytest.fixture(scope="module")
def short_bench(tmp_path_factory):
    return write_short_bench(tmp_path_factory.mktemp("short"), 8)


@pytest.fixture(scope="module")
def reference_run(checkpoint, short_bench, tmp_path_factory) -> Path:
    """An uninterrupted single-process run over the short benchmark."""
    out = tmp_path_factory.mktemp("reference") / "run"
    rc = evaluate("--model", checkpoint, "--benchmark", short_bench, "--video-root", short_bench.parent,
                  "--out", out, *FAST)
    assert rc == 0
    return out


def test_kill_9_and_resume_gives_the_uninterrupted_result(checkpoint, short_bench, reference_run, tmp_path):
    out = tmp_path / "run"
    args = ["--model", checkpoint, "--benchmark", short_bench, "--video-root", short_bench.parent, "--out", out, *FAST]
    log = (tmp_path / "stderr.log").open("wb")  # a file, not a pipe: a full pipe would block the run
    proc = subprocess.Popen([sys.executable, "-m", "streampro.cli.evaluate", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=log)
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if predictions.exists() and predictions.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        exited_by_itself = proc.poll() is not None
        if not exited_by_itself:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    assert not exited_by_itself, f"the run ended before it was killed: {(tmp_path / 'stderr.log').read_text()[-2000:]}"
    done_at_kill = predictions.read_bytes().count(b"\n")
    assert 2 <= done_at_kill < 8, f"the run was killed after {done_at_kill} of 8 samples; it must be mid-run"
    # A write cut short by the kill: the restart must cut it off, not keep or duplicate it.
    with predictions.open("ab") as f:
        f.write(b'{"id": "clip-7", "predictions": [{"time": 2.0, "te')

    assert evaluate(*args) == 0
    resumed, reference = lines(predictions), lines(reference_run / "predictions.jsonl")
    assert [r["id"] for r in resumed] == [f"clip-{i}" for i in range(8)]
    assert resumed == reference
    assert json.loads((out / "report.json").read_text()) == json.loads((reference_run / "report.json").read_text())


def test_read_records_cuts_only_a_torn_last_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    good = json.dumps({"id": "a", "predictions": [], "events": [], "error": None}) + "\n"
    path.write_text(good + '{"id": "b", "pred')
    assert [r["id"] for r in read_records(path, repair=False)] == ["a"]
    assert path.read_text().endswith('"pred')  # a reader that does not own the file leaves it alone
    assert [r["id"] for r in read_records(path, repair=True)] == ["a"]
    assert path.read_text() == good
    path.write_text("not json\n" + good)
    with pytest.raises(RunError, match=r"predictions.jsonl:1: not a prediction record"):
        read_records(path, repair=True)


def test_merge_keeps_one_record_per_sample_in_benchmark_order(tmp_path):
    refs = [{"id": i} for i in ("a", "b", "c")]
    rec = {i: {"id": i, "predictions": [], "events": [], "error": None} for i in "abc"}
    (tmp_path / "predictions.rank0.jsonl").write_text(json.dumps(rec["c"]) + "\n" + json.dumps(rec["a"]) + "\n")
    (tmp_path / "predictions.rank1.jsonl").write_text(json.dumps(rec["b"]) + "\n")
    (tmp_path / "predictions.jsonl").write_text(json.dumps(rec["a"]) + "\n")  # left by an earlier crash
    assert [r["id"] for r in merge_predictions(tmp_path, refs)] == ["a", "b", "c"]
    assert [r["id"] for r in lines(tmp_path / "predictions.jsonl")] == ["a", "b", "c"]
    assert not list(tmp_path.glob("predictions.rank*"))
    with pytest.raises(RunError, match="no record yet"):
        merge_predictions(tmp_path, refs + [{"id": "d"}])


def write_bad_bench(root: Path) -> Path:
    bench = write_short_bench(root, 1)
    good = lines(bench)[0]
    (root / "corrupt.mp4").write_bytes(os.urandom(4096))
    bad = [
        {**good, "id": "missing", "video": "nowhere.mp4"},
        {**good, "id": "corrupt", "video": "corrupt.mp4"},
        {**good, "id": "unknown-task", "task": "XX"},
        # The clip is shorter than the reference says: the stream ends before the question.
        {**good, "id": "late-question", "question_time": 50.0, "duration": 60.0,
         "answers": [{"text": "the square turned blue", "start": 52.0, "end": 53.0}]},
        {**good, "id": "after-end", "question_time": 60.0},  # a question after the reference's own duration
    ]
    bench.write_text("".join(json.dumps(r) + "\n" for r in [good, *bad]))
    return bench


def test_bad_inputs_are_recorded_per_sample_and_the_run_goes_on(checkpoint, tmp_path):
    bench = write_bad_bench(tmp_path / "clips")
    out = tmp_path / "run"
    assert evaluate("--model", checkpoint, "--benchmark", bench, "--video-root", bench.parent, "--out", out, *FAST) == 0
    records = {r["id"]: r for r in lines(out / "predictions.jsonl")}
    assert records["clip-0"]["error"] is None
    kinds = {i: records[i]["error"]["kind"] for i in ("missing", "corrupt", "unknown-task", "late-question", "after-end")}
    assert kinds == {"missing": "missing_video", "corrupt": "video_error", "unknown-task": "invalid_reference",
                     "late-question": "stream_error", "after-end": "invalid_reference"}
    assert "'question_time' 60 s is after the end of the video (5 s)" in records["after-end"]["error"]["message"]
    assert "nowhere.mp4 not found" in records["missing"]["error"]["message"]
    assert "unknown task code 'XX'" in records["unknown-task"]["error"]["message"]
    assert "beyond the stream" in records["late-question"]["error"]["message"]

    report = json.loads((out / "report.json").read_text())
    # Errored samples are excluded from the averages and counted, never scored as zeros.
    assert report["results"]["num_samples"] == 1 and report["results"]["num_errors"] == 5
    assert report["errors"]["by_kind"] == {"invalid_reference": 2, "missing_video": 1, "stream_error": 1,
                                           "video_error": 1}
    assert [s["id"] for s in report["per_sample"]] == ["clip-0"]
    assert report["results"]["w_avg_f1"] == pytest.approx(100 * report["per_sample"][0]["f1"])
    md = (out / "report.md").read_text()
    assert "## Errors" in md and "| missing | EU | missing_video |" in md


def test_strict_stops_at_the_first_bad_sample(checkpoint, tmp_path, capsys):
    bench = write_bad_bench(tmp_path / "clips")
    out = tmp_path / "run"
    rc = evaluate("--model", checkpoint, "--benchmark", bench, "--video-root", bench.parent, "--out", out, "--strict",
                  *FAST)
    assert rc == 2
    assert "sample 'missing': missing_video" in capsys.readouterr().err
    assert [r["id"] for r in lines(out / "predictions.jsonl")] == ["clip-0"]  # the bad one is not recorded
    assert not (out / "report.json").exists()


def test_clear_errors_for_bad_arguments(checkpoint, tmp_path, capsys):
    bench = write_short_bench(tmp_path / "clips", 1)
    base = ["--benchmark", bench, "--video-root", bench.parent, "--out", tmp_path / "run", "--no-progress"]
    assert evaluate("--model", tmp_path, *base) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "llama"}')
    assert evaluate("--model", other, *base, "--protocol", "decision-tree") == 2
    assert "plain Qwen2.5-VL / Qwen3-VL checkpoint or a StreamPro checkpoint" in capsys.readouterr().err
    bench.write_text(bench.read_text() + "{not json\n")
    assert evaluate("--model", checkpoint, *base[:-3], "--out", tmp_path / "run2") == 2
    assert "bench.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_report_json_is_written_last(tmp_path, monkeypatch):
    """``report.json`` marks a finished evaluation (reproduce skips one that has it): a run stopped
    while drawing its plots must not leave it, and a second try writes everything."""
    from streampro.evaluation import report as report_module
    from streampro.metrics.judges import make_judge

    ref = {"id": "clip-0", "task": "OU", "question": "Tell me when the square changes colour.",
           "question_time": 0.0, "video": "clip0.mp4", "duration": 5.0,
           "answers": [{"text": "the red square turned blue", "time": 3.0}]}
    record = {"id": "clip-0", "error": None, "events": [],
              "predictions": [{"text": "the red square turned blue", "time": 3.0}]}

    config = {"model": "m", "benchmark": "b.jsonl", "protocol": "streampro", "fps": 1.0}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_plots", killed)
    with pytest.raises(KeyboardInterrupt):
        report_module.write_reports(tmp_path, [record], [ref], make_judge("lexical"), config, num_timelines=0)
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()

    monkeypatch.undo()
    report = report_module.write_reports(tmp_path, [record], [ref], make_judge("lexical"), config, num_timelines=0)
    assert report["results"]["OU_f1"] == 100.0
    assert json.loads((tmp_path / "report.json").read_text())["results"] == report["results"]
    assert (tmp_path / "plots" / "task_f1.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_a_run_from_before_a_new_config_field_resumes(tmp_path):
    """run_config.json written before a field existed (e.g. ``engine``) reads as that field's default."""
    from streampro.evaluation.harness import EvalConfig, check_run_config

    config = EvalConfig(model="m", benchmark="b", benchmark_sha256="0", video_root="v", protocol="streampro",
                        judge={"name": "exact"}, limit=None, fps=1.0, window_turns=200, max_new_tokens=64,
                        response_threshold=None, max_pixels=None)
    old = {k: v for k, v in config.to_dict().items() if k not in ("engine", "activation_model", "token_budget")}
    (tmp_path / "run_config.json").write_text(json.dumps(old))
    check_run_config(tmp_path, config)  # no "different arguments" error
    with pytest.raises(ValueError, match="different arguments"):
        check_run_config(tmp_path, EvalConfig(**{**config.to_dict(), "engine": "vllm"}))
