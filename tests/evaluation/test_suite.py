"""``streampro evaluate --benchmark-suite``: each benchmark converted from its real annotation file, run, scored.

A few real items of each benchmark (``../shared/data/annotations/``, the earliest question of each
task, so that the streams stay short) are written to a small annotation file, converted with
``streampro data convert`` against generated stand-in videos (the real videos are not available;
a stand-in is a plain 32-pixel clip one frame past the latest annotated time), then run with the
embedded tiny model at 0.1 fps (one frame every 10 s keeps the CPU streams short). The tests
check the pipeline and the report, not the model's answers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from streampro.cli import evaluate as cli

ANNOTATIONS = Path(__file__).resolve().parents[3] / "shared" / "data" / "annotations"
OVO = ANNOTATIONS / "ovo_bench_new.json"
STREAMINGBENCH = ANNOTATIONS / "streamingbench"
PVQA = ANNOTATIONS / "proactivevideoqa"
FPS = 0.1  # one frame every 10 s
STEP = 1 / FPS
# Answers of one token and no plots beyond one timeline keep the runs short.
FAST = ["--fps", str(FPS), "--max-new-tokens", "1", "--no-progress", "--plot-samples", "1"]

pytestmark = pytest.mark.skipif(not (OVO.is_file() and STREAMINGBENCH.is_dir() and PVQA.is_dir()),
                                reason=f"the real annotation files are not in {ANNOTATIONS}")


def _seconds(stamp: str) -> int:
    return sum(int(x) * 60 ** i for i, x in enumerate(reversed(stamp.split(":"))))


def ovo_subset() -> list[dict]:
    """The item with the earliest last time of each OVO-Bench task."""
    best: dict[str, tuple[float, dict]] = {}
    for item in json.loads(OVO.read_text()):
        times = [t["realtime"] for t in item.get("test_info") or []] + [item.get("realtime") or 0]
        latest = max(times + item.get("end_times", []) + item.get("end_time", []) + [item.get("clue_time", 0)])
        if item["task"] not in best or latest < best[item["task"]][0]:
            best[item["task"]] = (latest, item)
    return [item for _, item in best.values()]


def streamingbench_subset(name: str, max_time: int = 40) -> list:
    """The entries of one StreamingBench file whose questions all come by ``max_time`` s, one per task."""
    data = json.loads((STREAMINGBENCH / f"questions_{name}.json").read_text())
    if name == "sqa":  # a list of videos, each a list of entries: keep the video whose questions end first
        return [min(data, key=lambda video: max(_seconds(q["time_stamp"]) for e in video for q in e["questions"]))]
    chosen, tasks = [], set()
    for entry in data:
        stamps = [_seconds(q.get("ground_truth_time_stamp", q["time_stamp"])) for q in entry["questions"]]
        task = entry["questions"][0]["task_type"]
        if max(stamps) <= max_time and task not in tasks:
            tasks.add(task)
            chosen.append(entry)
    return chosen


def write_stand_in(path: Path, seconds: float) -> None:
    """A 1-fps clip long enough for a frame at every question turn up to ``seconds`` at :data:`FPS`."""
    from streampro.video import encode_video

    n = int(STEP * (math.ceil(seconds / STEP) + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(path, [np.full((32, 32, 3), (11 * j) % 256, np.uint8) for j in range(n)], fps=1)


def convert_with_stand_ins(fmt: str, sources: list[Path], root: Path) -> Path:
    """Convert ``sources`` once without videos (for the names and times), write stand-ins, convert into refs/."""
    from streampro.dataset_scripts.converters import convert

    videos = root / "videos"
    latest: dict[str, float] = defaultdict(float)
    for i, src in enumerate(sources):
        probe = root / f"probe{i}.jsonl"
        convert(fmt, src, probe, allow_missing_videos=True, progress=False)
        for line in probe.read_text().splitlines():
            ref = json.loads(line)
            times = [ref["question_time"], ref.get("duration") or 0.0]
            times += [a.get("end", a.get("time", 0.0)) or 0.0 for a in ref.get("answers") or []]
            latest[ref["video"]] = max(latest[ref["video"]], *times)
    for video, seconds in latest.items():
        write_stand_in(videos / video, seconds)
    out = root / "refs" / f"{fmt}.jsonl"
    for src in sources:
        convert(fmt, src, out, video_root=videos, progress=False)
    return out


def write_sources(tmp: Path) -> dict[str, list[Path]]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "ovo.json").write_text(json.dumps(ovo_subset()))
    sources = {"ovo-bench": [tmp / "ovo.json"], "streamingbench": [], "proactivevideoqa": []}
    for name in ("real", "omni", "sqa", "proactive"):
        path = tmp / f"questions_{name}.json"
        path.write_text(json.dumps(streamingbench_subset(name)))
        sources["streamingbench"].append(path)
    for subset in ("WEB", "TV", "VAD"):  # EGO's two clips are 6 minutes long
        sources["proactivevideoqa"].append(PVQA / f"{subset}_anno.json")
    return sources


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """Each benchmark converted from its real annotation subset, with stand-in videos: {name: refs.jsonl}."""
    root = tmp_path_factory.mktemp("suites")
    sources = write_sources(root / "sources")
    return {name: convert_with_stand_ins(name, paths, root / name) for name, paths in sources.items()}


def videos_of(refs_file: Path) -> Path:
    return refs_file.parent.parent / "videos"


def evaluate(*argv) -> int:
    return cli.main([str(a) for a in argv])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_suite_choices_are_the_official_benchmarks():
    from streampro.metrics.official import BENCHMARKS

    assert cli.SUITE_CHOICES == BENCHMARKS


@pytest.mark.parametrize("benchmark", ["ovo-bench", "streamingbench", "proactivevideoqa"])
def test_suite_runs_end_to_end_with_the_embedded_model(benchmark, converted, tmp_path):
    refs_file = converted[benchmark]
    refs = lines(refs_file)
    out = tmp_path / "run"
    assert evaluate("--benchmark-suite", benchmark, "--references", refs_file.parent, "--video-root", videos_of(refs_file),
                    "--out", out, *FAST) == 0
    records = lines(out / "predictions.jsonl")
    assert [r["id"] for r in records] == [r["id"] for r in refs]  # every task's samples, benchmark order
    for record, ref in zip(records, refs):
        assert record["error"] is None, (ref["id"], record["error"])
        if "kind" in ref:  # a real-time question, answered at its turn
            assert isinstance(record["answer"], str) and record["time"] >= ref["question_time"]
        else:
            assert isinstance(record["predictions"], list)
    report = json.loads((out / "report.json").read_text())
    official = report["official"]
    assert report["benchmark"] == benchmark and report["errors"]["count"] == 0
    tasks = {r["task"] for r in refs if "kind" in r} | {r["meta"]["benchmark_task"] for r in refs if "kind" not in r
                                                         and benchmark != "ovo-bench"}
    assert tasks <= set(official["results"])  # one key per task
    md = (out / "report.md").read_text()
    assert "## Official score" in md and official["table"].strip().splitlines()[0] in md
    plots = {p.name for p in (out / "plots").iterdir()}
    assert "official.png" in plots
    if benchmark != "streamingbench" or any("kind" not in r for r in refs):
        assert official["streampro_f1"]["num_samples"] > 0 and "## StreamPro-F1" in md and "task_f1.png" in plots
    config = json.loads((out / "run_config.json").read_text())
    assert config["suite"] == benchmark and config["benchmark"] == str(refs_file.resolve())


def test_ovo_forward_checkpoints_share_one_pass(converted, tmp_path, monkeypatch):
    """OVO-Bench's forward checkpoint questions of one item: one pass over its video."""
    import streampro.video

    refs = [r for r in lines(converted["ovo-bench"]) if r.get("task") == "CRR" and "kind" in r]
    assert len(refs) > 1 and len({r["group"] for r in refs}) == 1
    (tmp_path / "crr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    opened = []
    real = streampro.video.iter_video_frames
    monkeypatch.setattr(streampro.video, "iter_video_frames", lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    assert evaluate("--benchmark-suite", "ovo-bench", "--references", tmp_path / "crr.jsonl", "--video-root", "/",
                    "--out", tmp_path / "run", *FAST) == 0
    assert len(opened) == 1
    assert [r["id"] for r in lines(tmp_path / "run" / "predictions.jsonl")] == [r["id"] for r in refs]


def test_invalid_references_are_recorded_and_visible(converted, tmp_path):
    refs = [r for r in lines(converted["streamingbench"]) if "kind" in r][:2]
    bad = {**refs[1], "id": "late", "question_time": refs[1]["duration"] + 30}
    (tmp_path / "sb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [refs[0], bad]))
    out = tmp_path / "run"
    assert evaluate("--benchmark-suite", "streamingbench", "--references", tmp_path / "sb.jsonl", "--video-root", "/",
                    "--out", out, *FAST) == 0
    records = {r["id"]: r for r in lines(out / "predictions.jsonl")}
    assert records["late"]["error"]["kind"] == "invalid_reference" and records["late"]["answer"] is None
    assert "after the end of the video" in records["late"]["error"]["message"]
    report = json.loads((out / "report.json").read_text())
    assert report["errors"]["by_kind"] == {"invalid_reference": 1} and report["num_scored_samples"] == 1
    assert sum(c["n"] for c in report["official"]["counts"].values()) == 1  # not scored (no zero)
    assert "| late |" in (out / "report.md").read_text()


def test_suite_argument_errors(converted, tmp_path, capsys):
    base = ["--video-root", "/", "--out", tmp_path / "run"]
    assert evaluate("--benchmark-suite", "ovo-bench", *base) == 2
    assert "needs --references" in capsys.readouterr().err
    assert evaluate("--benchmark-suite", "ovo-bench", "--references", converted["streamingbench"], *base) == 2
    assert "belongs to benchmark 'streamingbench', not 'ovo-bench'" in capsys.readouterr().err
    assert evaluate("--benchmark", converted["streamingbench"], *base) == 2
    assert "--benchmark-suite" in capsys.readouterr().err
    assert evaluate("--benchmark-suite", "ovo-bench", "--references", tmp_path / "none", *base) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_suite_limit_is_per_task(converted, tmp_path):
    out = tmp_path / "run"
    assert evaluate("--benchmark-suite", "ovo-bench", "--references", converted["ovo-bench"], "--video-root", "/",
                    "--out", out, "--limit", "1", *FAST) == 0
    records = lines(out / "predictions.jsonl")
    refs = {r["id"]: r for r in lines(converted["ovo-bench"])}
    keys = [(refs[r["id"]].get("kind"), refs[r["id"]]["task"], refs[r["id"]].get("meta", {}).get("benchmark_task"))
            for r in records]
    assert len(keys) == len(set(keys))  # one sample of each task (and kind)


def test_suite_kill_9_and_resume_gives_the_uninterrupted_result(converted, tmp_path):
    refs_file = converted["streamingbench"]
    args = ["--benchmark-suite", "streamingbench", "--references", refs_file, "--video-root", videos_of(refs_file), *FAST]
    reference = tmp_path / "reference"
    assert evaluate(*args, "--out", reference) == 0

    out = tmp_path / "run"
    log = (tmp_path / "stderr.log").open("wb")  # a file, not a pipe: a full pipe would block the run
    proc = subprocess.Popen([sys.executable, "-m", "streampro.cli.evaluate", *map(str, args), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=log)
    predictions = out / "predictions.jsonl"
    total = len(lines(refs_file))
    deadline = time.monotonic() + 300
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
    assert 2 <= done_at_kill < total, f"killed after {done_at_kill} of {total} samples; it must be mid-run"
    with predictions.open("ab") as f:  # a write cut short by the kill
        f.write(b'{"id": "streamingbench:torn", "answer": "B')

    assert evaluate(*args, "--out", out) == 0
    assert lines(predictions) == lines(reference / "predictions.jsonl")
    resumed, uninterrupted = (json.loads((d / "report.json").read_text()) for d in (out, reference))
    assert resumed["official"] == uninterrupted["official"] and resumed["errors"] == uninterrupted["errors"]
