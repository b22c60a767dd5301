"""StreamPro-Synth: determinism, splits, card, and ground truth checked against the decoded frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streampro.dataset_scripts import load_record_frames
from streampro.dataset_scripts.synth import (
    BACKGROUND,
    COLORS,
    ENCODE_FPS,
    FIRE_OUTER,
    TASKS,
    clip_frames,
    generate,
    make_clip,
    per_task_counts,
    split_counts,
)
from streampro.modeling_streampro.processing_streampro import turn_index_for_time

from streampro.video import encode_video

# 2 clips per task, all in train (fewer than 3 per task leave no held-out clip): seconds to build.
N_SMALL = 14


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, n=N_SMALL, seed=3, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth_again(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_again")
    generate(out, n=N_SMALL, seed=3, progress=False)
    return out


def test_same_seed_gives_identical_labels_and_cards(synth_dir, synth_again, tmp_path):
    first, second = _files(synth_dir), _files(synth_again)
    assert sorted(first) == sorted(second)
    differing = [name for name in first if not name.startswith("videos/") and first[name] != second[name]]
    assert differing == []
    generate(tmp_path / "other", n=N_SMALL, seed=4, progress=False)
    other = _files(tmp_path / "other")
    assert other["raw/train.jsonl"] != first["raw/train.jsonl"]


def _why_videos_differ(a: Path, b: Path) -> str:
    """Where two encodes of one clip differ: the container, the coded packets, or the pictures.

    The byte comparison below failed under x264's default (CPU-dependent) mode, see
    ``test_encoding_does_not_depend_on_earlier_allocations``; this says where to look if it fails again.
    """
    import av

    def packets_and_pictures(path: Path):
        packets, pictures = [], []
        with av.open(str(path)) as container:  # one pass: each packet kept, then decoded
            for packet in container.demux(video=0):
                if packet.size:
                    packets.append(bytes(packet))
                pictures += [f.to_ndarray(format="rgb24") for f in packet.decode()]  # the empty one flushes
        return packets, pictures

    (pa, fa), (pb, fb) = packets_and_pictures(a), packets_and_pictures(b)
    first_packet = next((i for i, (x, y) in enumerate(zip(pa, pb)) if x != y), None)
    first_picture = next((i for i, (x, y) in enumerate(zip(fa, fb)) if not np.array_equal(x, y)), None)
    return (f"{a.name}: {a.stat().st_size} vs {b.stat().st_size} bytes; packets {len(pa)} vs {len(pb)}, "
            f"first differing packet {first_packet}; pictures {len(fa)} vs {len(fb)}, first differing "
            f"picture {first_picture}")


def test_same_seed_gives_identical_videos(synth_dir, synth_again):
    first, second = _files(synth_dir), _files(synth_again)
    differing = [name for name in first if name.startswith("videos/") and first[name] != second[name]]
    assert differing == [], "; ".join(_why_videos_differ(synth_dir / n, synth_again / n) for n in differing)


def test_encoding_does_not_depend_on_earlier_allocations(tmp_path):
    """x264 without cpu-independent mode gave other bytes for the same frames in 3-8 % of encodes.

    What changed between encodes was only the memory the process had allocated before; this
    replays that (fresh frame copies, odd-sized allocations kept alive) for 60 encodes of the
    clip that failed in CI, which caught the old setting with probability ~95 %.
    """
    frames = list(clip_frames(make_clip("RF", 0, seed=3, size=112)))
    rng, kept, encodes = np.random.default_rng(0), [], set()
    for _ in range(60):
        kept = [*kept[-20:], rng.bytes(int(rng.integers(1, 50_000)))]
        encodes.add(encode_video(tmp_path / "clip.mp4", [f.copy() for f in frames], ENCODE_FPS).read_bytes())
    assert len(encodes) == 1


def test_clips_depend_only_on_seed_task_and_index():
    a, b = make_clip("TG", 5, seed=1), make_clip("TG", 5, seed=1)
    assert (a.question, a.answers, a.duration) == (b.question, b.answers, b.duration)
    assert all(np.array_equal(a.render(t), b.render(t)) for t in (0.0, 3.0, 7.5))


def test_splits_are_80_10_10_per_task():
    assert split_counts(20) == {"train": 16, "validation": 2, "test": 2}
    assert split_counts(2) == {"train": 2, "validation": 0, "test": 0}
    assert per_task_counts(16) == {"EU": 3, "OU": 3, "AA": 2, "TP": 2, "TG": 2, "GP": 2, "RF": 2}


def test_layout_card_and_load_dataset(synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    raw = [json.loads(line) for line in (synth_dir / "raw" / "train.jsonl").read_text().splitlines()]
    assert sorted({s["task"] for s in raw}) == sorted(TASKS) and len(raw) == N_SMALL
    for s in raw:
        assert (synth_dir / s["video"]).is_file()
        assert 12 <= s["duration"] <= 24
    sft = datasets.load_dataset(str(synth_dir), "sft", split="train", cache_dir=str(tmp_path / "c"))
    bench = datasets.load_dataset(str(synth_dir), "bench", split="train", cache_dir=str(tmp_path / "c"))
    rl = datasets.load_dataset(str(synth_dir), "rl", split="train", cache_dir=str(tmp_path / "c"))
    assert len(sft) == len(bench) == len(rl) == N_SMALL
    assert all(r["rubric"] is None for r in rl)
    card = (synth_dir / "README.md").read_text()
    for needle in ("config_name: sft", "Class balance", "How t* is computed", "License"):
        assert needle in card


def _pixel(frame, x, y):
    return np.asarray(frame, np.int32)[round(y), round(x)]


def _close(a, b, tol=40):
    return bool(np.all(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)) <= tol))


def test_ground_truth_matches_decoded_frames(synth_dir):
    """Decode each video with streampro.video and check the labelled change is where the label says."""
    records = {r["id"]: r for r in map(json.loads, (synth_dir / "sft" / "train.jsonl").read_text().splitlines())}
    raw = {s["id"]: s for s in map(json.loads, (synth_dir / "raw" / "train.jsonl").read_text().splitlines())}
    for sid, sample in raw.items():
        record, meta, task = records[sid], sample["meta"], sample["task"]
        frames = load_record_frames(record, synth_dir)
        assert len(frames) == record["num_turns"]
        # The response turns are exactly the turns of t* (docs/method.md §2 per task).
        t_stars = sorted(a["time"] if "time" in a else a["end"] for a in sample["answers"])
        assert [r["turn"] for r in record["responses"]] == [turn_index_for_time(t) for t in t_stars]
        # Every decoded frame is the rendered scene at the turn's time (k + 1 s), up to compression.
        clip = make_clip(task, meta["index"], meta["seed"])
        for k, frame in enumerate(frames):
            diff = np.abs(np.asarray(frame, np.int32) - clip.render(k + 1.0).astype(np.int32)).mean()
            assert diff < 4, (sid, k, diff)
        t = int(t_stars[0])
        before, at = frames[turn_index_for_time(t) - 1], frames[turn_index_for_time(t)]
        if task == "OU":
            expect_before = COLORS[meta["before"]] if meta["variant"] == "change" else BACKGROUND
            expect_at = COLORS[meta["after"]] if meta["variant"] == "change" else COLORS[meta["before"]]
            assert _close(_pixel(before, meta["x"], meta["y"]), expect_before), sid
            assert _close(_pixel(at, meta["x"], meta["y"]), expect_at), sid
        elif task == "AA" and meta["variant"] == "fire":
            def fire(f):
                return int(np.all(np.abs(np.asarray(f, np.int32) - FIRE_OUTER) <= 40, axis=-1).sum())

            assert fire(before) == 0 and fire(at) > 100, sid
        elif task == "TG":
            s, e = sample["answers"][0]["start"], sample["answers"][0]["end"]
            visible = [_close(_pixel(f, meta["x"], meta["y"]), COLORS[meta["color"]]) for f in frames]
            assert [k for k, v in enumerate(visible) if v] == list(range(int(s) - 1, int(e) - 1)), sid
        elif task == "RF":
            def ball_x(f):
                white = np.all(np.asarray(f, np.int32) >= 200, axis=-1)
                return np.nonzero(white)[1].mean()

            x_warn, x_hit = ball_x(at), ball_x(frames[turn_index_for_time(meta["impact_time"])])
            # Constant speed: at the warning time the ball is 3 s of travel away from the impact point.
            assert x_hit - x_warn == pytest.approx(3 * meta["speed_px_s"], abs=1.5), sid
        elif task == "GP":
            # Block 0 is at rest (its final place shows its colour) first on the turn of t*.
            size, bh = frames[0].size[0], frames[0].size[0] * 0.12
            y_rest = (size - 4) - bh + bh / 2
            color = COLORS[meta["colors"][0]]
            assert not _close(_pixel(before, size / 2, y_rest), color) and _close(_pixel(at, size / 2, y_rest), color)
        elif task in ("EU", "TP"):
            # The event is still in progress one turn before t* and over at t*: the scene stops changing.
            nxt = frames[turn_index_for_time(t) + 1]
            assert np.abs(np.asarray(at, np.int32) - np.asarray(before, np.int32)).mean() > 0.5, sid
            assert np.abs(np.asarray(at, np.int32) - np.asarray(nxt, np.int32)).mean() < 0.5, sid


def test_frame_cache_returns_the_same_frames(synth_dir, tmp_path):
    record = json.loads((synth_dir / "sft" / "train.jsonl").read_text().splitlines()[0])
    fresh = load_record_frames(record, synth_dir, cache_dir=tmp_path / "cache", max_pixels=56 * 56)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    cached = load_record_frames(record, synth_dir, cache_dir=tmp_path / "cache", max_pixels=56 * 56)
    assert [f.size for f in fresh] == [(56, 56)] * record["num_turns"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(fresh, cached))


def test_frames_errors_name_the_record(synth_dir):
    from streampro.video import VideoReadError

    record = json.loads((synth_dir / "sft" / "train.jsonl").read_text().splitlines()[0])
    with pytest.raises(VideoReadError, match="not found; pass the dataset folder"):
        load_record_frames(record, synth_dir / "nowhere")
    too_long = dict(record, num_turns=record["num_turns"] + 5, duration=record["duration"] + 5)
    with pytest.raises(VideoReadError, match="rebuild the record"):
        load_record_frames(too_long, synth_dir)


def test_bad_arguments():
    with pytest.raises(ValueError, match="--size"):
        generate("/tmp/unused-synth", n=7, size=113)
    with pytest.raises(ValueError, match="--n"):
        generate("/tmp/unused-synth", n=0)


def test_cli_synth(tmp_path, capsys):
    import argparse

    from streampro.cli import data as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["synth", "--out", str(tmp_path / "s"), "--n", "7", "--size", "56",
                                      "--no-progress"])) == 0
    assert "train: 7 clips" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "s" / "sft" / "train.jsonl").read_text().splitlines()]
    frames = load_record_frames(records[0], tmp_path / "s")
    assert frames[0].size == (56, 56) and len(frames) == records[0]["num_turns"]


def test_control_task_is_trained_on_but_kept_out_of_the_seven_tasks(tmp_path):
    """--control adds "the screen changes colour" clips: in sft/train.jsonl and control_* files only."""
    from streampro.dataset_scripts.synth import SCREEN_COLORS

    out = tmp_path / "with_control"
    stats = generate(out, n=21, seed=1, size=32, progress=False, control=10)
    assert stats["splits"]["train"]["control_clips"] == 8
    control = {s: [json.loads(x) for x in (out / "bench" / f"control_{s}.jsonl").read_text().splitlines()]
               for s in ("train", "validation", "test")}
    assert [len(v) for v in control.values()] == [8, 1, 1]
    assert all(r["id"].startswith("synth-CC-") and r["task"] == "OU" for v in control.values() for r in v)
    sft_train = [json.loads(x)["id"] for x in (out / "sft" / "train.jsonl").read_text().splitlines()]
    assert sum(i.startswith("synth-CC-") for i in sft_train) == 8
    for kind in ("raw", "rl", "bench"):
        for split in ("train", "validation", "test"):
            assert "synth-CC-" not in (out / kind / f"{split}.jsonl").read_text(), (kind, split)
    for split in ("validation", "test"):
        assert "synth-CC-" not in (out / "sft" / f"{split}.jsonl").read_text()
    assert "## Control task" in (out / "README.md").read_text()
    # Ground truth: the whole screen shows the new tint from the answer's turn on.
    ref = control["train"][0]
    raw = json.loads((out / "raw" / "control_train.jsonl").read_text().splitlines()[0])
    record = next(json.loads(x) for x in (out / "sft" / "train.jsonl").read_text().splitlines() if ref["id"] in x)
    frames = load_record_frames(record, out)
    k = turn_index_for_time(ref["answers"][0]["time"])
    for turn, tint in ((k - 1, raw["meta"]["before"]), (k, raw["meta"]["after"])):
        assert np.abs(np.asarray(frames[turn], np.int32) - SCREEN_COLORS[tint]).mean() < 4
    assert ref["answers"][0]["text"] == f"the screen turned {raw['meta']['after']}"
    # The seven tasks' clips are the same as without --control.
    plain = tmp_path / "plain"
    generate(plain, n=21, seed=1, size=32, progress=False)
    for kind in ("raw", "bench", "rl"):
        assert (plain / kind / "test.jsonl").read_bytes() == (out / kind / "test.jsonl").read_bytes()
    with pytest.raises(ValueError, match="--control"):
        generate(tmp_path / "bad", n=7, control=-1)


def _assert_task_files_as_without_extras(out: Path, plain: Path) -> None:
    """The seven tasks' training files of ``out`` (n=21, seed 1, 56 px, with extras) equal those of a plain build."""
    generate(plain, n=21, seed=1, size=56, progress=False)
    for kind in ("raw", "sft", "bench", "rl"):
        assert (plain / kind / "train.jsonl").read_bytes() == (out / kind / "train.jsonl").read_bytes()


def test_caption_clips_describe_their_frame_and_stay_out_of_the_task_files(tmp_path):
    """--captions adds still scenes with their description, in caption_* files only."""
    from streampro.dataset_scripts.synth import CAPTION_QUESTION, COLUMNS, ROWS, Canvas, _grid_xy

    out = tmp_path / "with_captions"
    stats = generate(out, n=21, seed=1, size=56, progress=False, captions=20)
    assert stats["splits"]["train"]["caption_clips"] == 16
    assert "## Scene captions" in (out / "README.md").read_text()
    for split, count in (("train", 16), ("validation", 2), ("test", 2)):
        refs = [json.loads(x) for x in (out / "bench" / f"caption_{split}.jsonl").read_text().splitlines()]
        assert len(refs) == count and all(r["id"].startswith("synth-CAP-") for r in refs)
        for kind in ("raw", "sft", "rl", "bench"):
            assert "synth-CAP-" not in (out / kind / f"{split}.jsonl").read_text(), (kind, split)
    records = [json.loads(x) for x in (out / "sft" / "caption_train.jsonl").read_text().splitlines()]
    canvas = Canvas(56)
    for record in records:
        assert record["num_turns"] == 1 and record["questions"][0]["text"] == CAPTION_QUESTION
        assert [r["turn"] for r in record["responses"]] == [0]  # answered on the frame itself
        (frame,) = load_record_frames(record, out)
        for part in record["responses"][0]["text"].split(", "):
            _, size, color, shape, row, column = part.split()
            x, y = _grid_xy(canvas, COLUMNS.index(column), ROWS.index(row))
            assert _close(_pixel(frame, x, y), COLORS[color]), (record["id"], part)
            assert size in ("big", "small") and shape in ("square", "circle", "triangle")
    _assert_task_files_as_without_extras(out, tmp_path / "plain")
    with pytest.raises(ValueError, match="--captions"):
        generate(tmp_path / "bad", n=7, captions=-1)


def test_motion_captions_name_the_step_at_its_end_and_stay_out_of_the_task_files(tmp_path):
    """--motion-captions: one shape makes one step; its EU-style name is the answer at the step's end."""
    from streampro.dataset_scripts.synth import MOTION_CAPTION_QUESTION, MOVES, Canvas, _grid_xy

    out = tmp_path / "with_motion"
    stats = generate(out, n=21, seed=1, size=56, progress=False, motion_captions=20)
    assert stats["splits"]["train"]["motion_caption_clips"] == 16
    assert "## Motion captions" in (out / "README.md").read_text()
    for split in ("train", "validation", "test"):
        refs = [json.loads(x) for x in (out / "bench" / f"motion_caption_{split}.jsonl").read_text().splitlines()]
        assert refs and all(r["id"].startswith("synth-MCAP-") and r["task"] == "EU" for r in refs)
        for kind in ("raw", "sft", "rl", "bench"):
            assert "synth-MCAP-" not in (out / kind / f"{split}.jsonl").read_text(), (kind, split)
    raw = {r["id"]: r for r in map(json.loads, (out / "raw" / "motion_caption_train.jsonl").read_text().splitlines())}
    records = [json.loads(x) for x in (out / "sft" / "motion_caption_train.jsonl").read_text().splitlines()]
    canvas, moves = Canvas(56), 0
    for record in records:
        (answer,) = raw[record["id"]]["answers"]
        assert record["questions"][0]["text"] == MOTION_CAPTION_QUESTION and answer["start"] == 1.0
        (response,) = record["responses"]
        assert response["turn"] == turn_index_for_time(answer["end"]) and response["text"] == answer["text"]
        _, color, shape, *action = answer["text"].split()
        assert shape in ("square", "circle", "triangle")
        frames = load_record_frames(record, out)
        # turn k shows time k + 1 s: turn 0 is the step's start, the answer's turn its end, then one quiet turn
        assert len(frames) == response["turn"] + 2
        before, after = (np.all(np.abs(np.asarray(frames[i], int) - COLORS[color]) < 40, axis=-1)
                         for i in (0, response["turn"]))
        if action[0] == "moved":
            moves += 1
            ys, xs = np.nonzero(before)
            cells = [_grid_xy(canvas, g, g)[0] for g in range(3)]  # the grid's centres, x and y alike
            gx, gy = (int(np.argmin([abs(c - v) for c in cells])) for v in (xs.mean(), ys.mean()))
            dx, dy = MOVES[action[1]]
            assert _close(_pixel(frames[response["turn"]], *_grid_xy(canvas, gx + dx, gy + dy)), COLORS[color]), record["id"]
        else:
            assert action in (["grew"], ["shrank"])
            assert (after.sum() > before.sum()) == (action == ["grew"]), (record["id"], before.sum(), after.sum())
    assert 0 < moves < len(records)  # both kinds of step occur
    _assert_task_files_as_without_extras(out, tmp_path / "plain")
    with pytest.raises(ValueError, match="--motion-captions"):
        generate(tmp_path / "bad", n=7, motion_captions=-1)


def test_extra_training_clips_leave_the_benchmark_and_the_first_records_unchanged(tmp_path):
    """--extra-train adds training clips after the --n clips' indices, listed last in every train file."""
    out, plain = tmp_path / "with_extra", tmp_path / "plain"
    stats = generate(out, n=21, seed=1, size=32, progress=False, control=10, extra_train=14)
    generate(plain, n=21, seed=1, size=32, progress=False, control=10)
    assert stats["splits"]["train"]["clips"] == 7 + 14
    for kind in ("raw", "sft", "rl", "bench"):
        for split in ("validation", "test"):
            assert (plain / kind / f"{split}.jsonl").read_bytes() == (out / kind / f"{split}.jsonl").read_bytes()
        before = (plain / kind / "train.jsonl").read_text().splitlines()
        after = (out / kind / "train.jsonl").read_text().splitlines()
        assert after[:len(before)] == before, kind  # the extras come last (in sft: after the control clips)
        extra_ids = [json.loads(line)["id"] for line in after[len(before):]]
        # two more clips per task, indices 3 and 4 (0-2 are the task's train / validation / test clips)
        assert sorted(extra_ids) == sorted(f"synth-{t}-{i:05d}" for t in TASKS for i in (3, 4)), kind
    clip = make_clip("GP", 4, seed=1, size=32)
    raw = {json.loads(x)["id"]: json.loads(x) for x in (out / "raw" / "train.jsonl").read_text().splitlines()}
    assert raw["synth-GP-00004"]["answers"] == clip.answers
    assert "--extra-train 14" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="--extra-train"):
        generate(tmp_path / "bad", n=7, extra_train=-1)


def test_extra_validation_clips_leave_training_and_test_unchanged(tmp_path):
    """--extra-validation adds validation clips after the extra training clips, listed last in validation files."""
    out, before = tmp_path / "with_validation", tmp_path / "without"
    stats = generate(out, n=21, seed=1, size=32, progress=False, control=10, extra_train=7, extra_validation=14)
    generate(before, n=21, seed=1, size=32, progress=False, control=10, extra_train=7)
    assert stats["splits"]["validation"]["clips"] == 7 + 14
    for kind in ("raw", "sft", "rl", "bench"):
        for split in ("train", "test"):
            assert (before / kind / f"{split}.jsonl").read_bytes() == (out / kind / f"{split}.jsonl").read_bytes()
        old = (before / kind / "validation.jsonl").read_text().splitlines()
        new = (out / kind / "validation.jsonl").read_text().splitlines()
        assert new[:len(old)] == old, kind
        extra_ids = [json.loads(line)["id"] for line in new[len(old):]]
        # indices 0-2: the benchmark's train / validation / test clip, 3: the extra training clip
        assert sorted(extra_ids) == sorted(f"synth-{t}-{i:05d}" for t in TASKS for i in (4, 5)), kind
    raw = {json.loads(x)["id"]: json.loads(x) for x in (out / "raw" / "validation.jsonl").read_text().splitlines()}
    assert raw["synth-TG-00005"]["answers"] == make_clip("TG", 5, seed=1, size=32).answers
    assert raw["synth-TG-00005"]["meta"]["split"] == "validation"
    assert "--extra-validation 14" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="--extra-validation"):
        generate(tmp_path / "bad", n=7, extra_validation=-1)
