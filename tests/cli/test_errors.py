"""One error style for user errors: ``streampro <command>: error: <what> — <fix>``, exit 2, no traceback.

Each case runs ``streampro.cli.main([...])`` in-process and checks the one line on stderr and that
it names the file (with its line where there is one) or the option at fault. ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from streampro.cli import main
from streampro.errors import UserError, split_message
from streampro.testing.media import write_audio_only
from streampro.video import encode_video


def assert_user_error(capsys, argv: list[str], command: str, names: str) -> str:
    """Run ``streampro ARGV``; expect exit 2 and one error line naming ``names``."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not re.match(r"^\d\d:\d\d:\d\d ", line)]  # log lines
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert re.fullmatch(rf"streampro {re.escape(command)}: error: .+ — .+", lines[0]), lines[0]
    assert names in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------
# Small broken inputs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    good = encode_video(d / "good.mp4", [np.full((32, 32, 3), 8 * i, np.uint8) for i in range(30)], fps=10)  # 3 s
    zero = d / "zero.mp4"
    zero.write_bytes(b"")
    truncated = d / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the index (moov) is cut off
    audio = write_audio_only(d / "speech.m4a")
    short = encode_video(d / "short.mp4", [np.zeros((32, 32, 3), np.uint8)] * 5, fps=10)  # 0.5 s
    return {"good": good, "zero": zero, "truncated": truncated, "audio": audio, "short": short, "dir": d}


def stream_argv(video, *extra) -> list:
    # --model points nowhere: every case must fail before a model would load.
    return ["stream", video, "--question", "q", "--model", "/nonexistent-model", *extra]


@pytest.mark.parametrize(
    ("case", "extra", "names"),
    [
        ("missing", (), "nowhere.mp4: no such file"),
        ("zero", (), "zero.mp4: not a readable video file"),
        ("truncated", (), "truncated.mp4: not a readable video file"),
        ("audio", (), "speech.m4a: has no video stream"),
        ("short", (), "short.mp4: the video is 0.5 s long"),
        ("good", ("--fps", "0"), "--fps 0"),
        ("good", ("--fps", "nan"), "--fps nan"),
        ("good", ("--question-time", "9"), "--question-time 9: beyond the end of"),
        ("good", ("--question-time", "-1"), "--question-time -1"),
        ("good", ("--response-threshold", "2"), "--response-threshold 2"),
        ("good", ("--window-turns", "0"), "--window-turns 0"),
        ("good", ("--out", "DIR"), "--out"),
    ],
)
def test_stream_user_errors(clips, capsys, case, extra, names):
    video = clips["dir"] / "nowhere.mp4" if case == "missing" else clips[case]
    extra = tuple(str(clips["dir"]) if a == "DIR" else a for a in extra)
    assert_user_error(capsys, stream_argv(video, *extra), "stream", names)


def test_stream_checks_the_video_before_the_model_and_creates_the_out_folder(clips, capsys, tmp_path):
    # A good video and a missing model: the error is the model's, so the video passed first, and
    # --out's missing folder was created (as every --out does) rather than refused.
    out = tmp_path / "new" / "folder" / "events.jsonl"
    assert_user_error(capsys, stream_argv(clips["good"], "--out", out), "stream", "/nonexistent-model")
    assert out.parent.is_dir()


# --------------------------------------------------------------------------------------------
# data convert / build / synth
# --------------------------------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path) -> Path:
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "truncated.json").write_text('{"v_1": {"duration": 3.0, "timestamps": [[0')
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "number.json").write_text('{"v_1": 5}')
    (tmp_path / "empty.txt").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    ("fmt", "name", "names"),
    [
        ("activitynet-captions", "empty.json", "empty.json:1: not valid JSON"),
        ("activitynet-captions", "truncated.json", "truncated.json:1: not valid JSON"),
        ("activitynet-captions", "list.json", "list.json: expected an object"),
        ("activitynet-captions", "number.json", "number.json: entry 'v_1'"),
        ("streamo", "list.json", "list.json: item 0"),
        ("dota", "empty.json", "empty.json:1: not valid JSON"),
        ("charades-sta", "empty.txt", "empty.txt: no sample converted"),
        ("activitynet-captions", "absent.json", "absent.json"),
    ],
)
def test_data_convert_user_errors(bad_files, capsys, fmt, name, names):
    task = ["--task", "EU"] if fmt in ("activitynet-captions", "streamo") else []
    argv = ["data", "convert", fmt, bad_files / name, "--out", bad_files / "out.jsonl", "--no-progress", *task]
    assert_user_error(capsys, argv, "data convert", names)


def test_data_build_user_errors(tmp_path, capsys):
    good = json.dumps({"id": "a"})
    torn = tmp_path / "torn.jsonl"
    torn.write_text(good + "\n" + '{"id": "b", "task"\n')
    line = assert_user_error(capsys, ["data", "build", "sft", torn, "--out", tmp_path / "o"], "data build", "torn.jsonl:")
    assert re.search(r"torn\.jsonl:[12]:", line)
    assert_user_error(capsys, ["data", "build", "sft", tmp_path / "absent.jsonl", "--out", tmp_path / "o"],
                      "data build", "absent.jsonl: no such file")


@pytest.mark.parametrize(
    ("extra", "names"),
    [(["--n", "0"], "--n"), (["--size", "15"], "--size"), (["--control", "-1"], "--control")],
)
def test_data_synth_user_errors(tmp_path, capsys, extra, names):
    assert_user_error(capsys, ["data", "synth", "--out", tmp_path / "s", "--no-progress", *extra],
                      "data synth", names)


# --------------------------------------------------------------------------------------------
# score / evaluate
# --------------------------------------------------------------------------------------------

REF = {"id": "a", "task": "OU", "question": "q", "question_time": 0.0, "video": "a.mp4", "duration": 4.0,
       "answers": [{"time": 2.0, "text": "x"}]}


@pytest.mark.parametrize(
    ("pred_lines", "extra", "names"),
    [
        (['{"id": "a", "predictions": []}', '{"id": "b", "predictions": [}'], [], "preds.jsonl:2: invalid JSON"),
        (['{"id": "a", "predictions": []}', '{"id": "a", "predictions": [{"time": -1, "text": "x"}]}'], [],
         "preds.jsonl:2: field 'predictions[0].time'"),
        ([], [], "refs.jsonl:1: id 'a' has no record"),
        (['{"id": "a", "predictions": []}'], ["--judge", "llm"], "--judge llm"),
        (['{"id": "a", "predictions": []}'], ["--plot", "PLOTS", "--plot-samples", "zz"], "--plot-samples"),
    ],
)
def test_score_user_errors(tmp_path, capsys, pred_lines, extra, names):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps(REF) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(line + "\n" for line in pred_lines))
    extra = [str(tmp_path / "plots") if a == "PLOTS" else a for a in extra]
    assert_user_error(capsys, ["score", "--predictions", preds, "--references", refs, *extra], "score", names)


def test_score_lists_several_problems_under_one_error_line(tmp_path, capsys):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps(REF) + "\n" + "{bad\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "zz", "predictions": []}\n')
    assert main(["score", "--predictions", str(preds), "--references", str(refs)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"streampro score: error: 3 problems in the input files \(listed below\) — .+", err[0])
    assert any(f"{refs}:2: invalid JSON" in line for line in err[1:])
    assert any(f"{preds}:1: id 'zz' is not in" in line for line in err[1:])


@pytest.fixture
def bench(tmp_path) -> Path:
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps(REF) + "\n")
    return path


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"--benchmark": "absent.jsonl"}, "--benchmark"),
        ({"--video-root": "nowhere"}, "--video-root"),
        ({"--model": "."}, "--model"),
        ({"--limit": "0"}, "--limit 0"),
        ({"--fps": "0"}, "--fps 0"),
        ({"--response-threshold": "1.5"}, "--response-threshold 1.5"),
        ({"--protocol": "decision-tree"}, "--protocol decision-tree needs --model"),
        ({"torn": True}, "bench.jsonl:2: invalid JSON"),
    ],
)
def test_evaluate_user_errors(bench, tmp_path, capsys, change, names):
    if change.pop("torn", False):
        bench.write_text(bench.read_text() + '{"id": "b"\n')
    options = {"--benchmark": str(bench), "--video-root": str(tmp_path), "--out": str(tmp_path / "run")}
    for flag, value in change.items():
        options[flag] = value if flag not in ("--benchmark", "--video-root", "--model") else str(tmp_path / value)
    argv = ["evaluate", "--no-progress", *[x for kv in options.items() for x in kv]]
    assert_user_error(capsys, argv, "evaluate", names)


# --------------------------------------------------------------------------------------------
# --debug, and the error type itself
# --------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(UserError, match="--n must be >= 1") as info:
        main(["--debug", "data", "synth", "--out", str(tmp_path / "s"), "--n", "0"])
    assert isinstance(info.value.__cause__, ValueError)  # the library's own error, chained
    assert capsys.readouterr().err == ""


def test_user_error_parts_and_pickling():
    import pickle

    e = UserError("clip.mp4: no such file", "check the path")
    assert str(e) == "clip.mp4: no such file — check the path" and isinstance(e, ValueError)
    back = pickle.loads(pickle.dumps(e))
    assert (back.what, back.fix) == (e.what, e.fix)
    assert split_message("a.mp4: bad (x; y); re-encode it; or not") == ("a.mp4: bad (x; y)", "re-encode it; or not")
    assert split_message("--n must be >= 1, got 0") == ("--n must be >= 1, got 0", None)
    assert split_message("f:2: invalid JSON — fix or delete this line") == ("f:2: invalid JSON", "fix or delete this line")


def test_debug_shows_the_traceback_of_a_video_error(tmp_path):
    from streampro.video import VideoReadError

    with pytest.raises(UserError, match="no such file") as info:
        main(["--debug", "stream", str(tmp_path / "nowhere.mp4"), "--question", "q"])
    assert isinstance(info.value.__cause__, VideoReadError)


@pytest.mark.parametrize("argv, command", [
    (["data", "synth", "--n", "x"], "data synth"),
    (["stream"], "stream"),
    (["score", "--predictions", "p.jsonl"], "score"),
])
def test_bad_options_follow_the_one_error_style(argv, command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"streampro {command}: error: ") and err.endswith(f"— run `streampro {command} --help` for the options")
