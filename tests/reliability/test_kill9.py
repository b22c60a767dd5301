"""kill -9 at a random moment, then the same command again: the files of one uninterrupted run, byte for byte.

One test per command that writes data (docs/reliability.md): ``data synth``, ``data build``,
``data convert``, ``evaluate`` and ``reproduce --quick``. Each runs the command once to the end
(the reference, which also gives its run time), once killed with SIGKILL after a delay drawn from
a seeded RNG within that run time, and once more to the end in the killed run's folder; then
every output file must equal the reference's. Inputs are tiny (a few 32-px clips) so that each
test takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

STREAMPRO = [sys.executable, "-m", "streampro.cli"]


def _run(argv: list[str], log: Path, timeout: float = 600) -> float:
    """Run to the end; return the wall time."""
    start = time.monotonic()
    with log.open("ab") as f:
        rc = subprocess.run(argv, stdout=f, stderr=f, timeout=timeout).returncode
    assert rc == 0, log.read_text()[-3000:]
    return time.monotonic() - start


def _kill_at_random(argv: list[str], log: Path, run_time: float, seed: int) -> float:
    """Start ``argv`` and SIGKILL it after a seeded random share of ``run_time``; return the delay."""
    delay = float(np.random.default_rng(seed).uniform(0.3, 0.7)) * run_time
    with log.open("ab") as f:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(argv, stdout=f, stderr=f)
        try:
            time.sleep(delay)
            finished = proc.poll() is not None
            if not finished:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert not finished, f"the run ended before the kill at {delay:.2f} s: {log.read_text()[-2000:]}"
    return delay


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# Wall-clock records differ between any two runs; everything else must match byte for byte:
# trainer logs' speed fields, and reproduce's stage timings (results.json, results.md).
_WALL_CLOCK = re.compile(rb'"(?:train_runtime|step_time|[a-z_]*_per_second)": [0-9.e+-]+')


def _without_wall_clock(name: str, data: bytes) -> bytes:
    if name.endswith(("log_history.json", "trainer_state.json")):
        return _WALL_CLOCK.sub(b"", data)
    if name == "results.json":
        return json.dumps({k: v for k, v in json.loads(data).items() if k != "timings_s"}).encode()
    if name == "results.md":
        return re.sub(rb"(?m)^Stage wall times \(s\):.*$", b"", data)
    return data


def _assert_same_files(resumed: Path, reference: Path, skip: tuple[str, ...] = ()) -> None:
    a = {k: _without_wall_clock(k, v) for k, v in _tree(resumed).items() if not k.startswith(skip)}
    b = {k: _without_wall_clock(k, v) for k, v in _tree(reference).items() if not k.startswith(skip)}
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))  # leftovers (*.tmp) or missing files
    differing = [k for k in a if a[k] != b[k]]
    assert differing == [], differing


def _kill_then_resume(tmp_path: Path, make_argv, seed: int, skip: tuple[str, ...] = (), timeout: float = 600) -> float:
    """``make_argv(out)`` is the command writing into ``out``; returns the kill delay."""
    log = tmp_path / "log.txt"
    reference, out = tmp_path / "reference", tmp_path / "out"
    # The uninterrupted run writes to the same path as the interrupted one, then moves aside:
    # outputs that name their folder (reports, run configs) compare as they are.
    run_time = _run(make_argv(out), log, timeout)
    out.rename(reference)
    delay = _kill_at_random(make_argv(out), log, run_time, seed)
    _run(make_argv(out), log, timeout)
    _assert_same_files(out, reference, skip)
    return delay


def test_data_synth(tmp_path):
    def argv(out):
        return [*STREAMPRO, "data", "synth", "--out", str(out), "--n", "42", "--seed", "5", "--size", "32",
                "--no-progress"]

    _kill_then_resume(tmp_path, argv, seed=1)


def _raw_file(path: Path, n: int) -> Path:
    """``n`` valid raw samples (a few MB of JSON: writing them takes a noticeable share of the run)."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({
                "id": f"s{i}", "task": "EU", "source": "test", "video": f"v{i % 50}.mp4", "duration": 30.0,
                "question": "Describe each event as soon as it has finished.", "question_time": 0.0,
                "answers": [{"text": f"event {j} of sample {i}", "start": 2.0 + 4 * j, "end": 4.0 + 4 * j}
                            for j in range(6)],
                "system": None, "meta": {},
            }) + "\n")
    return path


def test_data_build(tmp_path):
    raw = _raw_file(tmp_path / "raw.jsonl", 6000)

    def argv(out):
        return [*STREAMPRO, "data", "build", "sft", str(raw), "--out", str(out), "--split", "train", "--no-progress"]

    _kill_then_resume(tmp_path, argv, seed=2)


def test_data_convert(tmp_path):
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({
        f"v_{i}": {"duration": 40.0, "timestamps": [[2.0 + 5 * j, 5.0 + 5 * j] for j in range(5)],
                   "sentences": [f"step {j} of video {i}" for j in range(5)]}
        for i in range(6000)
    }))

    def argv(out):
        return [*STREAMPRO, "data", "convert", "activitynet-captions", str(annotations), "--task", "EU",
                "--out", str(out / "raw.jsonl"), "--no-progress"]

    _kill_then_resume(tmp_path, argv, seed=3)


@pytest.fixture(scope="module")
def short_bench(tmp_path_factory) -> Path:
    from streampro.video import encode_video

    root = tmp_path_factory.mktemp("bench")
    refs = []
    for i in range(8):
        frames = [np.full((32, 32, 3), (40 + 20 * i, 30 * j % 256, 90), np.uint8) for j in range(10)]  # 5 s at 2 fps
        encode_video(root / f"clip{i}.mp4", frames, fps=2)
        refs.append({"id": f"clip-{i}", "task": "OU", "question": "Tell me when the colour changes.",
                     "question_time": 0.0, "video": f"clip{i}.mp4", "duration": 5.0,
                     "answers": [{"text": "the colour changed", "time": 3.0}]})
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    return root / "bench.jsonl"


def test_evaluate(tmp_path, short_bench, tiny_dir):
    def argv(out):
        return [*STREAMPRO, "evaluate", "--model", str(tiny_dir), "--benchmark", str(short_bench),
                "--video-root", str(short_bench.parent), "--out", str(out), "--max-new-tokens", "3",
                "--no-progress", "--plot-samples", "0"]

    # run_config.json names the --out folder.
    _kill_then_resume(tmp_path, argv, seed=4, skip=("run_config.json",))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three quick runs of every stage (about a minute each on an idle 2-core machine)
def test_reproduce_quick(tmp_path):
    def argv(out):
        return [*STREAMPRO, "reproduce", "--out", str(out), "--quick"]

    # Wall-clock timings differ between any two runs; logs name their folder; the frame cache is a
    # cache (its keys include the video's absolute path), not an output.
    _kill_then_resume(tmp_path, argv, seed=5, skip=("timings.json", "logs/", "data/.frame_cache/"), timeout=1200)
