"""The ``--shuffle-frames SEED`` control of ``streampro evaluate`` (used by ``streampro reproduce``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streampro.cli import evaluate as cli
from streampro.cli import main
from streampro.evaluation.harness import shuffle_frames


def _frames(n: int) -> list[tuple[float, np.ndarray]]:
    # 4x4 frames whose pixels hold their own index, so the permutation can be read back.
    return [(float(k + 1), np.full((4, 4, 3), k, dtype=np.uint8)) for k in range(n)]


def test_shuffle_keeps_times_permutes_images_deterministically():
    frames = _frames(20)
    a = shuffle_frames(iter(frames), seed=3)
    b = shuffle_frames(iter(frames), seed=3)
    c = shuffle_frames(iter(frames), seed=4)
    assert [t for t, _ in a] == [t for t, _ in frames]  # the clock is untouched
    order = [int(img[0, 0, 0]) for _, img in a]
    assert sorted(order) == list(range(20)) and order != list(range(20))
    assert order == [int(img[0, 0, 0]) for _, img in b]
    assert order != [int(img[0, 0, 0]) for _, img in c]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    from streampro.dataset_scripts.synth import generate

    from streampro.backbones import build_tiny_backbone

    root = tmp_path_factory.mktemp("shuffle")
    tb = build_tiny_backbone("qwen2_5_vl", seed=0, streampro=True)
    tb.model.save_pretrained(root / "ckpt")
    tb.processor.save_pretrained(root / "ckpt")
    generate(root / "synth", n=7, seed=0, size=32, progress=False)  # one 32-px clip per task
    return root


def _evaluate(root: Path, out: str, *extra: str) -> dict:
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([
        "--model", str(root / "ckpt"), "--benchmark", str(root / "synth" / "bench" / "train.jsonl"),
        "--video-root", str(root / "synth"), "--out", str(root / out), "--limit", "2",
        "--max-new-tokens", "2", "--no-progress", "--plot-samples", "0", "--judge", "exact", *extra,
    ])
    assert cli.run(args) == 0
    return json.loads((root / out / "run_config.json").read_text())


def test_shuffled_run_is_recorded_and_changes_what_the_model_sees(run_dirs, capsys):
    plain = _evaluate(run_dirs, "plain")
    shuffled = _evaluate(run_dirs, "shuffled", "--shuffle-frames", "0")
    assert plain["shuffle_frames"] is None and shuffled["shuffle_frames"] == 0
    read = lambda d: [json.loads(line) for line in (run_dirs / d / "predictions.jsonl").read_text().splitlines()]
    p, s = read("plain"), read("shuffled")
    # Same clips, same turn times, but the random model's p_response differs once frames move.
    assert [[e["t"] for e in r["events"]] for r in p] == [[e["t"] for e in r["events"]] for r in s]
    assert [[e["p"] for e in r["events"]] for r in p] != [[e["p"] for e in r["events"]] for r in s]
    # A shuffled run directory refuses to be resumed as a plain one.
    rc = main(["evaluate", "--model", str(run_dirs / "ckpt"), "--benchmark",
               str(run_dirs / "synth" / "bench" / "train.jsonl"), "--video-root",
               str(run_dirs / "synth"), "--out", str(run_dirs / "shuffled"), "--limit", "2",
               "--max-new-tokens", "2", "--no-progress", "--plot-samples", "0", "--judge", "exact"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "streampro evaluate: error: " in err and "holds a run made with different arguments" in err
    assert "shuffle_frames: run directory has 0, this command has None" in err
