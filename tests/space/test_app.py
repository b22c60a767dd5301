"""The Space's UI layer: handlers raise gr.Error, the app served on loopback streams events to
gradio_client, the CLI entry, the Space metadata and the exported Space folder."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import yaml
from streampro.space.app import SpaceHandlers, build_demo

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "space"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from streampro.video import encode_video

    frames = [np.full((64, 64, 3), 30 * i, np.uint8) for i in range(6)]  # 6 s at 1 fps
    return encode_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_dir):
    demo = build_demo(tiny_dir)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def reference(time=3.0):
    return {"id": "clip", "task": "OU", "question": "Is it bright yet?", "question_time": 1.0,
            "video": "clip.mp4", "duration": 6.0, "answers": [{"text": "yes it is bright", "time": time}]}


# --- handlers ---------------------------------------------------------------------------------------


def test_missing_default_model_gives_a_clear_error(tmp_path, monkeypatch):
    import streampro.loading

    monkeypatch.delenv("STREAMPRO_MODEL", raising=False)
    monkeypatch.setattr(streampro.loading, "EMBEDDED_MODEL_DIR", tmp_path / "no-model")
    demo = build_demo()  # the page still builds
    h = demo.streampro_handlers
    assert h.model is None and "embedded default model is missing" in h.load_error
    with pytest.raises(gr.Error, match="No model loaded: the embedded default model is missing"):
        next(h.run_video("clip.mp4", "q", 0, 0.5, 16, "", None, "lexical"))
    with pytest.raises(gr.Error, match="No model loaded"):
        h.live_step(np.zeros((8, 8, 3), np.uint8), None, 0.5, 16)


def test_handlers_turn_bad_input_into_gr_error(tiny_dir, video, tmp_path):
    h = SpaceHandlers(tiny_dir)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    with pytest.raises(gr.Error, match=r"format \.txt is not supported"):
        next(h.run_video(str(notes), "q", 0, 0.5, 16, "", None, "lexical"))
    with pytest.raises(gr.Error, match="question is empty"):
        next(h.run_video(str(video), " ", 0, 0.5, 16, "", None, "lexical"))
    with pytest.raises(gr.Error, match="not valid JSON"):
        next(h.run_video(str(video), "q", 0, 0.5, 16, "{", None, "lexical"))
    with pytest.raises(gr.Error, match="over the 0.001 MB limit"):
        next(SpaceHandlers(tiny_dir, limits=type(h.limits)(max_file_mb=0.001)).run_video(
            str(video), "q", 0, 0.5, 16, "", None, "lexical"))


def test_reference_question_is_used_when_the_box_is_empty(tiny_dir, video):
    h = SpaceHandlers(tiny_dir)
    *_, final = h.run_video(str(video), "", None, 0.0, 4, json.dumps(reference()), None, "exact")
    chat, _, status, score_md, timeline = final
    assert chat[0].role == "user" and chat[0].content == "Is it bright yet?"
    assert chat[0].metadata["title"] == "asked at 1s"
    assert status.startswith("done · frame 6/6")
    assert "StreamPro-F1" in score_md and "judge `exact`" in score_md
    assert Path(timeline).is_file()


def test_live_handlers(tiny_dir):
    h = SpaceHandlers(tiny_dir)
    with pytest.raises(gr.Error, match="start the webcam first"):
        h.live_ask("Anything?", None, 0.0, 4)
    assert h.live_step(None, None, 0.0, 4)[3] is None  # no frame yet: no session
    chat, plot, status, state = h.live_step(np.full((48, 64, 3), 90, np.uint8), None, 0.0, 4)
    assert chat == [] and status.startswith("streaming · frame 1 · t = 1s · p_response —")
    chat, status, state, cleared = h.live_ask("Anything?", state, 0.0, 4)
    assert cleared == "" and "frame at 2s" in status and chat == []
    chat, plot, status, state = h.live_step(np.full((48, 64, 3), 90, np.uint8), state, 0.0, 4)
    assert [m.metadata["title"] for m in chat] == ["asked at 2s", "◷ 2s"]
    markers = {line.get_label(): line for line in plot.axes[0].get_lines()}["response"]
    assert list(markers.get_xdata()) == [2.0]
    assert status.startswith("streaming · frame 2")
    chat, *_ = h.live_step(np.full((48, 64, 3), 90, np.uint8), state, 0.0, 4)
    assert chat[-1].metadata["title"] == "◷ 3s"
    with pytest.raises(gr.Error, match="question is empty"):
        h.live_ask("", state, 0.0, 4)
    assert h.live_reset()[3] is None


# --- served app, driven with gradio_client --------------------------------------------------------------


def test_client_streams_timestamped_events(served, video):
    from gradio_client import Client, handle_file

    _, url = served
    client = Client(url, verbose=False)
    job = client.submit(handle_file(str(video)), "What happens?", 2, 0.0, 8, json.dumps(reference()), None,
                        "lexical", api_name="/stream_video")
    updates = list(job)
    assert len(updates) >= 6  # one update per frame, plus the final one with the score
    chat_lengths = [len(u[0]) for u in updates]
    assert chat_lengths == sorted(chat_lengths)  # the chat only grows: responses arrive as they happen
    assert chat_lengths[0] < chat_lengths[-1]
    chat, plot, status, score_md, timeline = updates[-1]
    titles = [m["metadata"]["title"] for m in chat]
    # t_q = 2 s lands on the turn at 2 s; threshold 0 → a response on every turn from there on.
    assert titles == ["asked at 2s", "◷ 2s", "◷ 3s", "◷ 4s", "◷ 5s", "◷ 6s"]
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/")
    assert status.startswith("done · frame 6/6")
    assert re.search(r"StreamPro-F1 \d+\.\d", score_md)
    assert Path(timeline).is_file()


def test_client_sees_input_errors(served, video):
    from gradio_client import Client, handle_file

    _, url = served
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="after the last frame"):
        client.predict(handle_file(str(video)), "q", 30, 0.5, 8, "", None, "lexical", api_name="/stream_video")


# --- CLI, metadata, export ---------------------------------------------------------------------------------


def test_cli_registration_and_arguments(monkeypatch, tiny_dir):
    from streampro import cli
    from streampro.cli import space as space_cli

    assert cli.COMMANDS["space"][0] == "streampro.cli.space"
    parser = argparse.ArgumentParser()
    space_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_dir), "--port", "7999"])
    assert (args.model, args.host, args.port, args.export, args.out) == (str(tiny_dir), "127.0.0.1", 7999, False, None)
    launched = {}
    from streampro.space import app

    monkeypatch.setattr(app, "launch", lambda model, host, port: launched.update(model=model, host=host, port=port))
    assert space_cli.run(args) == 0
    assert launched == {"model": str(tiny_dir), "host": "127.0.0.1", "port": 7999}


def test_cli_export_writes_the_out_folder_and_needs_it(tmp_path, capsys):
    from streampro.cli import main

    assert main(["space", "--export", "--out", str(tmp_path / "space")]) == 0
    assert (tmp_path / "space" / "app.py").is_file()
    assert main(["space", "--export"]) == 2
    assert capsys.readouterr().err.startswith("streampro space: error: --export and --out go together — ")


def test_space_readme_metadata():
    text = (SPACE / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and front["sdk_version"] == gr.__version__
    assert front["app_file"] == "app.py" and (SPACE / front["app_file"]).is_file()
    assert front["python_version"] == "3.11"
    assert front["suggested_hardware"] in ("a10g-small", "zero-a10g", "t4-small", "l4x1")
    assert front["license"] == "apache-2.0"


def test_requirements_follow_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = pyproject["dependencies"] + pyproject["optional-dependencies"]["space"]

    def name(spec):
        return re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")

    by_name = {name(spec): spec.replace(" ", "") for spec in declared}
    lines = [line.strip() for line in (SPACE / "requirements.txt").read_text().splitlines()]
    required = [line for line in lines if line and not line.startswith("#")]
    assert {"torch", "transformers", "gradio", "spaces", "av"} <= {name(r) for r in required}
    for spec in required:
        assert name(spec) in by_name, f"{spec} is not a dependency in pyproject.toml"
        assert spec == by_name[name(spec)], f"requirements.txt has {spec}, pyproject.toml {by_name[name(spec)]}"


def test_export_makes_a_self_contained_space(tmp_path):
    from streampro.space.export import export_space

    out = export_space(tmp_path / "space")
    assert {p.name for p in out.iterdir()} == {"app.py", "README.md", "requirements.txt", "streampro"}
    with pytest.raises(FileExistsError, match="already exists"):
        export_space(out)
    # Run from the Space folder, as the Hub does: the bundled packages win over the installed ones.
    # find_spec locates the modules without running them (no torch import: fast).
    code = "from importlib.util import find_spec as f; " \
           "[print(f(n).origin) for n in ('streampro.space.backend', 'streampro.metrics.f1', " \
           "'streampro.modeling_streampro.modeling_streampro', 'streampro.video')]"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, env=env,
                            check=True)
    files = result.stdout.split()
    assert len(files) == 4 and all(Path(f).resolve().is_relative_to(out.resolve()) for f in files)
