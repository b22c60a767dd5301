"""The Space's backend functions (streampro.space.backend): limits, references, streaming, scoring."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from streampro.space import backend
from streampro.space.backend import Limits, LiveSession, StreamOptions, StreamView

# Tiny model: 64 px solid-colour frames keep each turn at a handful of vision tokens (the
# processor's 56*56..112*112 pixel bounds); a 5-frame video streams in well under a second.
FRAME = 64


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return backend.load_model(tiny_dir)


def make_video(path, seconds=5, fps=2, size=FRAME):
    from streampro.video import encode_video

    frames = [np.full((size, size, 3), (40 * i) % 256, np.uint8) for i in range(int(seconds * fps))]
    return encode_video(path, frames, fps=fps)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def reference(task="OU", **answer):
    return {"id": "clip", "task": task, "question": "When does it turn white?", "question_time": 0.0,
            "video": "clip.mp4", "duration": 5.0, "answers": [{"text": "it turns white", **answer}]}


# --- ZeroGPU helper ----------------------------------------------------------------------------


def test_gpu_decorator_keeps_functions_and_generators_working():
    @backend.gpu(duration=30)
    def frames(n):
        yield from range(n)

    @backend.gpu
    def double(x):
        return 2 * x

    assert list(frames(3)) == [0, 1, 2]
    assert double(4) == 8


def test_gpu_decorator_is_identity_without_spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # makes `import spaces` raise ImportError

    def f():
        return 1

    assert backend.gpu(f) is f
    assert backend.gpu(duration=10)(f) is f


# --- model resolution ----------------------------------------------------------------------------


def test_resolve_model(tmp_path, monkeypatch):
    assert backend.resolve_model(None) is None
    assert backend.resolve_model("") is None
    assert backend.resolve_model(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a Hub repo id"):
        backend.resolve_model(tmp_path / "missing" / "dir")
    calls = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo: calls.append(repo) or str(tmp_path))
    assert backend.resolve_model("someone/streampro-3b") == tmp_path
    assert calls == ["someone/streampro-3b"]


def test_load_model_reads_env_and_reports_missing_default(tiny_dir, tmp_path, monkeypatch):
    import streampro.loading

    monkeypatch.setenv(backend.MODEL_ENV, str(tiny_dir))
    model, processor = backend.load_model()
    assert model.config.response_token_id == processor.response_token_id
    monkeypatch.delenv(backend.MODEL_ENV)
    monkeypatch.setattr(streampro.loading, "EMBEDDED_MODEL_DIR", tmp_path / "no-model")
    with pytest.raises(FileNotFoundError, match="embedded default model is missing"):
        backend.load_model()


# --- input checks ----------------------------------------------------------------------------------


def test_validate_video_accepts_a_clip(video):
    info = backend.validate_video(video)
    assert info.duration == pytest.approx(5.0, abs=0.01)
    assert (info.width, info.height) == (FRAME, FRAME)


def test_validate_video_rejections(video, tmp_path):
    with pytest.raises(ValueError, match="upload a video file first"):
        backend.validate_video(None)
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(ValueError, match=r"format \.txt is not supported; upload one of \.mp4"):
        backend.validate_video(text)
    with pytest.raises(ValueError, match="missing"):
        backend.validate_video(tmp_path / "gone.mp4")
    with pytest.raises(ValueError, match="over the 0.001 MB limit"):
        backend.validate_video(video, Limits(max_file_mb=0.001))
    with pytest.raises(ValueError, match="lasts 5 s, over the 3 s limit"):
        backend.validate_video(video, Limits(max_duration_s=3))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 50)
    with pytest.raises(ValueError, match="broken.mp4: not a readable video file"):
        backend.validate_video(broken)


def test_validate_question():
    assert backend.validate_question("  what?  ", None, 5.0) == ("what?", 0.0)
    assert backend.validate_question("what?", 4.5, 5.0) == ("what?", 4.5)
    with pytest.raises(ValueError, match="question is empty"):
        backend.validate_question("  ", 0, 5.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        backend.validate_question("q", -1, 5.0)
    with pytest.raises(ValueError, match=r"question time 6 s is after the last frame \(5 s\)"):
        backend.validate_question("q", 6, 5.0)


def test_parse_reference_text_and_files(tmp_path):
    ref = reference(time=2.0)
    assert backend.parse_reference(None, None) is None
    assert backend.parse_reference("   ", None) is None
    assert backend.parse_reference(json.dumps(ref)) == ref
    assert backend.parse_reference(json.dumps([ref])) == ref
    one_line = tmp_path / "ref.jsonl"
    one_line.write_text(json.dumps(ref) + "\n")
    assert backend.parse_reference("ignored when a file is given", one_line) == ref
    two_lines = tmp_path / "refs.jsonl"
    two_lines.write_text(json.dumps(ref) + "\n" + json.dumps(ref) + "\n")
    with pytest.raises(ValueError, match="refs.jsonl holds 2 JSON lines"):
        backend.parse_reference(path=two_lines)
    with pytest.raises(ValueError, match="not valid JSON \\(line 1, column 2"):
        backend.parse_reference("{oops}")
    with pytest.raises(ValueError, match=r"pasted reference: answers\[0\] needs 'time'"):
        backend.parse_reference(json.dumps(reference()))


def test_fit_frame_resizes_to_the_first_size():
    big = np.zeros((600, 800, 3), np.uint8)
    first = backend.fit_frame(big)
    assert first.size[0] * first.size[1] <= backend.FRAME_MAX_PIXELS
    assert first.size[0] / first.size[1] == pytest.approx(800 / 600, rel=0.01)
    other = backend.fit_frame(np.zeros((480, 640, 3), np.uint8), first.size)
    assert other.size == first.size


# --- streaming ---------------------------------------------------------------------------------------


def test_stream_video_messages_carry_timestamps(tiny, video):
    model, processor = tiny
    # Threshold 0 makes the untrained tiny model answer on every turn from the question on.
    view, events = backend.stream_video(model, processor, video, "What colour?", 2.0, StreamOptions(0.0, 4))
    assert view.times == []  # nothing streamed until iterated
    seen = []
    for event in events:
        seen.append(event)
        assert view.times[-1] == event.time  # the view is updated before each yield
    assert [e.time for e in seen] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert view.total_turns == 5
    # Before the question (turns at 1 s and 2 s: t_q = 2 s lands on the turn at 2 s) the model is silent.
    assert seen[0].p_response is None and seen[0].decision == "silence"
    assert [r["time"] for r in view.responses] == [2.0, 3.0, 4.0, 5.0]
    question, *answers = view.messages
    assert question == {"role": "user", "content": "What colour?", "metadata": {"title": "asked at 2s"}}
    assert [m["metadata"]["title"] for m in answers] == ["◷ 2s", "◷ 3s", "◷ 4s", "◷ 5s"]
    assert all(m["role"] == "assistant" and m["content"] for m in answers)
    assert view.status(done=True).startswith("done · frame 5/5 · t = 5s")


def test_stream_video_threshold_one_keeps_silent(tiny, video):
    model, processor = tiny
    view, events = backend.stream_video(model, processor, video, "What colour?", 0.0, StreamOptions(1.0, 4))
    events = list(events)
    assert all(e.p_response is not None and e.p_response < 1.0 for e in events)
    assert view.responses == [] and len(view.messages) == 1  # only the question


def test_stream_video_validates_before_streaming(tiny, video):
    model, processor = tiny
    with pytest.raises(ValueError, match="after the last frame"):
        backend.stream_video(model, processor, video, "q", 9.0)
    with pytest.raises(ValueError, match="response threshold must be in"):
        StreamOptions(response_threshold=1.5)


def test_p_response_figure_draws_curve_threshold_and_markers():
    fig = backend.p_response_figure([1.0, 2.0, 3.0], [None, 0.3, 0.8], [{"time": 3.0, "text": "x"}], 0.5,
                                    [(1.0, "q")])
    ax = fig.axes[0]
    by_label = {line.get_label(): line for line in ax.get_lines()}
    assert list(by_label["p_response"].get_xdata()) == [2.0, 3.0]
    assert list(by_label["threshold 0.5"].get_ydata()) == [0.5, 0.5]
    assert list(by_label["response"].get_xdata()) == [3.0]
    assert list(by_label["response"].get_ydata()) == [0.8]


def test_live_session_resizes_frames_and_lands_questions_on_the_next_turn(tiny):
    model, processor = tiny
    live = LiveSession(model, processor, StreamOptions(0.0, 4))
    live.step(np.full((96, 128, 3), 10, np.uint8))
    assert live.view.responses == []  # no question yet: silent
    assert live.next_time == 2.0
    live.ask("  Is it dark?  ")
    with pytest.raises(ValueError, match="question is empty"):
        live.ask(" ")
    event = live.step(Image.new("RGB", (200, 100)))  # a different size is resized to the first one
    assert event.question == "Is it dark?"
    live.step(np.full((96, 128, 3), 200, np.uint8))
    assert live.size == (128, 96)
    assert [m["metadata"]["title"] for m in live.view.messages] == ["asked at 2s", "◷ 2s", "◷ 3s"]
    with pytest.raises(ValueError, match="no webcam frame"):
        live.step(None)


# --- scoring -------------------------------------------------------------------------------------------


def test_score_clip_exact_and_lexical():
    ref = reference(time=3.0)
    hit = backend.score_clip([{"time": 3.0, "text": "It turns white."}], ref, "exact")
    assert (hit.precision, hit.recall, hit.f1) == (1.0, 1.0, 1.0)
    # One response in the window [0, 6] but 2 s early (S_time = 1 - 2/4), one outside it.
    late = backend.score_clip(
        [{"time": 1.0, "text": "it turns white"}, {"time": 9.0, "text": "it turns white"}], ref, "exact"
    )
    assert late.matched == [0, None] and late.precision == pytest.approx(0.25) and late.recall == pytest.approx(0.5)
    partial = backend.score_clip([{"time": 3.0, "text": "it is white"}], ref, "lexical")
    assert 0.0 < partial.f1 < 1.0
    assert "StreamPro-F1 100.0" in backend.score_markdown(hit, "exact")
    with pytest.raises(ValueError, match="unknown judge 'llm'"):
        backend.score_clip([], ref, "llm")


def test_stream_then_score_with_timeline(tiny, video, tmp_path):
    model, processor = tiny
    ref = reference(time=3.0)
    view, events = backend.stream_video(model, processor, video, ref["question"], 0.0, StreamOptions(0.0, 4))
    for _ in events:
        pass
    score = backend.score_clip(view.responses, ref, "lexical")
    assert score.num_predictions == 5
    # Responses at 1..5 s all fall in the OU window [0, 6] of the single item.
    assert score.matched == [0] * 5
    png = backend.timeline_image(view.responses, ref, score, tmp_path / "timeline.png")
    with Image.open(png) as image:
        assert image.size[0] > 500


def test_stream_view_status_before_any_frame():
    assert StreamView(threshold=0.5).status() == "waiting for the first frame"
