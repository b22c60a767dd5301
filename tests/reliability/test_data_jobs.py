"""Data jobs never mix two runs in one folder, and converters never coerce a wrong type (docs/reliability.md).

``data synth`` / ``data build`` keep ``OUT/manifest.json`` (settings + completion mark): a folder of
other settings is refused untouched, an interrupted one is finished by the same command, and
``evaluate`` refuses a benchmark from a folder without the completion mark. Converters name the
file, entry and field of a value of the wrong type and exit non-zero when nothing is written.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from streampro.dataset_scripts import manifest
from streampro.dataset_scripts.synth import generate

from streampro.cli import main


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(capsys, command: str) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if not re.match(r"^\d\d:\d\d:\d\d ", x)]
    assert len(lines) == 1 and lines[0].startswith(f"streampro {command}: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def seed3(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed3")
    generate(out, n=7, seed=3, size=32, progress=False)
    return out


def test_a_synth_of_other_settings_into_a_complete_folder_is_refused_untouched(seed3, capsys):
    before = _tree(seed3)
    assert json.loads(before["manifest.json"]) == {
        "command": "data synth", "complete": True,
        "settings": {"n": 7, "seed": 3, "size": 32, "control": 0, "captions": 0, "motion_captions": 0,
                     "extra_train": 0, "extra_validation": 0}}
    assert main(["data", "synth", "--out", str(seed3), "--n", "7", "--seed", "4", "--size", "32", "--no-progress"]) == 2
    line = _one_error_line(capsys, "data synth")
    assert "holds a complete `streampro data synth` run with --seed 3, not --seed 4" in line
    assert _tree(seed3) == before  # not one file touched


def test_an_interrupted_synth_is_refused_by_evaluate_and_finished_by_the_same_command(tmp_path, monkeypatch, capsys,
                                                                                     tiny_dir):
    out = tmp_path / "synth"
    reference = tmp_path / "reference"
    generate(reference, n=7, seed=3, size=32, progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # dies after the last data file, before the completion mark

    with monkeypatch.context() as m:
        m.setattr(manifest, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            generate(out, n=7, seed=3, size=32, progress=False)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    assert (out / "bench" / "train.jsonl").is_file()
    rc = main(["evaluate", "--model", str(tiny_dir), "--benchmark", str(out / "bench" / "train.jsonl"),
               "--video-root", str(out), "--out", str(tmp_path / "run"), "--no-progress"])
    line = _one_error_line(capsys, "evaluate")
    assert rc == 2 and "interrupted `streampro data synth` run" in line and "--seed 3" in line, line
    # The same command again finishes it: the files of one uninterrupted run.
    generate(out, n=7, seed=3, size=32, progress=False)
    assert _tree(out) == _tree(reference)
    manifest.check_complete(out / "bench" / "train.jsonl")


def test_an_interrupted_synth_keeps_whole_videos_and_resumes(tmp_path, monkeypatch):
    """Interrupted during the third encode: two whole videos in place, none torn; the next run keeps them,
    removes what a kill -9 leaves (a temporary file) and finishes."""
    from streampro import video

    out, calls, real = tmp_path / "synth", [], video.encode_video

    def dies_on_the_third(path, frames, fps):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"half a video")
            raise KeyboardInterrupt
        return real(path, frames, fps)

    with monkeypatch.context() as m:
        m.setattr(video, "encode_video", dies_on_the_third)
        with pytest.raises(KeyboardInterrupt):
            generate(out, n=7, seed=3, size=32, progress=False)
    assert calls[2].name.startswith(".") and ".tmp" in calls[2].name  # encoded under a temporary name
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    assert len(kept) == 2 and not any(name.startswith(".") for name in kept)
    stale = out / "videos" / ".synth-OU-00000.mp4.999999999.tmp.mp4"  # what a kill -9 mid-encode leaves
    stale.write_bytes(b"half a video")
    generate(out, n=7, seed=3, size=32, progress=False)
    assert not list(out.rglob(".*.tmp*"))
    assert all((out / "videos" / name).stat().st_mtime_ns == t for name, t in kept.items())  # kept, not re-encoded
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_synth_files_without_a_manifest_are_refused(tmp_path, capsys):
    (tmp_path / "old" / "videos").mkdir(parents=True)
    (tmp_path / "old" / "README.md").write_text("StreamPro-Synth of an older version")
    assert main(["data", "synth", "--out", str(tmp_path / "old"), "--n", "7", "--no-progress"]) == 2
    assert "README.md, videos but no manifest.json" in _one_error_line(capsys, "data synth")


def test_synth_warns_when_the_test_split_is_empty(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    stats = generate(tmp_path / "s", n=14, seed=0, size=32, progress=False)
    assert stats["splits"]["test"]["clips"] == 0
    assert "--n 14 gives no test clips" in caplog.text and "use --n 21 or more" in caplog.text


def test_build_cleans_a_killed_builds_temporaries_and_refuses_another_kind(tmp_path, seed3, capsys):
    out = tmp_path / "sft"
    out.mkdir()
    stale = out / ".train.jsonl.999999999.tmp"  # left by a killed build (no such process)
    stale.write_text('{"half": ')
    raw = seed3 / "raw" / "train.jsonl"
    assert main(["data", "build", "sft", str(raw), "--out", str(out), "--no-progress"]) == 0
    assert not stale.exists()
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "manifest.json", "train.jsonl"} <= names and not [n for n in names if n.startswith(".")]
    capsys.readouterr()
    assert main(["data", "build", "rl", str(raw), "--out", str(out), "--no-progress"]) == 2
    assert "holds a complete `streampro data build` run with --kind sft, not --kind rl" in _one_error_line(
        capsys, "data build")
    # Another split of the same kind and fps joins the folder.
    assert main(["data", "build", "sft", str(raw), "--out", str(out), "--split", "test", "--no-progress"]) == 0
    assert (out / "test.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()


def test_check_complete_ignores_another_tools_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "some web app"}')
    (tmp_path / "b").mkdir()
    manifest.check_complete(tmp_path / "b" / "bench.jsonl")  # no error


# --------------------------------------------------------------------------------------------
# Converters: wrong types are refused with the place, never coerced
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "task", "content", "names"),
    [
        ("activitynet-captions", "EU", {"v_1": {"duration": 10, "timestamps": [[0, 2]], "sentences": [42]}},
         "entry 'v_1': field 'sentences[0]' must be a string, got 42"),
        ("activitynet-captions", "EU", {"v_1": {"duration": "10", "timestamps": [[0, 2]], "sentences": ["a"]}},
         "entry 'v_1': field 'duration' must be a number, got '10' (a string)"),
        ("activitynet-captions", "EU", {"v_1": {"duration": 10, "timestamps": [["0", 2]], "sentences": ["a"]}},
         "field 'timestamps[0]' must be a number, got '0' (a string)"),
        ("dota", None, {"c1": {"anomaly_start": 50, "anomaly_end": 60, "anomaly_class": "weird", "num_frames": 100}},
         "entry 'c1': field 'anomaly_class' is 'weird', not a DoTA class"),
        ("dota", None, {"c1": {"anomaly_start": 50, "anomaly_end": 60, "anomaly_class": "ego: flying",
                               "num_frames": 100}}, "not a DoTA class"),
        ("dota", None, {"c1": {"anomaly_start": 50, "anomaly_end": 60, "anomaly_class": "ego: turning",
                               "num_frames": 0}}, "no sample converted (1 read; no_duration: 1)"),
        ("activitynet-captions", "EU", {"v_1": {"duration": -5, "timestamps": [[0, 2]], "sentences": ["a"]}},
         "no sample converted (1 read; no_duration: 1)"),
        ("ovo-bench", None, [{"id": 1, "task": "CRR", "video": "v.mp4", "question": "q?", "answer": 7,
                              "ask_time": 1.0, "clue_time": 3.0}], "item 0: field 'answer' must be a string, got 7"),
        ("proactivevideoqa", "OU", [{"video": "v.mp4", "conversation": [{"role": "user", "content": "q", "time": 0}],
                                     "answer": [{"content": 3.5, "reply_timespan": [2, 3]}]}],
         "must be a string, got 3.5"),
        ("streamo", "EU", [{"video_path": "v.mp4", "question": [{"content": "q", "time": "soon"}],
                            "response": [{"content": "a", "time": "3"}]}],
         "field 'question[0].time' must be a time in seconds, got 'soon'"),
    ],
)
def test_converters_refuse_wrong_types_naming_the_place(tmp_path, capsys, fmt, task, content, names):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(content))
    out = tmp_path / "out.jsonl"
    argv = ["data", "convert", fmt, str(ann), "--out", str(out), "--no-progress", *(["--task", task] if task else [])]
    assert main(argv) == 2
    line = _one_error_line(capsys, "data convert")
    assert "ann.json" in line and names in line, line
    assert not out.exists() or out.read_text() == ""  # nothing written


def test_an_empty_annotation_file_exits_non_zero(tmp_path, capsys):
    ann = tmp_path / "empty.txt"
    ann.write_text("")
    assert main(["data", "convert", "charades-sta", str(ann), "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    assert "empty.txt: no sample converted" in _one_error_line(capsys, "data convert")

