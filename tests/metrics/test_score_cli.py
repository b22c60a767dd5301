"""``streampro score`` on small JSONL files: table, report, plots, and errors with line numbers."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest

from streampro.cli import COMMANDS, main

REFS = [
    {
        "id": "a",
        "task": "EU",
        "question": "Describe the steps.",
        "question_time": 0,
        "video": "v.mp4",
        "duration": 60,
        "answers": [
            {"text": "cut the onion", "start": 5, "end": 10},
            {"text": "fry the onion", "start": 20, "end": 30},
        ],
    },
    {
        "id": "b",
        "task": "TG",
        "question": "When does the man jump?",
        "question_time": 0,
        "video": "v.mp4",
        "duration": 60,
        "answers": [{"text": "12-18", "start": 12, "end": 18}],
    },
    {
        "id": "c",
        "task": "RF",
        "question": "Warn me.",
        "question_time": 0,
        "video": "v.mp4",
        "duration": 60,
        "answers": [{"text": "stairs ahead, slow down", "time": 10}],
    },
]
PREDS = [
    {"id": "c", "predictions": [{"time": 9, "text": "stairs ahead, slow down"}]},  # any order of lines
    {"id": "a", "predictions": [{"time": 8, "text": "cut the onion"}, {"time": 50, "text": "serve"}]},
    {"id": "b", "predictions": [{"time": 19, "text": "from 13 to 18 seconds"}]},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def score(*argv) -> int:
    """``streampro score ARGV`` through the real entry point. Only this command is registered
    during the call, so commands other engineers are still writing cannot break these tests."""
    with mock.patch.dict(COMMANDS, {"score": COMMANDS["score"]}, clear=True):
        return main(["score", *[str(a) for a in argv]])


def test_registered_as_streampro_score(capsys):
    assert COMMANDS["score"][0] == "streampro.cli.score"
    with pytest.raises(SystemExit):
        score("--help")
    assert "--plot-samples" in capsys.readouterr().out


def test_score_table_report_and_plots(tmp_path, capsys):
    refs = write_jsonl(tmp_path / "refs.jsonl", REFS)
    preds = write_jsonl(tmp_path / "preds.jsonl", PREDS)
    out, plots = tmp_path / "out" / "report.json", tmp_path / "plots"
    assert (
        score(
            "--predictions",
            preds,
            "--references",
            refs,
            "--out",
            out,
            "--plot",
            plots,
            "--plot-samples",
            "b,c",
        )
        == 0
    )
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    results = report["results"]
    # EU: one perfect match out of 2 predictions / 2 items -> P = R = 0.5.
    assert results["EU_f1"] == pytest.approx(50.0)
    assert results["TG_f1"] == pytest.approx(100 * 0.75 * 5 / 6)
    assert results["RF_f1"] == pytest.approx(50.0)  # 1 s early, tau 2
    assert results["w_avg_f1"] == pytest.approx((50 + 62.5 + 50) / 3)
    assert report["judge"] == {"name": "lexical", "method": "token_f1"}
    assert [s["id"] for s in report["per_sample"]] == ["a", "b", "c"]
    # The table shows each task row and the summary numbers as printed with one decimal.
    assert "EU   PU        1    50.0" in table  # N = 1, Time = (1 + 0) / 2
    assert f"{results['avg_f1']:.1f}" in table and "W-Avg" in table
    assert sorted(p.name for p in plots.iterdir()) == ["task_f1.png", "timeline_b.png", "timeline_c.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.iterdir())


def test_plot_first_n(tmp_path):
    refs = write_jsonl(tmp_path / "refs.jsonl", REFS)
    preds = write_jsonl(tmp_path / "preds.jsonl", PREDS)
    assert (
        score("--predictions", preds, "--references", refs, "--plot", tmp_path / "p", "--plot-first", "1")
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["task_f1.png", "timeline_a.png"]


def test_bad_inputs_are_listed_with_line_numbers(tmp_path, capsys):
    bad_ref = {**REFS[2], "id": "d", "task": "XY"}
    nan_ref = json.dumps({**REFS[2], "id": "e"}).replace('"time": 10', '"time": NaN')
    missing = {k: v for k, v in REFS[1].items() if k != "question"}
    refs = write_jsonl(tmp_path / "refs.jsonl", [REFS[0], bad_ref, "", nan_ref, missing, REFS[2]])
    preds = write_jsonl(
        tmp_path / "preds.jsonl",
        [
            PREDS[1],
            "{not json",
            {"id": "zzz", "predictions": []},
            {"id": "a", "predictions": []},
            {"id": "q", "predictions": [{"time": -3, "text": "x"}]},
        ],
    )
    assert score("--predictions", preds, "--references", refs) == 2
    err = capsys.readouterr().err
    assert f"{refs}:2: unknown task code 'XY'" in err
    assert f"{refs}:4: field 'answers[0].time' must be a finite number >= 0, got nan" in err
    assert f"{refs}:5: reference is missing field(s) ['question']" in err
    assert f"{refs}:6: id 'c' has no record in {preds}" in err
    assert f"{preds}:2: invalid JSON" in err
    assert f"{preds}:3: id 'zzz' is not in {refs}" in err
    assert f"{preds}:4: duplicate id 'a' (first on line 1)" in err
    assert f"{preds}:5: field 'predictions[0].time' must be a finite number >= 0" in err


def test_missing_file_and_llm_options(tmp_path, capsys):
    refs = write_jsonl(tmp_path / "refs.jsonl", REFS)
    assert score("--predictions", tmp_path / "nope.jsonl", "--references", refs) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    preds = write_jsonl(tmp_path / "preds.jsonl", PREDS)
    assert score("--predictions", preds, "--references", refs, "--judge", "llm") == 2
    assert "--judge-base-url" in capsys.readouterr().err
    assert (
        score(
            "--predictions", preds, "--references", refs, "--plot", tmp_path / "p", "--plot-samples", "nope"
        )
        == 2
    )
    assert "--plot-samples" in capsys.readouterr().err


def test_llm_judge_end_to_end_with_cache(tmp_path, capsys):
    """--judge llm against a loopback OpenAI-compatible server; the second run is served from
    the cache (the server is gone by then, so any call would fail the run)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            calls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["model"])
            data = json.dumps({"choices": [{"message": {"content": '{"explanation": "ok", "score": 5}'}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    refs = write_jsonl(tmp_path / "refs.jsonl", REFS)
    preds = write_jsonl(tmp_path / "preds.jsonl", PREDS)
    argv = [
        "--predictions",
        preds,
        "--references",
        refs,
        "--judge",
        "llm",
        "--judge-base-url",
        base_url,
        "--judge-model",
        "grader",
        "--judge-cache",
        tmp_path / "cache.sqlite",
        "--out",
        tmp_path / "r.json",
    ]
    try:
        assert score(*argv, "--plot", tmp_path / "plots") == 0
    finally:
        server.shutdown()
        server.server_close()
    first = json.loads((tmp_path / "r.json").read_text())
    # EU "cut the onion" and RF: 2 matched pairs judged (TG uses IoU); plotting re-uses the cache.
    assert calls == ["grader", "grader"]
    assert first["results"]["RF_f1"] == pytest.approx(50.0)  # S_acc 5/5, S_time 0.5
    assert first["judge"]["model"] == "grader"
    assert score(*argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["results"] == first["results"]
